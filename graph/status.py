"""What a run folder holds: counts for `mmevol status`, and whether a process still runs it.

Whether a run is live is told by the run folder's lock (``graph.runfolder``): a run whose
process is gone left the samples it had in flight marked "running", and they are shown as
interrupted (the next run resumes them).
"""

from __future__ import annotations

from pathlib import Path

from mmevol.graph import runfolder
from mmevol.graph.runtime.prices import PriceTable
from mmevol.graph.store import Store


def run_is_live(results_db: Path) -> bool:
    """Whether a live process on this machine writes this run (it holds the run lock)."""
    return runfolder.live_holder(Path(results_db).parent) is not None


def run_summary(results_db: Path) -> dict:
    """Return the counts `mmevol status` shows, with the cost per model and in total."""
    with Store(results_db) as store:
        summary = store.summary(live=run_is_live(results_db))
        prices_path = (store.get_meta("settings") or {}).get("prices")
    prices = PriceTable(prices_path)
    for row in summary["models"]:
        row["cost_usd"] = round(
            prices.cost(row["model"], row["input_tokens"], row["output_tokens"]), 4
        )
    summary["cost_usd"] = round(sum(r["cost_usd"] for r in summary["models"]), 4)
    return summary


def failed_earlier(results_db: Path, since: float, limit: int | None) -> int:
    """Count samples that failed before ``since`` and were not run again."""
    with Store(results_db) as store:
        return store.failed_before(since, limit)
