"""Tests of the synthetic demo seed and of the placeholder images."""

import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw

from mmevol.sim.demo_seed import COLOURS, KINDS, MANY_ITEMS, Shape, bad_indices, make_demo_seed
from mmevol.sim.placeholders import make_placeholders

DEMO_SEED = Path(__file__).resolve().parents[3] / "shared" / "mmevol-demo" / "seed_1612.jsonl"
ITEM_KEYS = {"image_position", "objects", "skills", "format", "question", "steps", "answer"}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


TOL = 40  # JPEG drift allowed from a shape's colour


def near(a, b) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= TOL


def distance(img: Image.Image, rgb) -> Image.Image:
    """Return an L image of each pixel's largest channel difference from `rgb`."""
    r, g, b = ImageChops.difference(img, Image.new("RGB", img.size, rgb)).split()
    return ImageChops.lighter(ImageChops.lighter(r, g), b)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    seed_path, root = make_demo_seed(tmp_path_factory.mktemp("demo"), n=12, seed=3)
    return seed_path, root, rows(seed_path)


def test_shape_box_matches_drawn_pixels():
    rng = random.Random(7)
    for _ in range(200):
        s = Shape(
            rng.choice(KINDS), "red", rng.randint(0, 50), rng.randint(0, 50), rng.randint(20, 150)
        )
        mask = Image.new("RGB", (220, 220))
        s.draw(ImageDraw.Draw(mask))
        assert mask.getbbox() == s.box(), s


def test_samples_follow_the_seed_format(demo):
    seed_path, root, samples = demo
    assert len(samples) == 12
    assert len({s["image"] for s in samples}) == 12
    for i, s in enumerate(samples):
        assert set(s) - {"hash_id"} == {"id", "image", "conversations_v0", "caption", "det"}
        assert (
            s.get("hash_id", f"{i}_{s['image'].replace('/', '_')}")
            == f"{i}_{s['image'].replace('/', '_')}"
        )
        conv = s["conversations_v0"]
        if i % 6 == 4:  # LLaVA turns
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert conv[0]["value"].startswith("<image>\n")
        else:
            assert all(set(item) == ITEM_KEYS and item["format"] == "Norm" for item in conv)
        n_items = len(conv) // 2 if i % 6 == 4 else len(conv)
        assert n_items == MANY_ITEMS if i == 1 else 2 <= n_items <= 6
        if s["caption"]:
            assert s["caption"][0] == {"from": "human", "value": "<image>\nDescribe the image."}
            assert all(d["label"] in s["caption"][1]["value"] for d in s["det"])
    assert sum("hash_id" not in s for s in samples) == 3
    assert samples[-1]["id"] == samples[0]["id"]  # ids are not unique, as in the real data
    bare = [s for s in samples if not s["caption"] and not s["det"]]
    assert len(bare) == 4  # about a third, like 635 of 1612 in the authors' demo seed
    assert all(bool(s["caption"]) == bool(s["det"]) for s in samples)


def test_images_open_and_boxes_match_the_pixels(demo):
    _, root, samples = demo
    sizes, formats, exact_checks = set(), set(), 0
    for s in samples:
        with Image.open(root / s["image"]) as im:
            im.load()
            img = im.convert("RGB")
            formats.add(im.format)
        sizes.add(img.size)
        w, h = img.size
        for d in s["det"]:
            colour, kind = d["label"].split()
            rgb = COLOURS[colour]
            assert 0 <= d["bbox"][0] < d["bbox"][2] <= 1 and 0 <= d["bbox"][1] < d["bbox"][3] <= 1
            x0, y0, x1, y1 = (round(v * m) for v, m in zip(d["bbox"], (w, h, w, h), strict=True))
            if kind in ("circle", "square"):  # text is drawn below the centre, never on it
                assert near(img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)), rgb)
            dist = distance(img, rgb)
            crop = dist.crop((x0, y0, x1, y1))
            inside = sum(crop.histogram()[: TOL + 1]) / (crop.width * crop.height)
            assert inside > (0.6 if kind in ("circle", "square") else 0.25), d
            if im.format == "PNG":  # lossless: the exact colour's extent is the box
                assert dist.point(lambda v: 255 if v == 0 else 0).getbbox() == (x0, y0, x1, y1)
                exact_checks += 1
    assert formats == {"PNG", "JPEG"}
    assert (640, 480) in sizes and exact_checks
    assert any('has the text "' in s["caption"][1]["value"] for s in samples if s["caption"])


