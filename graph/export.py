"""Write a run's finished samples in the authors' output format, and say what was left out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmevol.graph.seed import count_rows, raw_rows
from mmevol.graph.status import run_is_live
from mmevol.graph.store import Store


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


def export_json(results_db: Path, output: Path) -> ExportResult:
    """Stream finished samples, in seed order, into a JSON list file; say what was left out."""
    store = Store(results_db)
    try:
        rounds = (store.get_meta("settings") or {}).get("rounds", 3)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".part")
        count = 0
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write("[")
            for sample in store.export_rows(rounds):
                fh.write(",\n" if count else "\n")
                fh.write(json.dumps(sample, ensure_ascii=False))
                count += 1
            fh.write("\n]\n")
        # Replace the old file only once the new one is whole.
        tmp.replace(output)
        result = _left_out(store, count)
    finally:
        store.close()
    return result


def _left_out(store: Store, written: int) -> ExportResult:
    counts = store.status_counts()
    running = counts.get("running", 0)
    live = run_is_live(store)
    result = ExportResult(
        written,
        failed=counts.get("failed", 0),
        unfinished=counts.get("interrupted", 0) + (0 if live else running),
        running=running if live else 0,
    )
    total = _seed_rows(store.get_meta("seed"))
    known = sum(counts.values())
    result.never_started = None if total is None else max(total - known, 0)
    return result


def _seed_rows(seed: str | None) -> int | None:
    if not seed:
        return None
    try:
        total = count_rows(Path(seed))
        return total if total is not None else sum(1 for _ in raw_rows(Path(seed)))
    except (OSError, ValueError):
        return None
