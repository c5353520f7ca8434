"""A run folder as a safe place: one writer at a time, and databases that belong together.

One writer: ``mmevol run`` and ``mmevol replay`` hold an exclusive ``flock`` on
``<run folder>/run.lock`` while they write. The kernel drops the lock when the process ends,
however it ends, so a lock is never left behind by a crash; the file also records the
holder (pid, host, start time, command) so that a refused command can name it. A record
left in the file by a process that died holding the lock is taken over with a notice.
Worker processes (``--workers``) write under their parent's lock. Reading commands
(status, export, trace) take no lock: SQLite's WAL mode lets them read while a run writes.
``flock`` is local to a machine: two hosts sharing the folder over NFS may not see each
other's lock.

Databases that belong together: ``results.db`` records every paid call, ``graph.sqlite``
the checkpoints. A folder where one of them is empty, unreadable, not SQLite, or missing
while the other holds a run is refused rather than taken for a new run, which would pay
for every sample again. A checkpoint file that was never written (0 bytes, or SQLite
without the checkpoint tables, as a kill during start-up leaves it) counts as missing:
next to a results database without paid calls, or none, the folder is a new run. (A new
run's results database appears whole, renamed into place by ``run.runner``, so a kill
leaves no empty one.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mmevol.graph.config import Settings
from mmevol.runtime.stops import StopReason, max_calls_reached, max_cost_reached

LOCK_NAME = "run.lock"
SQLITE_HEADER = b"SQLite format 3\x00"


class RunBusy(RuntimeError):
    """Another process holds the run folder; the message names it."""


class RunFolderProblem(ValueError):
    """The run folder's databases are damaged or do not belong together."""


class RunLock:
    """The exclusive right to write a run folder, held until ``release`` or process exit."""

    def __init__(self, run_dir: Path | str, on_notice: Callable[[str], None] | None = None):
        """Prepare to lock ``run_dir`` (created when missing); ``on_notice`` hears take-overs."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.on_notice = on_notice or (lambda text: print(f"note: {text}", file=sys.stderr))
        self._file = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise ``RunBusy`` naming the process that holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(handle)
            handle.close()
            raise RunBusy(
                f"run folder {str(self.run_dir)!r} is in use by {describe(holder)}; "
                "wait for it to finish or stop it (Ctrl-C), then run again"
            ) from None
        except BaseException:
            handle.close()
            raise
        stale = _read_record(handle)
        if stale:
            self.on_notice(
                f"took over the run lock of {describe(stale)}, which is no longer running"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": _command(),
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        """Clear the holder's record and drop the lock."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):  # e.g. a full disk: the kernel lock still goes
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> RunLock:
        """Take the lock (see ``acquire``)."""
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        """Drop the lock."""
        self.release()


def describe(record: dict | None) -> str:
    """Name a lock holder: pid, host, start time and command."""
    if not record:
        return "another process (it has not recorded itself yet)"
    return (
        f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}, "
        f"command: {record.get('command')}"
    )


def live_holder(run_dir: Path | str) -> dict | None:
    """Return the record of the process writing the run folder, if it still runs here.

    Reads the record only, never takes the lock: a probe that took it, even shared, could
    make a run starting at that instant see the folder busy.
    """
    try:
        with open(Path(run_dir) / LOCK_NAME, encoding="utf-8") as handle:
            record = _read_record(handle)
    except OSError:
        return None
    if not record or record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    return record if isinstance(pid, int) and _pid_alive(pid) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _read_record(handle) -> dict | None:
    handle.seek(0)
    text = handle.read().strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "started": "?", "command": text[:200]}
    return record if isinstance(record, dict) else None


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0]).name
    if program in ("__main__.py", "-c", ""):
        program = "mmevol" if program == "__main__.py" else "python -c"
    return shlex.join([program, *argv[1:]])


# -- databases that belong together ------------------------------------------------------------


