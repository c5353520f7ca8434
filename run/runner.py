"""Run (or resume) a seed: lock its folder, check the endpoint, record the run, run the rows.

Re-running the same command resumes: finished samples are skipped and interrupted ones
continue from their last checkpoint. A resume may change how calls are sent, not what the
run makes: other result-changing settings (``graph.config.RESULT_SETTINGS``) or another
seed are refused before anything is written (``SettingsChanged``). What happens to the
rows is ``run.engine``'s (one process) or ``run.workers``'s (``--workers``, each worker
running ``run.engine`` on the rows its parent deals it); both report through the same
events and stop the same way (``run.stop``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from mmevol.graph.checkpoints import open_checkpointer
from mmevol.graph.config import Settings, changed_results
from mmevol.run import eventloop, imageroot, runfolder
from mmevol.run.engine import RunReport, run_rows
from mmevol.run.events import Listener, Notice, Total, ignore
from mmevol.run.seed import SeedRow, count_rows, fingerprint, raw_rows, seed_row, shard_rows
from mmevol.run.stop import Stop
from mmevol.run.workers import run_workers
from mmevol.runtime.llm import preflight
from mmevol.store.results import Store


def run(
    settings: Settings, seed: Path, *, retry_failed: bool = False, listener: Listener | None = None
) -> RunReport:
    """Run every sample of a seed through the graph, ``settings.concurrency`` at a time.

    With ``settings.workers`` above 1 the samples are shared by that many worker
    processes (``run.workers``); the result is the same, only faster when one core
    is what limits the run. ``listener`` is called with each event of the run
    (``run.events``); the report's ``stop`` says why the run stopped early, if it did.

    Raises:
        EndpointProblem: the key is missing or no endpoint is usable (before any sample).
        FileNotFoundError: the seed does not exist.
        RunBusy: another process writes the run folder.
        RunFolderProblem: the run folder's databases are damaged or do not belong together.
        SettingsChanged: the run was made with other result-changing settings or another
            seed; nothing was changed.
        WorkerFailed: a worker hit a programming error (the others were stopped cleanly).
    """
    seed = Path(seed)
    if not seed.exists():  # before the lock creates the run folder
        raise FileNotFoundError(f"seed {str(seed)!r} does not exist")
    imageroot.check_root(settings.images, seed, settings.limit)  # a mistyped --images: one error
    listener = listener or ignore
    # Also before the lock: an unusable endpoint leaves no run folder behind.
    # A --batch-dir run talks to no endpoint, unless requests may fall back to it.
    if settings.batch_dir is None or settings.batch_fallback is not None:
        for warning in eventloop.run(preflight(settings)):  # endpoints that start rested
            listener(Notice(warning))
    # One writer per run folder; worker processes write under this process's lock.
    with runfolder.writing(settings, on_notice=lambda text: listener(Notice(text))):
        seed_print = fingerprint(seed)
        check_resume(settings, seed, seed_print)  # before anything is written
        if spent := runfolder.budget_spent(settings):  # stop before any model call
            return RunReport(stop=spent)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        _record(settings, seed, seed_print)  # before the checkpoint tables: see _record
        eventloop.run(_prepare(settings))
        listener(Total(count_total(seed, settings.limit, settings.shard_of)))
        if min(settings.workers, settings.concurrency) > 1:
            return run_workers(settings, seed, retry_failed=retry_failed, listener=listener)
        rows = seed_rows(seed, settings.shard_of)
        stop = Stop(listener)
        return eventloop.run(
            run_rows(settings, rows, stop, retry_failed=retry_failed, listener=listener)
        )


def _record(settings: Settings, seed: Path, seed_print: str) -> None:
    """Record the run in its results database; a new run's appears whole or not at all.

    It is written aside and renamed into place, before the checkpoint tables are made: a
    kill during start-up leaves neither an empty results database nor checkpoint tables
    without one, both of which ``runfolder.check_databases`` must refuse as a lost record.
    """
    if settings.results_db.exists():
        with Store(settings.results_db) as store:
            record_run(store, settings, seed, seed_print)
        return
    aside = settings.results_db.with_name(settings.results_db.name + ".new")
    for leftover in ("", "-wal", "-shm"):  # of a start-up killed before
        Path(f"{aside}{leftover}").unlink(missing_ok=True)
    with Store(aside) as store:
        record_run(store, settings, seed, seed_print)
    if Path(f"{aside}-wal").exists():  # not folded in on close: keep both files together
        with Store(aside) as store:
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    aside.replace(settings.results_db)
    Path(f"{aside}-shm").unlink(missing_ok=True)


async def _prepare(settings: Settings) -> None:
    """Create the run's folder and its checkpoint tables.

    The tables exist before any worker process opens the database, so that workers do
    not race to create them.
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    async with open_checkpointer(settings.graph_db) as saver:
        saver.setup()


