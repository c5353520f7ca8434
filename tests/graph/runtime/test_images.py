import base64
import io
import os

import pytest
from PIL import Image

from mmevol.graph.runtime.images import ImageProblem, check, data_url, resolve


def decode(url):
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_downscaled_jpeg_at_most_512(tmp_path):
    Image.new("RGBA", (1600, 900), (200, 10, 10, 128)).save(tmp_path / "big.png")
    img = decode(data_url(tmp_path, "big.png"))
    assert img.format == "JPEG" and img.size == (512, 288)
    Image.new("RGB", (300, 200), "blue").save(tmp_path / "small.jpg")
    assert decode(data_url(tmp_path, "small.jpg", max_side=512)).size == (300, 200)
    assert decode(data_url(tmp_path, "small.jpg", max_side=100)).size == (100, 67)


def test_a_replaced_image_is_read_again(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (64, 64), "red").save(path)
    first = data_url(tmp_path, "a.jpg")
    Image.new("RGB", (32, 32), "green").save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert decode(data_url(tmp_path, "a.jpg")).size == (32, 32)
    assert data_url(tmp_path, "a.jpg") != first


def test_escapes_misses_and_garbage(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside.jpg").write_bytes(b"x")
    with pytest.raises(ImageProblem, match="escapes the image root"):
        resolve(tmp_path / "root", "../outside.jpg")
    with pytest.raises(ImageProblem, match="escapes the image root"):
        resolve(tmp_path / "root", str(tmp_path / "outside.jpg"))
    with pytest.raises(ImageProblem, match="not found"):
        resolve(tmp_path / "root", "nope.jpg")
    (tmp_path / "root" / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageProblem, match="not a readable image"):
        check(tmp_path / "root", "bad.jpg")
    with pytest.raises(ImageProblem, match="no image path"):
        resolve(tmp_path / "root", " ")
