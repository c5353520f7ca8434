"""Find, check and encode sample images (Pillow); image bytes never enter graph state."""

from __future__ import annotations

import base64
import io
import os
import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_DECODED_PIXELS = 40_000_000
"""Largest image decoded, in pixels (40 megapixels, e.g. 8000x5000); a larger one fails
its sample. Pillow decodes a PNG whole, at 4 bytes a pixel for RGB, before it can be
downscaled, so this bounds the memory an image takes (about 160 MB, twice that for images
with transparency, a palette or CMYK, which are converted to RGB at full size). A JPEG is
decoded at a reduced scale (up to 1/8 a side, ``Image.draft``) and counts at that scale."""

ROOT_SAMPLE = 20
"""Image paths of the first seed rows looked for before a run starts (``check_root``)."""

ROOT_SCAN = 1000
"""Rows read at most to find them (rows without a usable image path are passed over)."""


class ImageProblem(ValueError):
    """Raised when a sample's image cannot be used; the message names the problem."""


class ImageRootProblem(ValueError):
    """Raised before a run starts when the image root does not hold the seed's images."""


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


def check(root: Path, relative: str, max_side: int = 512) -> Path:
    """Resolve an image and make sure Pillow can read it (without decoding all pixels).

    Raises:
        ImageProblem: The image is missing, escapes the root, cannot be read, or is too
            large to decode (a decompression bomb, or over ``MAX_DECODED_PIXELS``).
    """
    path = resolve(root, relative)
    with _open(path, relative, max_side) as img:
        try:
            img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageProblem(f"image {relative!r} is not a readable image ({err})") from err
    return path


