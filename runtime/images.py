"""Find, check and encode sample images (Pillow); image bytes never enter graph state."""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_DECODED_PIXELS = 40_000_000
"""Largest image decoded, in pixels (40 megapixels, e.g. 8000x5000); a larger one fails
its sample. Pillow decodes a PNG whole, at 4 bytes a pixel for RGB, before it can be
downscaled, so this bounds the memory an image takes (about 160 MB, twice that for images
with transparency, a palette or CMYK, which are converted to RGB at full size). A JPEG is
decoded at a reduced scale (up to 1/8 a side, ``Image.draft``) and counts at that scale."""


class ImageProblem(ValueError):
    """Raised when a sample's image cannot be used; the message names the problem.

    ``kind`` names the problem in a few words, for the counts of exports and reports:
    ``no image path``, ``image outside the image root``, ``image missing``,
    ``image unreadable`` (not an image, or damaged) or ``image too large``.
    """

    def __init__(self, message: str, kind: str = "image unreadable"):
        """Keep the message and the kind of problem."""
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):
        """Pickle the kind too (a worker process may send the problem back)."""
        return (type(self), (str(self), self.kind))


def resolve(root: Path, relative: str) -> Path:
    """Return the image file for a path relative to the root, refusing escapes and misses."""
    if not relative or not str(relative).strip():
        raise ImageProblem("the sample has no image path", "no image path")
    root = root.resolve()
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root):
        raise ImageProblem(
            f"image path {relative!r} escapes the image root {str(root)!r}",
            "image outside the image root",
        )
    if not candidate.is_file():
        raise ImageProblem(f"image {relative!r} not found under {str(root)!r}", "image missing")
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
        raise ImageProblem(
            f"image {relative!r} is too large to decode ({err})", "image too large"
        ) from err
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
            "safely; downscale it)",
            "image too large",
        )
    return img


def data_url(root: Path, relative: str, max_side: int = 512, quality: int = 85) -> str:
    """Resolve an image under the root and return it as a data URL (see ``encode``).

    Uncached: a run encodes through ``mmevol.runtime.encoder.ImageEncoder``, which caches.
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
            raise ImageProblem(
                f"image {relative!r} is too large to decode ({err})", "image too large"
            ) from err
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
