"""The runs under a checkpoints folder: for `mmevol runs`, and to name them when one is missing.

A run is a folder holding ``results.db``. Samples still marked "running" in a run that no
process holds count as interrupted, as `mmevol status` counts them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mmevol.graph.config import check_run_name
from mmevol.run.runfolder import check_databases, run_is_live
from mmevol.store.results import Store


class NoSuchRun(ValueError):
    """Raised when the asked run is not under the checkpoints folder."""


@dataclass
class RunInfo:
    """One run of a checkpoints folder and the state of its samples."""

    run: str
    samples: int
    done: int
    failed: int
    interrupted: int
    other: int
    """Samples in flight in a live run, or parked waiting for batch answers."""
    live: bool
    """Whether a process on this machine holds the run's lock right now."""
    path: str

    def as_dict(self) -> dict:
        """Return the row as `mmevol runs --json` prints it."""
        return asdict(self)


def run_folders(checkpoints: Path) -> list[Path]:
    """Return the run folders under ``checkpoints`` (those holding results.db), by name."""
    if not checkpoints.is_dir():
        return []
    return sorted(p for p in checkpoints.iterdir() if (p / "results.db").is_file())


def list_runs(checkpoints: Path) -> list[RunInfo]:
    """Describe every run under ``checkpoints``: sample counts by state, and whether it is live."""
    rows = []
    for folder in run_folders(checkpoints):
        results = folder / "results.db"
        live = run_is_live(results)
        with Store(results) as store:
            counts = store.status_counts()
        if not live:
            counts["interrupted"] = counts.get("interrupted", 0) + counts.pop("running", 0)
        done, failed = counts.pop("done", 0), counts.pop("failed", 0)
        interrupted = counts.pop("interrupted", 0)
        rows.append(
            RunInfo(
                run=folder.name,
                samples=done + failed + interrupted + sum(counts.values()),
                done=done,
                failed=failed,
                interrupted=interrupted,
                other=sum(counts.values()),
                live=live,
                path=str(folder.resolve()),
            )
        )
    return rows


def existing_run(run: str, checkpoints: Path) -> Path:
    """Return the results database of an existing run.

    Raises:
        ValueError: a bad run name, or a damaged run folder.
        NoSuchRun: no such run; the message gives the folder's absolute path and the runs
            it holds.
    """
    check_run_name(run)
    path = checkpoints / run / "results.db"
    check_databases(path.parent)
    if path.exists():
        return path
    where = checkpoints.resolve()
    names = [p.name for p in run_folders(checkpoints)]
    if names:
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise NoSuchRun(
            f"no run named {run!r} under {where}; runs there: {shown} (mmevol runs lists them)"
        )
    raise NoSuchRun(
        f"no run named {run!r} under {where}; there are no runs there (give --checkpoints or "
        "set MMEVOL_CHECKPOINTS to the folder of runs)"
    )