def _open(path: str | Path, relative: str, max_side: int) -> Image.Image:
    """Open an image (header only), JPEGs set to decode at reduced scale, size checked.

    Raises:
        ImageProblem: Pillow cannot read it, or decoding it would take more than
            ``MAX_DECODED_PIXELS`` (Pillow's own decompression bomb limit is higher).
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns from MAX_IMAGE_PIXELS on, far above MAX_DECODED_PIXELS: such an
            # image is refused below, and the warning would only garble the progress display.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageProblem(f"image {relative!r} is too large to decode ({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageProblem(f"image {relative!r} is not a readable image ({err})") from err
    try:
        width, height = img.size
        img.draft("RGB", (max_side, max_side))  # lets JPEG decode at reduced size
        decoded = img.size[0] * img.size[1]
    except (OSError, SyntaxError, ValueError) as err:
        img.close()
        raise ImageProblem(f"image {relative!r} is not a readable image ({err})") from err
    if decoded > MAX_DECODED_PIXELS:
        img.close()
        raise ImageProblem(
            f"image {relative!r} is {width}x{height} pixels, more than the "
            f"{MAX_DECODED_PIXELS / 1e6:g} megapixels mmevol decodes (too large to decode "
            "safely; downscale it)"
        )
    return img


def data_url(root: Path, relative: str, max_side: int = 512, quality: int = 85) -> str:
    """Resolve an image under the root and return it as a data URL (see ``encode``).

    Uncached: a run encodes through ``mmevol.graph.runtime.encoder.ImageEncoder``, which caches.
    """
    return encode(resolve(root, relative), relative, max_side, quality)


def encode(path: str | Path, relative: str, max_side: int = 512, quality: int = 85) -> str:
    """Read an image file and return it downscaled as a base64 JPEG data URL (no cache).

    ``relative`` is the seed's path for the image, used in the error message.

    Memory stays bounded: at most ``MAX_DECODED_PIXELS`` are decoded (a JPEG at reduced
    scale), and an RGB or grey image is downscaled before anything else, without the
    full-size copy a conversion to RGB would make. The bytes are those of converting to
    RGB first, then downscaling: the two orders give the same pixels for these modes.

    Raises:
        ImageProblem: Pillow cannot read the image, or it is too large to decode safely.
    """
    with _open(path, relative, max_side) as src:
        try:
            src.load()
            if src.mode in ("RGB", "L"):
                img = src
                img.thumbnail((max_side, max_side))
                img = img.convert("RGB")
            else:
                img = src.convert("RGB")
                src.close()  # its full-size pixels are no longer needed
                img.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageProblem(f"image {relative!r} is not a readable image ({err})") from err
        except Image.DecompressionBombError as err:  # a frame larger than the header said
            raise ImageProblem(f"image {relative!r} is too large to decode ({err})") from err
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def check_root(root: Path, seed: Path, limit: int | None = None) -> None:
    """Make sure the image root holds the seed's images, before a run records anything.

    A mistyped ``--images`` would otherwise fail every sample one by one, and a run with
    the right folder would then skip them all as failed earlier. The image paths of the
    first ``ROOT_SAMPLE`` rows (within ``limit``) that have a usable one are looked for;
    if more than half are missing, nothing runs. A few missing images among many found
    are not this: those samples fail on their own when their turn comes.

    Raises:
        ImageRootProblem: The root does not exist, is not a folder, or lacks most of the
            images looked for. The message names the root, an image looked for and, when
            a folder nearby holds the images (one level up or down, or a sibling), that
            folder.
        FileNotFoundError: The seed does not exist.
    """
    from mmevol.graph.seed import raw_rows  # graph.seed imports the state, which is heavier

    wanted = list(_first_image_paths(raw_rows(Path(seed)), limit))
    if not wanted:
        return  # no row names an image: each fails on its own
    root = Path(root).resolve()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ImageRootProblem(
            f"image root (--images) {str(root)!r} {what} (the seed's first image "
            f"{wanted[0]!r} is looked for as {str(root / wanted[0])!r})" + _hint(root, wanted)
        )
    missing = [rel for rel in wanted if not (root / rel).is_file()]
    if len(missing) * 2 <= len(wanted):
        return
    found = len(wanted) - len(missing)
    holds = f"holds only {found} of" if found else "holds none of"
    raise ImageRootProblem(
        f"image root (--images) {str(root)!r} {holds} the first {len(wanted)} images of the "
        f"seed (e.g. no file {str(root / missing[0])!r})" + _hint(root, wanted, found)
    )


def _first_image_paths(rows, limit: int | None) -> Iterator[str]:
    """Yield the image paths of the first rows that have a usable one (relative, inside)."""
    given = 0
    for scanned, (index, raw, _error) in enumerate(rows):
        if scanned >= ROOT_SCAN or given >= ROOT_SAMPLE or (limit is not None and index >= limit):
            return
        image = raw.get("image") if isinstance(raw, dict) else None
        if not isinstance(image, str) or not image.strip():
            continue
        parts = Path(image).parts
        if Path(image).is_absolute() or ".." in parts:
            continue  # fails on its own as escaping the root
        given += 1
        yield image


def _hint(root: Path, wanted: list[str], found_here: int = 0) -> str:
    """Name a folder near the root that holds more of the images than it does, if one does."""
    best, best_found = None, found_here
    for candidate in _nearby(root):
        if not any((candidate / rel).is_file() for rel in wanted[:3]):
            continue  # a few looks per folder; only a folder with hits is counted in full
        found = sum((candidate / rel).is_file() for rel in wanted)
        if found > best_found:
            best, best_found = candidate, found
    if best is None:
        return "; check --images: the seed's image paths are relative to it"
    return (
        f"; the seed's images are under {str(best)!r} ({best_found} of those {len(wanted)} "
        f"found there): run with --images {shlex.quote(str(best))}"
    )


def _nearby(root: Path, most: int = 200) -> Iterator[Path]:
    """Yield folders a mistyped root may have meant: its parents, children and siblings."""
    yield from list(root.parents)[:3]  # one or more levels too deep
    for base in (root, root.parent):  # one level too high, or a typo
        try:
            with os.scandir(base) as entries:
                children = sorted(e.path for e in entries if e.is_dir())
        except OSError:
            continue
        for child in children[:most]:
            if Path(child) != root:
                yield Path(child)