def test_deterministic_for_a_seed(tmp_path):
    a, ra = make_demo_seed(tmp_path / "a", n=6, seed=5)
    b, rb = make_demo_seed(tmp_path / "b", n=6, seed=5)
    c, _ = make_demo_seed(tmp_path / "c", n=6, seed=6)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    files = sorted(p.relative_to(ra) for p in ra.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(rb) for p in rb.rglob("*") if p.is_file())
    assert all((ra / f).read_bytes() == (rb / f).read_bytes() for f in files)


def test_bad_cases(tmp_path):
    seed_path, root = make_demo_seed(tmp_path, n=5, bad=True)
    samples = rows(seed_path)
    bad = bad_indices(5)
    assert len(samples) == 9 and sorted(bad.values()) == [5, 6, 7, 8]
    assert not (root / samples[bad["missing_image"]]["image"]).exists()
    assert samples[bad["escaping_path"]]["image"] == "../outside.jpg"
    malformed = samples[bad["malformed"]]
    assert "conversations_v0" not in malformed and not isinstance(malformed["image"], str)
    garbage = root / samples[bad["not_an_image"]]["image"]
    assert garbage.is_file()
    with pytest.raises(OSError):
        Image.open(garbage)
    # The good rows are the same as without bad=True.
    assert rows(make_demo_seed(tmp_path / "good", n=5)[0]) == samples[:5]


def write_jsonl(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return path


def test_placeholders_formats_and_skip(tmp_path):
    det = [{"label": "dog", "bbox": [0.1, 0.2, 0.5, 0.9]}]
    names = {
        "a/x.jpg": "JPEG",
        "a/y.JPEG": "JPEG",
        "b/z.png": "PNG",
        "c/w.webp": "WEBP",
        "d/v.bmp": "JPEG",
    }
    seed = write_jsonl(
        tmp_path / "seed.jsonl",
        [{"image": n, "det": det if k % 2 else []} for k, n in enumerate(names)],
    )
    root = tmp_path / "images"
    assert make_placeholders(seed, root) == 5
    for name, fmt in names.items():
        with Image.open(root / name) as im:
            assert (im.format, im.size) == (fmt, (512, 384))
    (root / "b/z.png").unlink()
    assert make_placeholders(seed, root) == 1  # only the removed one is written again
    assert make_placeholders(seed, tmp_path / "limited", limit=2) == 2


def test_placeholders_read_a_json_list(tmp_path):
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps([{"image": "p/1.png", "det": []}, {"image": "p/2.jpg"}]))
    assert make_placeholders(seed, tmp_path / "images") == 2


@pytest.mark.parametrize("image", ["../outside.jpg", "a/../../outside.jpg", "/abs/x.jpg"])
def test_placeholders_refuse_escaping_paths(tmp_path, image):
    seed = write_jsonl(tmp_path / "seed.jsonl", [{"image": image, "det": []}])
    with pytest.raises(ValueError, match="outside.jpg|/abs/x.jpg"):
        make_placeholders(seed, tmp_path / "images")
    assert not (tmp_path / "outside.jpg").exists()


def test_placeholders_keep_the_drawn_demo_images(tmp_path):
    seed_path, root = make_demo_seed(tmp_path / "demo", n=4)
    assert make_placeholders(seed_path, root) == 0  # every image is already there


@pytest.mark.skipif(not DEMO_SEED.exists(), reason="authors' demo seed not present")
def test_placeholders_on_the_authors_demo_seed(tmp_path):
    assert make_placeholders(DEMO_SEED, tmp_path, limit=20) == 20
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 20
    for p in files:
        with Image.open(p) as im:
            assert im.size == (512, 384)
