"""Find, check and encode sample images (Pillow); image bytes never enter graph state."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageProblem(ValueError):
    """Raised when a sample's image cannot be used; the message names the problem."""


def resolve(root: Path, relative: str) -> Path:
    """Return the image file for a path relative to the root, refusing escapes and misses."""
    if not relative or not str(relative).strip():
        raise ImageProblem("the sample has no image path")
    root = root.resolve()
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root):
        raise ImageProblem(f"image path {relative!r} escapes the image root {str(root)!r}")
    if not candidate.is_file():
        raise ImageProblem(f"image {relative!r} not found under {str(root)!r}")
    return candidate


def check(root: Path, relative: str) -> Path:
    """Resolve an image and make sure Pillow can read it (without decoding all pixels)."""
    path = resolve(root, relative)
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageProblem(f"image {relative!r} is not a readable image ({err})") from err
    return path


def data_url(root: Path, relative: str, max_side: int = 512, quality: int = 85) -> str:
    """Resolve an image under the root and return it as a data URL (see ``encode``).

    Uncached: a run encodes through ``mmevol.graph.runtime.encoder.ImageEncoder``, which caches.
    """
    return encode(resolve(root, relative), relative, max_side, quality)


def encode(path: str | Path, relative: str, max_side: int = 512, quality: int = 85) -> str:
    """Read an image file and return it downscaled as a base64 JPEG data URL (no cache).

    ``relative`` is the seed's path for the image, used in the error message.

    Raises:
        ImageProblem: Pillow cannot read the image, or it is too large to decode safely.
    """
    try:
        with Image.open(path) as img:
            img.draft("RGB", (max_side, max_side))  # lets JPEG decode at reduced size
            img = img.convert("RGB")
            img.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageProblem(f"image {relative!r} is not a readable image ({err})") from err
    except Image.DecompressionBombError as err:
        raise ImageProblem(f"image {relative!r} is too large to decode ({err})") from err
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
