"""What a run folder holds: counts for `mmevol status`, and whether a process still runs it.

Whether a run is live is told by the run folder's lock (``run.runfolder``): a run whose
process is gone left the samples it had in flight marked "running", and they are shown as
interrupted (the next run resumes them).
"""

from __future__ import annotations

import time
from pathlib import Path

from mmevol.run.runfolder import run_is_live
from mmevol.runtime.prices import PriceTable
from mmevol.store.results import Store


def run_summary(results_db: Path) -> dict:
    """Return the counts `mmevol status` shows, with the cost per model and in total.

    ``models`` has one row per model and mode (``batch`` 1: Batch API answers), with
    its ``cached_tokens`` (part of ``input_tokens``) and ``cost_usd``; ``cost_usd`` is the
    whole run's, ``batch_cost_usd`` the share of it answered in batch mode and
    ``cached_tokens`` the prompt tokens the endpoint's prompt cache answered.
    """
    with Store(results_db) as store:
        summary = store.summary(live=run_is_live(results_db))
        prices_path = (store.get_meta("settings") or {}).get("prices")
        summary["batches"] = batch_rows(store.batch_summary()["shards"])
    prices = PriceTable(prices_path)
    total = batch = 0.0
    for row in summary["models"]:
        cost = prices.row_cost(row)
        total += cost
        batch += cost if row["batch"] else 0.0
        row["cost_usd"] = round(cost, 4)
    summary["cost_usd"] = round(total, 4)
    summary["batch_cost_usd"] = round(batch, 4)
    summary["cached_tokens"] = sum(r["cached_tokens"] for r in summary["models"])
    return summary


def failed_earlier(results_db: Path, since: float, limit: int | None) -> int:
    """Count samples that failed before ``since`` and were not run again."""
    with Store(results_db) as store:
        return store.failed_before(since, limit)


def batch_rows(shards: list[dict]) -> list[dict]:
    """Return batch mode's shards as `mmevol status` lists them (newest last).

    ``state`` is the batch's status on the server (validating, in_progress, completed,
    expired, cancelled, failed; "submitted" for a --batch-dir shard not answered yet;
    "lost" for a batch the server no longer knew, whose requests went again) once
    submitted, else the run's own step (filling, closed, uploading, creating).
    """
    now = time.time()
    return [
        {
            "shard": s["id"],
            "batch": s["batch_id"] or Path(s["file_id"] or "").name,
            "state": s["status"] if s["state"] in ("submitted", "finished") else s["state"],
            "requests": s["requests"],
            "mb": round((s["bytes"] or 0) / 2**20, 1),
            "completed": s["completed"] or 0,
            "failed": s["failed"] or 0,
            "age": _age(now - (s["submitted_at"] or s["created_at"] or now)),
            "cost_usd": round(s["cost"] or 0.0, 4),
            "estimate_usd": round(s["estimate"] or 0.0, 4),
        }
        for s in shards
        if s["state"] != "dropped"
    ]


def _age(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
