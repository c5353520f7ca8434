import base64
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.run import runner
from mmevol.run.imageroot import ImageRootProblem, check_root
from mmevol.runtime.images import MAX_DECODED_PIXELS, ImageProblem, check, data_url, encode, resolve
from mmevol.sim.demo_seed import make_demo_seed


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


# -- a mistyped --images stops the run before it starts ----------------------------------------

cli = CliRunner()


def mmevol_run(seed_path, images, server, *extra):
    args = ["run", seed_path, "--images", images, "--run", "typo", "--base-url", server.base_url]
    args += ["--concurrency", 4, *extra]
    return cli.invoke(app, [str(a) for a in args], env={"OPENAI_API_KEY": "sim"})


@pytest.fixture(scope="module")
def seed10(tmp_path_factory):
    """Ten good rows: images under <folder>/images/shapes/, paths 'shapes/00000N.ext'."""
    return make_demo_seed(tmp_path_factory.mktemp("seed10"), n=10, seed=11)


@pytest.mark.parametrize(
    ("wrong", "why"),
    [
        (lambda images: images.parent / "imgs", "does not exist"),  # a folder that is not there
        (lambda images: images.parent, "holds none of"),  # one level too high
        (lambda images: images / "shapes", "holds none of"),  # one level too deep
    ],
    ids=["missing", "too-high", "too-deep"],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_mistyped_image_root_is_one_error_and_the_right_one_then_runs_all(
    sim, seed10, wrong, why, workers
):
    seed_path, images = seed10
    bad_root = wrong(images)
    result = mmevol_run(seed_path, bad_root, sim, "--workers", workers)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    message = " ".join(lines)
    assert repr(str(bad_root.resolve())) in message and why in message
    assert str(bad_root.resolve() / "shapes" / "000000") in message  # an image looked for
    assert f"--images {images.resolve()}" in message  # where the images really are
    assert sim.stats()["requests"] == 0

    result = mmevol_run(seed_path, images, sim, "--workers", workers)
    assert result.exit_code == 0, result.output
    assert "run 'typo': 10 done, 0 failed, 0 skipped" in result.output


def test_a_root_that_is_a_file_is_one_error(sim, seed10, tmp_path):
    seed_path, _ = seed10
    result = mmevol_run(seed_path, seed_path, sim)
    assert result.exit_code == 1
    assert f"{str(seed_path.resolve())!r} is not a folder" in result.output


def test_a_few_missing_images_among_many_found_fail_alone(sim, seed10, tmp_path):
    seed_path, images = seed10
    rows = [json.loads(line) for line in seed_path.read_text().splitlines()]
    rows[0]["image"] = rows[3]["image"] = "shapes/gone.jpg"
    for row in rows:
        row.pop("hash_id", None)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = mmevol_run(mixed, images, sim)
    assert result.exit_code == 4, result.output  # the run went through; some samples failed
    assert "8 done, 2 failed" in result.output
    assert "'shapes/gone.jpg' not found" in " ".join(result.output.split())  # unwrapped


def test_check_root_reads_only_the_first_rows(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    seed = tmp_path / "seed.jsonl"
    # 20 rows whose images are found, then a thousand whose images are not: not looked at.
    rows = [{"image": "a.jpg"}] * 20 + [{"image": f"gone/{n}.jpg"} for n in range(1000)]
    seed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    check_root(tmp_path / "images", seed)
    # Rows without a usable image path are not counted: they fail on their own.
    seed.write_text('{"image": 5}\n{"image": "../x.jpg"}\n[]\nnot json\n{"image": "a.jpg"}\n')
    check_root(tmp_path / "images", seed)
    seed.write_text('{"image": 5}\n')
    check_root(tmp_path / "nowhere", seed)  # nothing to look for, nothing to say
    # Within --limit only.
    seed.write_text('{"image": "a.jpg"}\n' + '{"image": "gone.jpg"}\n' * 5)
    check_root(tmp_path / "images", seed, limit=1)
    with pytest.raises(ImageRootProblem, match=r"holds only 1 of the first 6 images"):
        check_root(tmp_path / "images", seed)


# -- images too large to decode --------------------------------------------------------------


def one_colour_png(path, width, height, *, rgb=False):
    """Write a real PNG of one colour without holding its pixels: it compresses to little.

    Grey at 1 bit a pixel, or ``rgb`` at 8 bits a channel; the rows are all zero bits
    (black), streamed through zlib.
    """
    row = b"\x00" + bytes(width * 3 if rgb else (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8 if rgb else 1, 2 if rgb else 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A PNG of more than twice Pillow's MAX_IMAGE_PIXELS (Image.open refuses it)."""
    side = math.isqrt(2 * Image.MAX_IMAGE_PIXELS) + 1
    return one_colour_png(tmp_path_factory.mktemp("bomb") / "bomb.png", side, side)


def test_a_decompression_bomb_fails_its_sample_in_check(bomb):
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageProblem, match=r"'bomb.png' is too large to decode"):
        check(bomb.parent, "bomb.png")


def test_a_run_with_a_decompression_bomb_fails_that_sample_only(
    sim, seed10, bomb, make_settings, tmp_path
):
    seed_path, images = seed10
    root = tmp_path / "images"
    shutil.copytree(images, root)
    shutil.copy(bomb, root / "shapes" / "bomb.png")
    rows = [json.loads(line) for line in seed_path.read_text().splitlines()]
    rows[2]["image"] = "shapes/bomb.png"
    rows[2]["hash_id"] = "the-bomb"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = runner.run(make_settings(sim, root), mixed)
    assert (report.done, report.failed) == (9, 1)
    [(key, reason)] = report.failures
    assert key == "the-bomb" and "row 2 (the-bomb): image 'shapes/bomb.png' is too large" in reason


def peak_rss_of_encoding(path) -> int:
    """Encode an image in a fresh interpreter; return its peak resident memory in bytes.

    The child reads its own high-water mark (VmHWM) rather than its ru_maxrss: Linux
    carries ru_maxrss over an exec, and a child started by vfork counts the memory of
    this (large) pytest process in it.
    """
    script = (
        "import re, sys\n"
        "from mmevol.runtime.images import ImageProblem, encode\n"
        "try:\n"
        "    encode(sys.argv[1], 'big.png')\n"
        "except ImageProblem:\n"
        "    pass\n"
        "status = open('/proc/self/status').read()\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_a_large_png_is_encoded_in_bounded_memory(tmp_path):
    # 36 megapixels, under the decoding limit: Pillow holds it at 4 bytes a pixel (144 MB).
    # Converting that to RGB before downscaling made a second full copy (peak 305 MB).
    big = one_colour_png(tmp_path / "big.png", 6000, 6000, rgb=True)
    assert peak_rss_of_encoding(big) < 220 * 2**20


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_an_image_over_the_decoding_limit_is_refused_without_decoding_it(tmp_path):
    side = math.isqrt(MAX_DECODED_PIXELS) + 1  # under Pillow's own limit (89 MP)
    big = one_colour_png(tmp_path / "big.png", side, side, rgb=True)
    with pytest.raises(ImageProblem, match=r"'big.png' is 6325x6325 pixels, more than the 40"):
        encode(big, "big.png")
    with pytest.raises(ImageProblem, match=r"'big.png' is 6325x6325 pixels, more than the 40"):
        check(tmp_path, "big.png")
    assert peak_rss_of_encoding(big) < 100 * 2**20  # nothing decoded


def old_encode(path, max_side=512, quality=85):
    """What encode did before it saved memory: the reference for ordinary images."""
    with Image.open(path) as img:
        img.draft("RGB", (max_side, max_side))
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.mark.parametrize(
    ("mode", "size", "name"),
    [
        ("RGB", (640, 480), "a.jpg"),
        ("RGB", (2400, 1800), "b.jpg"),  # drafted
        ("L", (900, 700), "c.jpg"),
        ("RGB", (1600, 900), "d.png"),
        ("RGBA", (1600, 900), "e.png"),
        ("L", (1300, 700), "f.png"),
        ("P", (700, 1300), "g.png"),
        ("CMYK", (700, 500), "h.jpg"),
    ],
)
def test_ordinary_images_encode_as_before(tmp_path, mode, size, name):
    img = Image.effect_noise(size, 60).convert("RGB")  # detail, so resampling shows
    img = img.convert(mode) if mode != "P" else img.quantize(64)
    if mode == "RGBA":
        img.putalpha(Image.linear_gradient("L").resize(size))
    img.save(tmp_path / name)
    assert encode(tmp_path / name, name) == old_encode(tmp_path / name)
    assert encode(tmp_path / name, name, 100, 70) == old_encode(tmp_path / name, 100, 70)


def test_the_hint_names_only_a_folder_holding_more_of_the_images(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"image": f"{n}.jpg"}) + "\n" for n in range(10)))
    for folder, count in (("given", 2), ("worse", 1), ("better", 7)):
        (tmp_path / folder).mkdir()
        for n in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / folder / f"{n}.jpg")
    with pytest.raises(ImageRootProblem) as problem:
        check_root(tmp_path / "given", seed)
    assert str(problem.value) == (
        f"image root (--images) {str(tmp_path / 'given')!r} holds only 2 of the first 10 "
        f"images of the seed (e.g. no file {str(tmp_path / 'given' / '2.jpg')!r}); the "
        f"seed's images are under {str(tmp_path / 'better')!r} (7 of those 10 found there): "
        f"run with --images {tmp_path / 'better'}"
    )
    shutil.rmtree(tmp_path / "better")
    with pytest.raises(ImageRootProblem, match=r"2\.jpg'\); check --images: the seed's image"):
        check_root(tmp_path / "given", seed)
