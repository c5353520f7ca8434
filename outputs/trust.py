"""What an export may overwrite and publish: never the run's own files, only images found.

Every export (authors, llava, sharegpt, hf) and the report go through here for their
output path (``check_output``, ``write_whole``) and for the rule that an export finding
no image, or losing most records to a missing image, is an error (``check_found``). The
images themselves are checked by ``mmevol.runtime.images.check``: resolved (symlinks
followed), inside the image root, and readable as an image.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

from mmevol.run.imageroot import ROOT_SAMPLE, _hint

T = TypeVar("T")

RUN_FILES = tuple(
    f"{db}{suffix}"
    for db in ("results.db", "graph.sqlite")
    for suffix in ("", "-wal", "-shm", "-journal")
) + ("run.lock",)
"""The files of a run folder that make the run (an export beside them, as the demo's, is not)."""
RUN_FOLDERS = ("batches",)
"""Folders of a run folder that make the run (the Batch API's shards and results)."""


class ExportProblem(ValueError):
    """The output path cannot take the export, or the export found too few images."""


def image_root(settings: dict, override: Path | None = None) -> Path:
    """Return the image root: ``override``, else the run's recorded --images.

    Runs before 0.3 recorded ``--images`` as given: a relative path is read from the
    current folder (nothing better is known), and ``check_found`` catches a miss.
    """
    if override is not None:
        return Path(override)
    return Path(settings.get("images") or ".")


def real_path(path: Path | str) -> Path:
    """Return the path with every symlink followed (a dangling one to where it points)."""
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(output: Path, results_db: Path, seed: str | None, folder: bool = False) -> None:
    """Refuse an output that would overwrite the run or its seed, even through a symlink.

    The run's own files (``RUN_FILES``: ``results.db``, ``graph.sqlite``, their
    ``-wal``/``-shm``/``-journal``, ``run.lock``; anything under ``batches/``), the run
    folder itself and the seed file recorded by the run may not be written, nor (for a
    ``folder`` output, which replaces the whole folder) a folder holding the run or seed.
    A hard link to one of them is refused too.

    Raises:
        ExportProblem: naming the output and what it would destroy.
    """
    run_dir = real_path(Path(results_db).parent)
    target = real_path(output)
    shown = repr(str(output))
    if target == run_dir:
        raise ExportProblem(f"-o {shown} is the run's folder: write the export outside it")
    own = [run_dir / name for name in RUN_FILES]
    inside = any(target.is_relative_to(run_dir / name) for name in RUN_FOLDERS)
    if target in own or inside or any(_same(target, p) for p in own):
        raise ExportProblem(
            f"-o {shown} is a file of the run (in {str(run_dir)!r}): writing it would destroy"
            " the run; choose another path"
        )
    if folder and run_dir.is_relative_to(target):
        raise ExportProblem(
            f"-o {shown} holds the run {str(run_dir)!r}: --format hf replaces the whole"
            " folder; give a new folder outside it"
        )
    if not seed:
        return
    seed_path = real_path(seed)
    if target == seed_path or _same(target, seed_path):
        raise ExportProblem(f"-o {shown} is the run's seed {str(seed_path)!r}: choose another file")
    if folder and seed_path.is_relative_to(target):
        raise ExportProblem(
            f"-o {shown} holds the run's seed {str(seed_path)!r}: --format hf replaces the"
            " whole folder; give a new folder"
        )


class WholeFile:
    """A text file written whole or not at all, through a symlink, a device as it is.

    A regular file is written to a temporary file beside it and renamed over the old one
    only by ``commit``: an export that fails or is refused (``abort``) leaves the old file
    as it was. A symlink is written through: its target is the file replaced, the link
    stays. A character device or a pipe (``/dev/null``, ``/dev/stdout``) is opened and
    written directly, never replaced. Use it as a context manager: leaving the block
    without ``commit`` aborts.

    Raises:
        ExportProblem: ``output`` is a folder.
        OSError: the file cannot be opened (no permission, a full disk).
    """

    def __init__(self, output: Path):
        """Open the file that will become ``output``."""
        output = Path(output)
        try:
            mode: int | None = output.stat().st_mode  # of the symlink's target
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            raise ExportProblem(f"-o {str(output)!r} is a folder: give the path of a file to write")
        self._tmp: Path | None = None
        if mode is not None and not stat.S_ISREG(mode):
            self._target = output
            self.fh: TextIO | None = output.open("w", encoding="utf-8")
            return
        self._target = real_path(output)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self._target.name}.", suffix=".part", dir=self._target.parent
        )
        self._tmp = Path(tmp)
        try:
            os.fchmod(fd, stat.S_IMODE(mode) if mode is not None else _default_mode())
            self.fh = os.fdopen(fd, "w", encoding="utf-8")
        except BaseException:
            os.close(fd)
            self.abort()
            raise

    def commit(self) -> None:
        """Close the file and put it in place (a regular file replaces the old one)."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        if self._tmp is not None:
            os.replace(self._tmp, self._target)
            self._tmp = None

    def abort(self) -> None:
        """Close and remove the temporary file; the old output, if any, stays as it was."""
        if self.fh is not None:
            with contextlib.suppress(OSError):
                self.fh.close()
            self.fh = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None

    def __enter__(self) -> WholeFile:
        """Return the open file."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Abort unless committed."""
        self.abort()


def write_whole(
    output: Path, write: Callable[[TextIO], T], accept: Callable[[T], None] | None = None
) -> T:
    """Write a text file with ``write`` as ``WholeFile`` does, once ``accept`` agrees.

    ``accept`` (which may refuse what was written by raising) is called before the file
    is put in place: a refused export leaves the old file as it was.
    """
    with WholeFile(output) as whole:
        result = write(whole.fh)
        whole.fh.flush()
        if accept is not None:
            accept(result)
        whole.commit()
    return result


def _default_mode() -> int:
    """Return the permissions a new file gets (mkstemp's are owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_found(
    root: Path,
    *,
    unit: str,
    done: int,
    written: int,
    considered: int,
    missing: int,
    missing_images: list[str],
    example: str | None,
    why: str = "",
    what: str = "export refused",
) -> None:
    """Refuse an export that publishes nothing of a finished run, or lost most to no image.

    ``considered`` counts the records (or samples) the export tried to write, ``missing``
    those skipped because their image is not under ``root``, ``missing_images`` the first
    of those images (looked for near the root, as ``mmevol run`` does before a run, to
    suggest the folder meant), ``example`` one skip line, ``why`` what else was left out,
    ``what`` the message's opening words.

    Raises:
        ExportProblem: the export wrote nothing while the run has ``done`` samples, or
            more than half of what it considered was skipped for a missing image.
    """
    if missing and missing * 2 > considered:
        hint = _hint(Path(root).resolve(), missing_images[:ROOT_SAMPLE])
        raise ExportProblem(
            f"{what}: the image of {missing} of {considered} {unit} is missing under the"
            f" image root {str(root)!r} (e.g. {example}){hint}"
        )
    if done and not written:
        raise ExportProblem(
            f"{what}: no record to write although the run has {done} done samples"
            + (f" ({why})" if why else "")
        )
