"""Run (or resume) a seed: lock its folder, check the endpoint, record the run, run the rows.

Re-running the same command resumes: finished samples are skipped and interrupted ones
continue from their last checkpoint. What happens to the rows is ``run.engine``'s (one
process) or ``run.workers``'s (``--workers``, each worker running ``run.engine`` on the
rows its parent deals it); both report through the same events and stop the same way
(``run.stop``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from mmevol.graph.checkpoints import open_checkpointer
from mmevol.graph.config import Settings
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
        if spent := runfolder.budget_spent(settings):  # stop before any model call
            return RunReport(stop=spent)
        eventloop.run(_prepare(settings))
        with Store(settings.results_db) as store:
            record_run(store, settings, seed)
        listener(Total(count_total(seed, settings.limit, settings.shard_of)))
        if min(settings.workers, settings.concurrency) > 1:
            return run_workers(settings, seed, retry_failed=retry_failed, listener=listener)
        rows = seed_rows(seed, settings.shard_of)
        stop = Stop(listener)
        return eventloop.run(
            run_rows(settings, rows, stop, retry_failed=retry_failed, listener=listener)
        )


async def _prepare(settings: Settings) -> None:
    """Create the run's folder and its checkpoint tables.

    The tables exist before any worker process opens the database, so that workers do
    not race to create them.
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    async with open_checkpointer(settings.graph_db) as saver:
        saver.setup()


def record_run(store: Store, settings: Settings, seed: Path) -> None:
    """Record the run's settings (without the key) and its seed in the results database.

    Also the seed's content fingerprint and, once, an id of the run folder: ``mmevol
    merge`` uses both to tell shards of one seed, and one folder merged again.
    """
    store.set_meta("settings", settings.public())
    store.set_meta("seed", str(seed.resolve()))
    store.set_meta("seed_fingerprint", fingerprint(seed))
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