def check_databases(run_dir: Path | str) -> None:
    """Refuse a run folder whose databases are damaged or do not belong together.

    A folder that does not exist yet, or holds neither database, is a new run. Checks
    only what the files look like; ``Store`` refuses deeper damage when it opens one.

    Raises:
        RunFolderProblem: the message says which file and what to do.
    """
    run_dir = Path(run_dir)
    results, graph = run_dir / "results.db", run_dir / "graph.sqlite"
    _check_file(results)
    empty = _empty(graph)
    if not empty:  # 0 bytes: never written (a kill during start-up), unless paid calls say
        _check_file(graph)
    restore = "restore it from a backup, or move the run folder away to start the run over"
    if graph.exists() and not results.exists() and _has_tables(graph):
        raise RunFolderProblem(
            f"{results} is missing next to {graph.name}: the record of this run's paid calls "
            f"is gone; {restore}"
        )
    if results.exists() and (empty or not graph.exists()) and _calls_recorded(results):
        what = "is empty (0 bytes)" if empty else "is missing"
        raise RunFolderProblem(
            f"{graph} {what} next to {results.name}, which records paid calls; {restore}"
        )


def _empty(path: Path) -> bool:
    """Whether a database file is 0 bytes, with no WAL file holding more."""
    try:
        if path.stat().st_size > 0:
            return False
        wal = path.with_name(path.name + "-wal")
        return not wal.exists() or wal.stat().st_size == 0
    except OSError:
        return False


def _has_tables(graph: Path) -> bool:
    """Whether a checkpoint file was written: it has the checkpoint tables (or is damaged).

    A kill during start-up leaves it 0 bytes or SQLite without those tables: nothing was
    lost, and next to no results database the folder is a new run. Tables without rows
    are a run's (a finished run keeps no checkpoints of its samples), whose results
    database is missing.
    """
    if _empty(graph):
        return False
    try:
        conn = sqlite3.connect(f"{graph.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("select name from sqlite_master")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return True  # damaged: refused, not taken for a new run
    return bool(tables & {"checkpoints", "writes"})


def _check_file(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as err:
        raise RunFolderProblem(
            f"cannot read {path} ({err.strerror}): fix its permissions and run again"
        ) from None
    if not header:
        raise RunFolderProblem(
            f"{path} is empty (0 bytes): what it held is lost; restore it from a backup, "
            "or move the run folder away to start the run over"
        )
    if header != SQLITE_HEADER:
        raise RunFolderProblem(
            f"{path} is not a SQLite database (damaged?): restore it from a backup, "
            "or move the run folder away to start the run over"
        )


def _calls_recorded(results: Path) -> bool:
    from mmevol.store.results import Store

    with Store(results) as store:
        return store.spent()["calls"] > 0


# -- budgets across resumes ------------------------------------------------------------------


def budget_spent(settings: Settings) -> StopReason | None:
    """Return why the run may make no call at all (a budget already spent), else None.

    The reason reads like the one a run stops with mid-way, so that the advice is the same.
    """
    if settings.max_cost is None and settings.max_calls is None:
        return None
    if not settings.results_db.exists():
        return None
    from mmevol.runtime.llm import spent_so_far
    from mmevol.runtime.prices import PriceTable
    from mmevol.store.results import Store

    with Store(settings.results_db) as store:
        tally = spent_so_far(store, PriceTable(settings.prices))
    if settings.max_calls is not None and tally.calls_before >= settings.max_calls:
        return max_calls_reached(settings.max_calls)
    if settings.max_cost is not None and tally.cost_before >= settings.max_cost:
        return max_cost_reached(settings.max_cost, tally.cost_before)
    return None


@contextlib.contextmanager
def writing(settings: Settings, on_notice: Callable[[str], None] | None = None):
    """Hold a run folder for writing: lock it, then check its databases."""
    with RunLock(settings.run_dir, on_notice) as lock:
        check_databases(settings.run_dir)
        yield lock


def run_is_live(results_db: Path) -> bool:
    """Whether a live process on this machine writes this run (it holds the run lock)."""
    return live_holder(Path(results_db).parent) is not None
