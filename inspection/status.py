"""What a run folder holds: counts for `mmevol status`, and whether a process still runs it.

Whether a run is live is told by the run folder's lock (``run.runfolder``): a run whose
process is gone left the samples it had in flight marked "running", and they are shown as
interrupted (the next run resumes them).
"""

from __future__ import annotations

import ast
import http
import re
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
    ``errors`` lists the failed calls by node, endpoint, HTTP status and message.
    """
    with Store(results_db) as store:
        summary = store.summary(live=run_is_live(results_db))
        prices_path = (store.get_meta("settings") or {}).get("prices")
        summary["batches"] = batch_rows(store.batch_summary()["shards"])
        summary["errors"] = error_rows(store.call_errors())
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


def status_view(summary: dict, run: str) -> tuple[str, list[tuple[str, list[dict]]]]:
    """Return the line `mmevol status` starts with, and its titled tables (empty ones left out)."""
    samples = ", ".join(f"{k} {v}" for k, v in sorted(summary["samples"].items())) or "none"
    cost = f"cost ${summary['cost_usd']:.4f}"
    models = summary["models"]
    if any(r["batch"] for r in models):
        cost += f" (batch ${summary['batch_cost_usd']:.4f})"
    else:  # the batch column only when some calls went through the Batch API
        models = [{k: v for k, v in r.items() if k != "batch"} for r in models]
    tables = [
        ("rounds", summary["rounds"]),
        ("calls", summary["calls"]),
        # One endpoint says nothing the calls table does not: shown from two on.
        ("endpoints", summary["endpoints"] if len(summary["endpoints"]) > 1 else []),
        ("answers: how each model answer parsed", summary["answers"]),
        ("endpoint errors: calls that failed, by HTTP status", summary["errors"]),
        ("models", models),
        ("dropped items", summary["dropped"]),
        ("failures", summary["failures"]),
        ("batches (--batch): shards submitted and their answers", summary["batches"]),
    ]
    return f"run {run!r}: samples {samples}; {cost}", [(t, rows) for t, rows in tables if rows]


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


_STATUS_ERROR = re.compile(r"(\w+): Error code: (\d{3})(?: - (.*))?", re.DOTALL)


def describe_error(error: str) -> tuple[str, str]:
    """Split a recorded call error into its HTTP status ("HTTP 404 Not Found") and message.

    Errors are recorded as ``"<openai error class>: <its text>"``; an HTTP error's text is
    "Error code: N - <body>", and an OpenAI-style body's message is taken from it. An error
    without an HTTP answer (unreachable, timed out) has its class name as its status.
    """
    match = _STATUS_ERROR.fullmatch(error.strip())
    if match is None:
        name, _, rest = error.partition(": ")
        return name, rest
    code = int(match[2])
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = match[1]
    return f"HTTP {code} {phrase}".strip(), _body_message(match[3] or "")


def _body_message(body: str) -> str:
    """Return the message of an OpenAI-style error body (as the SDK prints it), else the body."""
    if body.startswith("{") and len(body) < 20_000:
        try:
            value = ast.literal_eval(body)  # literals only: the SDK prints the body's dict
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
        if isinstance(value, dict):
            inner = value.get("error", value)
            message = inner.get("message") if isinstance(inner, dict) else inner
            if isinstance(message, str) and message:
                return message
    return body


def error_rows(rows: list[dict]) -> list[dict]:
    """Return failed calls as `mmevol status` lists them: node, endpoint, status, message."""
    merged: dict[tuple, int] = {}
    for row in rows:
        key = (row["node"], row["endpoint"], *describe_error(row["error"]))
        merged[key] = merged.get(key, 0) + row["calls"]
    return [
        {"node": n, "endpoint": e, "status": s, "message": m, "calls": c}
        for (n, e, s, m), c in merged.items()
    ]
