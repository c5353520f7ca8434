"""Write a run's finished samples in the authors' output format, and say what was left out."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mmevol.graph.config import parse_shard
from mmevol.outputs.filters import FilterOptions, FilterReport, filter_rows
from mmevol.run.runfolder import run_is_live
from mmevol.run.seed import count_rows, raw_rows, shard_rows
from mmevol.store.results import Store


class ExportProblem(ValueError):
    """The output path cannot take the export; the message says why."""


@dataclass
class ExportResult:
    """How many seed rows were written, and how many were not, by why."""

    written: int
    failed: int = 0
    """Rows that failed (bad input, an image, the endpoint): `mmevol status` says why."""
    unfinished: int = 0
    """Samples interrupted mid-way (or whose run died): running the run again resumes them."""
    running: int = 0
    """Samples in flight in a run still going."""
    never_started: int | None = 0
    """Seed rows the run has not reached (None when the seed file cannot be read any more)."""
    filtered: FilterReport | None = None
    """What the export filters left out (None without filters)."""

    def not_written(self) -> list[str]:
        """Describe each group of rows left out, most actionable advice included."""
        parts = []
        if self.failed:
            parts.append(
                f"{self.failed} failed (mmevol status lists why; --retry-failed reruns them)"
            )
        if self.unfinished:
            parts.append(
                f"{self.unfinished} unfinished (interrupted; run the same command again to resume)"
            )
        if self.running:
            parts.append(f"{self.running} still running")
        if self.never_started:
            parts.append(f"{self.never_started} never started (the run has not reached them)")
        if self.never_started is None:
            parts.append("an unknown number never started (the seed file cannot be read)")
        return parts


def export_json(
    results_db: Path, output: Path, filters: FilterOptions | None = None
) -> ExportResult:
    """Stream finished samples, in seed order, into a JSON list file; say what was left out.

    A regular file is written whole or not at all: the samples go to a temporary file
    beside it, renamed over ``output`` only once complete, and removed on any failure.
    A device or pipe (``/dev/stdout``) is written directly. An output named ``*.jsonl``
    gets JSON lines (one sample a line) instead of a list.

    Raises:
        ExportProblem: ``output`` is a folder.
        OSError: the write failed (a full disk, no permission); nothing is left behind.
    """
    output = Path(output)
    try:
        mode = output.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise ExportProblem(f"-o {str(output)!r} is a folder: give the path of a file to write")
    lines = output.suffix.lower() == ".jsonl"
    report = FilterReport() if filters is not None and filters.active else None
    with Store(results_db) as store:
        settings = store.get_meta("settings") or {}
        rounds = settings.get("rounds", 3)
        root = Path(settings.get("images") or ".")
        rows = filter_rows(store, store.export_rows(rounds), filters, report, root)
        if mode is not None and not stat.S_ISREG(mode):
            with output.open("w", encoding="utf-8") as fh:
                return _left_out(store, results_db, _write(rows, fh, lines), report)
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
        try:
            os.fchmod(fd, stat.S_IMODE(mode) if mode is not None else _default_mode())
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                count = _write(rows, fh, lines)
            # Replace the old file only once the new one is whole.
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return _left_out(store, results_db, count, report)


def _write(rows: Iterable[dict], fh: TextIO, lines: bool = False) -> int:
    count = 0
    if not lines:
        fh.write("[")
    for sample in rows:
        if lines:
            fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
        else:
            fh.write(",\n" if count else "\n")
            fh.write(json.dumps(sample, ensure_ascii=False))
        count += 1
    if not lines:
        fh.write("\n]\n")
    fh.flush()
    return count


def _default_mode() -> int:
    """Return the permissions a new file gets (mkstemp's are owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _left_out(
    store: Store, results_db: Path, written: int, filtered: FilterReport | None = None
) -> ExportResult:
    counts = store.status_counts()
    running = counts.get("running", 0)
    live = run_is_live(results_db)
    result = ExportResult(
        written,
        failed=counts.get("failed", 0),
        unfinished=counts.get("interrupted", 0) + (0 if live else running),
        running=running if live else 0,
        filtered=filtered,
    )
    shard = (store.get_meta("settings") or {}).get("shard")
    total = _seed_rows(store.get_meta("seed"), parse_shard(shard) if shard else None)
    known = sum(counts.values())
    result.never_started = None if total is None else max(total - known, 0)
    return result


def _seed_rows(seed: str | None, shard: tuple[int, int] | None = None) -> int | None:
    """Count the rows of the seed (of the run's shard: each row's key is read then)."""
    if not seed:
        return None
    try:
        if shard is not None:
            return sum(1 for _ in shard_rows(raw_rows(Path(seed)), shard))
        total = count_rows(Path(seed))
        return total if total is not None else sum(1 for _ in raw_rows(Path(seed)))
    except (OSError, ValueError):
        return None
