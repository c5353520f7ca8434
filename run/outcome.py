"""What `mmevol run` says when it ends: a summary line, failures, advice and the exit status.

The exit statuses of a finished run are decided here, from its ``RunReport``; a stop's own
status (3, or 130 for a signal) is ``StopReason.exit_code``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmevol.run.engine import RunReport

EXIT_STOPPED = 3
"""A run stopped by --max-cost, --max-calls or a failing endpoint (130: Ctrl-C, SIGTERM)."""
EXIT_FAILED = 4
"""The seed is through, but samples failed (this time, or earlier and not retried)."""
FAILURES_SHOWN = 10
"""Failed samples named one by one; `mmevol status` lists the rest."""


@dataclass
class RunOutcome:
    """The lines `mmevol run` prints at its end, and the status it exits with."""

    summary: str
    """Samples done, failed and skipped, and the run folder (standard output)."""
    failures: list[str] = field(default_factory=list)
    """The first failed samples with their reasons, one line each."""
    advice: list[str] = field(default_factory=list)
    """What happened beyond the counts and what to do about it, one paragraph each."""
    exit_code: int = 0


def run_outcome(report: RunReport, run: str, run_dir: Path, earlier: int) -> RunOutcome:
    """Describe how a run ended; ``earlier`` counts samples that failed before and were not run."""
    result = RunOutcome(
        f"run {run!r}: {report.done} done, {report.failed} failed, {report.skipped} skipped "
        f"(already finished or failed earlier) -> {run_dir}"
    )
    for hash_id, reason in report.failures[:FAILURES_SHOWN]:
        result.failures.append(f"  failed {hash_id}: {reason}")
    if len(report.failures) > FAILURES_SHOWN:
        more = len(report.failures) - FAILURES_SHOWN
        result.failures.append(f"  ... and {more} more (mmevol status --run {run})")
    if earlier:
        result.advice.append(
            f"{earlier} samples that failed earlier were not run again; add --retry-failed "
            f"to run them again (mmevol status --run {run} lists why they failed)."
        )
    if report.parked:
        result.advice.append(
            f"{report.parked} samples are parked waiting for batch answers; run the same "
            "command again to collect them and go on (with --batch, or the same --batch-dir; "
            "mmevol status lists the batches)."
        )
    if report.parked and report.stop is None and not report.interrupted:
        result.exit_code = EXIT_STOPPED
    elif report.stop is not None or report.interrupted:
        result.advice.append(stop_advice(report))
        # Interrupted samples without a stop: the endpoint failed their calls; the next
        # run resumes them.
        result.exit_code = report.stop.exit_code if report.stop else EXIT_STOPPED
    elif report.failed or earlier:
        result.advice.append(f"exit status 4: {report.failed + earlier} samples failed.")
        result.exit_code = EXIT_FAILED
    return result


def stop_advice(report: RunReport) -> str:
    """Say why a run stopped early and how to go on."""
    stop = report.stop
    reason = stop.message if stop else "the endpoint failed their calls; see mmevol status"
    if stop is None or stop.kind not in ("max_cost", "max_calls"):
        return (
            f"Stopped ({reason}) with {report.interrupted} samples interrupted; "
            "run the same command again to resume them and the rest of the seed."
        )
    option = "--max-cost" if stop.kind == "max_cost" else "--max-calls"
    return (
        f"Stopped: {reason}, counted over every invocation of this run, so the same "
        f"command would stop again at once. To go on, raise {option} above what was spent "
        "and run again."
    )
