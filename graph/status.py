"""What a run folder holds: counts for `mmevol status`, and whether a process still runs it.

Whether a run is live is told by the process id its runner records at the start
(``meta.pid``): a run whose process is gone left the samples it had in flight marked
"running", and they are shown as interrupted (the next run resumes them). ``run_is_live``
is the one place that decides it, so a run-folder lock can replace the pid check.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmevol.graph.runtime.prices import PriceTable
from mmevol.graph.store import Store

PID_KEY = "pid"


def record_holder(store: Store) -> None:
    """Record this process as the one running the run."""
    store.set_meta(PID_KEY, os.getpid())


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def run_is_live(store: Store) -> bool:
    """Whether a live process runs this run (the pid recorded at its start still exists)."""
    pid = store.get_meta(PID_KEY)
    return isinstance(pid, int) and pid_alive(pid)


def run_summary(results_db: Path) -> dict:
    """Return the counts `mmevol status` shows, with the cost per model and in total."""
    store = Store(results_db)
    try:
        summary = store.summary(live=run_is_live(store))
        prices_path = (store.get_meta("settings") or {}).get("prices")
    finally:
        store.close()
    prices = PriceTable(prices_path)
    for row in summary["models"]:
        row["cost_usd"] = round(
            prices.cost(row["model"], row["input_tokens"], row["output_tokens"]), 4
        )
    summary["cost_usd"] = round(sum(r["cost_usd"] for r in summary["models"]), 4)
    return summary


def failed_earlier(results_db: Path, since: float, limit: int | None) -> int:
    """Count samples that failed before ``since`` and were not run again."""
    store = Store(results_db)
    try:
        return store.failed_before(since, limit)
    finally:
        store.close()
