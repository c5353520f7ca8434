"""Before a run starts: does the image root (``--images``) hold the seed's images?"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

from mmevol.run.seed import raw_rows

ROOT_SAMPLE = 20
"""Image paths of the first seed rows looked for before a run starts (``check_root``)."""

ROOT_SCAN = 1000
"""Rows read at most to find them (rows without a usable image path are passed over)."""


class ImageRootProblem(ValueError):
    """Raised before a run starts when the image root does not hold the seed's images."""


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