class SettingsChanged(ValueError):
    """A resume with other result-changing settings or another seed; nothing was changed."""


def check_resume(settings: Settings, seed: Path, seed_print: str | None = None) -> None:
    """Refuse to resume a run with settings that change results, or with another seed.

    Compares the settings marked ``results=True`` (``graph.config.RESULT_SETTINGS``) and
    the seed's content fingerprint with what the run recorded; a new run, or one recorded
    by a version that did not record them, passes.

    Raises:
        SettingsChanged: one line naming what differs (recorded and new value) and what to
            do instead.
    """
    if not settings.results_db.exists():
        return
    with Store(settings.results_db) as store:
        recorded = store.get_meta("settings")
        recorded_print = store.get_meta("seed_fingerprint")
        recorded_seed = store.get_meta("seed")
    if not isinstance(recorded, dict):
        return
    instead = "resume it with the recorded values, or give a new --run name to start another run"
    differ = changed_results(recorded, settings.public())
    if differ:
        raise SettingsChanged(
            f"run {settings.run!r} was made with other settings that change results: "
            + ", ".join(f"{flag} {old!r} (recorded) vs {new!r} (now)" for flag, old, new in differ)
            + f"; {instead}"
        )
    seed_print = seed_print or fingerprint(seed)
    if recorded_print and recorded_print != seed_print:
        raise SettingsChanged(
            f"run {settings.run!r} was made from another seed: {recorded_seed} (recorded,"
            f" {recorded_print[:19]}) vs {seed} (now, {seed_print[:19]}), whose content"
            " differs; resume it with the recorded seed, or give a new --run name to start"
            " another run"
        )


def record_run(store: Store, settings: Settings, seed: Path, seed_print: str | None = None) -> None:
    """Record the run's settings (without the key) and its seed in the results database.

    Also the seed's content fingerprint (``seed_print`` when it is known already) and,
    once, an id of the run folder: ``mmevol merge`` uses both to tell shards of one seed,
    and one folder merged again.
    """
    store.set_meta("settings", settings.public())
    store.set_meta("seed", str(seed.resolve()))
    store.set_meta("seed_fingerprint", seed_print or fingerprint(seed))
    if store.get_meta("run_id") is None:
        store.set_meta("run_id", uuid.uuid4().hex)


def count_total(seed: Path, limit: int | None, shard: tuple[int, int] | None = None) -> int | None:
    """Return the rows a run will go through (None if the seed cannot be counted cheaply).

    A shard's rows are known only by reading every row's key, so a shard has no total.
    """
    if shard is not None and shard[1] > 1:
        return None
    total = count_rows(seed)
    if limit is not None:
        total = limit if total is None else min(total, limit)
    return total


async def seed_rows(seed: Path, shard: tuple[int, int] | None = None) -> AsyncIterator[SeedRow]:
    """Yield the rows of a seed file (of one shard of it), as ``run_rows`` takes them."""
    for index, raw, error in shard_rows(raw_rows(Path(seed)), shard):
        yield seed_row(index, raw, error)
