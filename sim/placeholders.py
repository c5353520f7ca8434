"""Write grey placeholder images for a seed whose images are not available."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import ijson
from PIL import Image, ImageDraw, ImageFont

SIZE = (512, 384)
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
BOX_COLOURS = ((220, 38, 38), (37, 99, 235), (22, 163, 74), (234, 179, 8), (147, 51, 234))


def iter_samples(seed_path: Path) -> Iterator[dict]:
    """Yield the samples of a JSONL file, or of a file holding one JSON list.

    Args:
        seed_path: The seed file.

    Yields:
        One sample dict at a time; both forms are streamed so large seeds stay out of memory.
    """
    with Path(seed_path).open("rb") as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == b"[":
            # use_float keeps boxes as floats instead of ijson's default Decimal.
            yield from ijson.items(f, "item", use_float=True)
            return
        for line in f:
            if line.strip():
                yield json.loads(line)


def safe_path(images_root: Path, image: object) -> Path:
    """Return `images_root / image`, refusing paths that are not strings or escape the root.

    Raises:
        ValueError: The path is not a non-empty string, is absolute or resolves outside the root.
    """
    if not isinstance(image, str) or not image:
        raise ValueError(f"image path must be a non-empty string, got {image!r}")
    # Checked lexically, not with resolve(), so a root whose subfolders are symlinks still works.
    norm = os.path.normpath(image)
    if os.path.isabs(image) or norm == ".." or norm.startswith(".." + os.sep):
        raise ValueError(f"image path escapes the image root: {image!r}")
    return Path(images_root) / norm


def placeholder(image: str, det: list[dict]) -> Image.Image:
    """Draw a grey canvas with the sample's boxes, their labels and the image path."""
    img = Image.new("RGB", SIZE, (128, 128, 128))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    w, h = SIZE
    for k, d in enumerate(det or []):
        # Clamp, since some sets carry boxes slightly outside 0..1.
        x1, y1, x2, y2 = (min(1.0, max(0.0, float(v))) for v in d["bbox"])
        box = [x1 * w, y1 * h, max(x1 * w, x2 * w), max(y1 * h, y2 * h)]
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0] + 3, box[1] + 2), str(d.get("label", "")), fill=colour, font=font)
    draw.text((8, h - 22), image, fill=(255, 255, 255), font=font)
    return img


def make_placeholders(seed_path: Path, images_root: Path, limit: int | None = None) -> int:
    """Write a placeholder image at `images_root / sample["image"]` for each sample.

    Existing files are kept. The format follows the extension (.jpg/.jpeg in any case -> JPEG,
    .png -> PNG, .webp -> WEBP); any other extension, e.g. .bmp, gets JPEG bytes.

    Args:
        seed_path: JSONL file, or JSON file holding a list of samples.
        images_root: Root the `image` paths are relative to.
        limit: Consider only the first `limit` samples.

    Returns:
        How many images were written.

    Raises:
        ValueError: A sample's image path is absolute, escapes the root or is not a string.
    """
    written = 0
    for i, sample in enumerate(iter_samples(seed_path)):
        if limit is not None and i >= limit:
            break
        path = safe_path(images_root, sample.get("image"))
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = FORMATS.get(path.suffix.lower(), "JPEG")
        placeholder(sample["image"], sample.get("det") or []).save(path, fmt)
        written += 1
    return written


def main(argv: list[str] | None = None) -> None:
    """Run `python -m mmevol.sim.placeholders SEED IMAGES_ROOT [--limit N]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("seed", type=Path, help="seed file (JSONL or JSON list)")
    parser.add_argument("images_root", type=Path, help="directory the image paths are under")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples")
    args = parser.parse_args(argv)
    n = make_placeholders(args.seed, args.images_root, args.limit)
    print(f"wrote {n} placeholder images under {args.images_root}")


if __name__ == "__main__":
    main()
