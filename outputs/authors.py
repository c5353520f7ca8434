"""Write a run's finished samples in the authors' output format, and say what was left out."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mmevol.graph.config import parse_shard
from mmevol.outputs import trust
from mmevol.outputs.filters import FilterOptions, FilterReport, filter_rows
from mmevol.outputs.trust import ExportProblem
from mmevol.run.runfolder import run_is_live
from mmevol.run.seed import count_rows, raw_rows, shard_rows
from mmevol.runtime import images
from mmevol.store.results import Store

__all__ = ["ExportProblem", "ExportResult", "export_json"]

PROBLEMS_KEPT = 20
"""How many skip lines an export keeps to show (all are counted)."""


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
    skipped: Counter = field(default_factory=Counter)
    """Finished samples left out for their image, by kind of problem (see ImageProblem)."""
    problems: list[str] = field(default_factory=list)
    """The first skip lines (PROBLEMS_KEPT of them), naming sample and image."""
    shard: str | None = None
    """The run's --shard: never_started counts that shard's rows only."""
    limit: int | None = None
    """The run's --limit: never_started includes the rows past it."""
    filtered: FilterReport | None = None
    """What the export filters left out (None without filters)."""

    def summary(self, output: Path) -> str:
        """Return one line: samples written to ``output``, and those not written and why."""
        line = f"wrote {self.written} samples to {output}"
        if self.not_written():
            line += "; not written: " + ", ".join(self.not_written())
        if self.filtered is not None:
            line += "; " + self.filtered.summary()
        return line

    def not_written(self) -> list[str]:
        """Describe each group of rows left out, most actionable advice included."""
        parts = []
        if self.skipped:
            kinds = ", ".join(f"{k} {n}" for k, n in self.skipped.most_common())
            parts.append(f"{sum(self.skipped.values())} skipped for their image ({kinds})")
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
            rows = f"rows of shard {self.shard}" if self.shard else "seed rows"
            past = f", or past its --limit {self.limit}" if self.limit is not None else ""
            parts.append(
                f"{self.never_started} never started ({rows} this run has not reached{past})"
            )
        if self.never_started is None:
            parts.append("an unknown number never started (the seed file cannot be read)")
        return parts


class _Skips:
    """Finished samples left out for their image: counts, lines, the missing images."""

    def __init__(self) -> None:
        self.kinds: Counter = Counter()
        self.lines: list[str] = []
        self.missing: list[str] = []

    def add(self, hash_id: str, image: str, problem: images.ImageProblem) -> None:
        self.kinds[problem.kind] += 1
        if len(self.lines) < PROBLEMS_KEPT:
            self.lines.append(f"sample {hash_id}: {problem}")
        if problem.kind == "image missing" and len(self.missing) < trust.ROOT_SAMPLE:
            self.missing.append(image)


def export_json(
    results_db: Path,
    output: Path,
    filters: FilterOptions | None = None,
    images: Path | None = None,
) -> ExportResult:
    """Stream finished samples, in seed order, into a JSON list file; say what was left out.

    Each sample's image must be a readable image inside the image root (``images``, else
    the run's recorded ``--images``; see ``mmevol.runtime.images.check``): a sample whose
    image escapes it (a symlink out of it included), is missing or is no image is left
    out, counted and named. See ``mmevol.outputs.trust.write_whole`` for how the file is
    written (whole or not at all; through a symlink; a device directly). An output named
    ``*.jsonl`` gets JSON lines (one sample a line) instead of a list.

    Raises:
        ExportProblem: ``output`` is a folder, a file of the run or its seed; or no
            sample could be written, or most were left out for a missing image (the
            message suggests the folder that holds them). Nothing is written then.
        OSError: the write failed (a full disk, no permission); nothing is left behind.
    """
    output = Path(output)
    with Store(results_db) as store:
        settings = store.get_meta("settings") or {}
        trust.check_output(output, results_db, store.get_meta("seed"))
        rounds = settings.get("rounds", 3)
        lines = output.suffix.lower() == ".jsonl"
        root = trust.image_root(settings, images)
        skips = _Skips()
        report = FilterReport() if filters is not None and filters.active else None
        checked = _with_images(store.export_rows(rounds), root, skips)
        rows = filter_rows(store, checked, filters, report, root)

        def accept(count: int) -> None:
            missing = skips.kinds["image missing"]
            trust.check_found(
                root,
                unit="samples",
                done=store.status_counts().get("done", 0),
                written=count,
                considered=count + sum(skips.kinds.values()),
                missing=missing,
                missing_images=skips.missing,
                example=next((line for line in skips.lines if "not found" in line), None),
            )

        with closing(rows):  # the filters' scratch file goes even when a write fails
            count = trust.write_whole(output, lambda fh: _write(rows, fh, lines), accept)
        result = _left_out(store, results_db, count, report)
        result.skipped, result.problems = skips.kinds, skips.lines
        return result


def _with_images(samples: Iterable[dict], root: Path, skips: _Skips) -> Iterator[dict]:
    """Yield the samples whose image is a readable image inside ``root``; count the rest."""
    for sample in samples:
        image = sample.get("image")
        image = image if isinstance(image, str) else ""
        try:
            images.check(root, image)
        except images.ImageProblem as problem:
            skips.add(sample["hash_id"], image, problem)
            continue
        yield sample


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
    settings = store.get_meta("settings") or {}
    shard = settings.get("shard")
    total = _seed_rows(store.get_meta("seed"), parse_shard(shard) if shard else None)
    known = sum(counts.values())
    result.never_started = None if total is None else max(total - known, 0)
    result.shard, result.limit = shard, settings.get("limit")
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
