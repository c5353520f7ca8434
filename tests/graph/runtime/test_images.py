import base64
import io
import json
import os

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.runtime.images import (
    ImageProblem,
    ImageRootProblem,
    check,
    check_root,
    data_url,
    resolve,
)
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
    assert result.exit_code == 0, result.output
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
