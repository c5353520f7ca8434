"""Run a seed through the graph: many samples in flight, each its own checkpointed thread.

There is no barrier between rounds: a sample goes from round 1 to round 3 on its own,
and a new sample starts as soon as one finishes, so a slow sample never holds the
others back. Re-running the same command resumes: finished samples are skipped and
interrupted ones continue from their last checkpoint.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import openai
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from mmevol.graph import eventloop, runfolder
from mmevol.graph.build import build_graph
from mmevol.graph.checkpoints import open_checkpointer
from mmevol.graph.config import Settings
from mmevol.graph.context import RunContext
from mmevol.graph.runtime import images
from mmevol.graph.runtime.encoder import ImageEncoder
from mmevol.graph.runtime.llm import ModelClient, RunStopped, error_name, preflight
from mmevol.graph.seed import SeedRow, count_rows, read_seed, row_key
from mmevol.graph.store import Store

if TYPE_CHECKING:
    from mmevol.graph.workers import WorkerLink

SIGNAL_REASON = "interrupted by a signal"
"""The stop reason of Ctrl-C and SIGTERM (the CLI exits 130 for it, 3 for other stops)."""

Listener = Callable[[str, str], None]
"""Called with (event, hash_id). Events: total (the row count, or "" when unknown, in place of a
hash_id), skipped (finished earlier), rejected (bad input, never started), started, done, failed."""


@dataclass
class RunReport:
    """What one invocation of the runner did."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    interrupted: int = 0
    """Samples stopped mid-way by Ctrl-C or SIGTERM; the next run resumes them."""
    stopped: bool = False
    """Whether the run stopped before the seed was through (a signal, a budget, the breaker)."""
    stop_reason: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    worker_cpu: float = 0.0
    """CPU seconds used by worker processes (``--workers``), all threads and their image
    helpers; 0 without them."""


class Stopper:
    """Turn Ctrl-C and SIGTERM into a clean stop, and a second one into an immediate one.

    First signal: no new sample starts, and no new model call is made; answers already
    on their way are received and recorded, and every sample stops at its next call,
    checkpointed. Second signal: the in-flight tasks are cancelled at once; what was
    recorded and checkpointed so far is kept, so the run still resumes.
    """

    def __init__(self, notify: Listener, worker: WorkerLink | None = None):
        """Remember whom to tell (and, in a worker process, the flag that stops them all)."""
        self.client: ModelClient | None = None
        self.notify = notify
        self.worker = worker
        self.stopping = False
        self.reason: str | None = None
        self.tasks: set[asyncio.Task] = set()
        self._installed: list[int] = []

    def install(self) -> None:
        """Handle SIGINT and SIGTERM on the running loop (only possible in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
            self._installed.append(sig)

    def uninstall(self) -> None:
        """Give the signals back to Python's default handling."""
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def stop(self, reason: str = SIGNAL_REASON) -> None:
        """Stop cleanly the first time, at once the second time (a second signal)."""
        if not self.stopping:
            self.stopping = True
            self.reason = reason
            if self.client is not None:
                self.client.stopping = True
            self.notify("stopping", reason)
            if self.worker is not None:
                self.worker.stop_all()  # after the reason is on its way to the parent
            return
        if reason != SIGNAL_REASON:
            return  # a budget or the breaker never forces an immediate exit
        self.notify("aborting", "")
        for task in list(self.tasks):
            task.cancel()


def thread_config(settings: Settings, hash_id: str) -> dict:
    """Return the LangGraph config of one sample: its thread, tags for tracing, step limit."""
    return {
        "configurable": {"thread_id": hash_id},
        # Each attempt is three steps and each round two more; leave ample headroom.
        "recursion_limit": settings.rounds * (3 * settings.max_attempts + 4) + 10,
        "run_name": f"mmevol {hash_id}",
        "tags": ["mmevol", f"run:{settings.run}", f"sample:{hash_id}"],
        "metadata": {"mmevol_run": settings.run, "hash_id": hash_id},
    }


def durability(settings: Settings) -> str:
    """Return when LangGraph writes a sample's checkpoints.

    Every model answer is already in results.db before its node returns, so a sample
    restarted from any earlier checkpoint, or from its input, replays its recorded
    answers instead of paying for them again, and reaches the same state. Writing a
    checkpoint after every step is then needed only to keep the step-by-step history
    (``--keep-history``, for replay); otherwise the state is written when the sample
    stops (finished, failed or interrupted), which halves the orchestrator's CPU cost
    of checkpointing.
    """
    return "sync" if settings.keep_history else "exit"


def compile_graph(saver: BaseCheckpointSaver) -> CompiledStateGraph:
    """Compile the sample graph with a checkpointer."""
    return build_graph().compile(checkpointer=saver)


def run(
    settings: Settings, seed: Path, *, retry_failed: bool = False, listener: Listener | None = None
) -> RunReport:
    """Run (or resume) a seed on mmevol's event loop; see ``run_async``.

    With ``settings.workers`` above 1 the samples are shared by that many worker
    processes (``graph.workers``); the result is the same, only faster when one core
    is what limits the run.
    """
    if not Path(seed).exists():  # before the lock creates the run folder
        raise FileNotFoundError(f"seed {str(seed)!r} does not exist")
    images.check_root(settings.images, seed, settings.limit)  # a mistyped --images: one error
    notify = listener or (lambda event, detail: None)
    # One writer per run folder; worker processes write under this process's lock.
    with runfolder.writing(settings, on_notice=lambda text: notify("notice", text)):
        if spent := runfolder.budget_spent(settings):  # stop before any call
            return RunReport(stopped=True, stop_reason=spent)
        if min(settings.workers, settings.concurrency) > 1:
            from mmevol.graph.workers import run_workers

            return run_workers(settings, seed, retry_failed=retry_failed, listener=listener)
        return eventloop.run(
            run_async(settings, seed, retry_failed=retry_failed, listener=listener)
        )


async def run_async(
    settings: Settings,
    seed: Path,
    *,
    retry_failed: bool = False,
    listener: Listener | None = None,
    worker: WorkerLink | None = None,
) -> RunReport:
    """Run every sample of a seed through the graph, ``settings.concurrency`` at a time.

    In a worker process ``worker`` brings the rows the parent deals to this process and
    what the workers share: the budget tally and the flag that stops them all. The
    parent has then checked the endpoint, recorded the run's settings and counted the
    seed already.

    Raises:
        EndpointProblem: the key is missing or the endpoint unreachable (before any sample).
        FileNotFoundError: the seed does not exist.
    """
    seed = Path(seed)
    if not seed.exists():
        raise FileNotFoundError(f"seed {str(seed)!r} does not exist")
    if worker is None:
        await preflight(settings)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.results_db)
    report = RunReport()
    notify = listener or (lambda event, hash_id: None)
    try:
        if worker is None:
            record_run(store, settings, seed)
        stopper = Stopper(notify, worker)
        client = ModelClient(
            settings,
            store,
            on_stop=stopper.stop,
            on_notice=lambda text: notify("notice", text),
            tally=worker.tally if worker is not None else None,
        )
        stopper.client = client
        if hasattr(listener, "attach"):
            listener.attach(client.usage)
        encoder = ImageEncoder(on_notice=lambda text: notify("notice", text))
        ctx = RunContext(settings, store, client, encoder)
        stopper.install()
        watch = asyncio.create_task(worker.watch(stopper)) if worker is not None else None
        try:
            encoder.start()
            async with open_checkpointer(settings.graph_db) as saver:
                graph = compile_graph(saver)
                if worker is None:
                    notify("total", count_total(seed, settings.limit))
                    rows = _rows_of(seed)
                else:  # the parent counted the seed and deals out its rows
                    rows = worker.rows()
                await _run_rows(graph, ctx, rows, retry_failed, report, notify, stopper)
        finally:
            if watch is not None:
                watch.cancel()
            stopper.uninstall()
            await ctx.client.aclose()
            await encoder.aclose()
        report.stopped = stopper.stopping
        report.stop_reason = stopper.reason
    finally:
        store.close()
    return report


async def _run_rows(
    graph: CompiledStateGraph,
    ctx: RunContext,
    rows: AsyncIterator[SeedRow],
    retry_failed: bool,
    report: RunReport,
    notify: Listener,
    stopper: Stopper,
) -> None:
    settings, store = ctx.settings, ctx.store
    slots = asyncio.Semaphore(settings.concurrency)
    running = stopper.tasks
    bugs: list[BaseException] = []

    def finished(task: asyncio.Task) -> None:
        running.discard(task)
        slots.release()
        if task.cancelled():
            report.interrupted += 1
        elif task.exception() is not None:
            bugs.append(task.exception())

    def fail(row: SeedRow, reason: str, key: str | None = None) -> None:
        store.fail_sample(key or row.hash_id, reason, idx=row.index, source_id=row.source_id)
        _count_failure(report, notify, "rejected", key or row.hash_id, reason)

    async for row in rows:
        if stopper.stopping or (settings.limit is not None and row.index >= settings.limit):
            break
        # One indexed lookup per row, rather than every status in memory: memory stays
        # flat however large the seed.
        known = store.sample(row.hash_id)
        if known is not None and known["idx"] is not None and known["idx"] != row.index:
            fail(
                row,
                f"row {row.index}: hash_id {row.hash_id!r} is also row {known['idx']}'s",
                row_key(row.index, None),
            )
            continue
        if finished_earlier(known, retry_failed):
            report.skipped += 1
            notify("skipped", row.hash_id)
            continue
        if row.error is not None:
            fail(row, row.error)
            continue
        try:
            images.check(settings.images, row.sample.image)
        except images.ImageProblem as err:
            fail(row, f"row {row.index} ({row.hash_id}): {err}")
            continue
        # Waiting for a free slot before reading on keeps memory flat on a huge seed.
        await slots.acquire()
        if stopper.stopping:
            slots.release()
            break
        # Recorded before the task starts, so that a later row with the same hash_id
        # sees it.
        store.start_sample(row.hash_id, row.index, row.source_id, row.raw or {})
        if row.skipped_items:
            store.record_seed_drops(row.hash_id, row.skipped_items)
        task = asyncio.create_task(_run_sample(graph, ctx, row, report, notify))
        running.add(task)
        task.add_done_callback(finished)
        if bugs:
            break
    if running:
        await asyncio.wait(set(running))
    if bugs:
        # A programming error is a bug, not a property of one sample: stop and show it.
        raise bugs[0]


def record_run(store: Store, settings: Settings, seed: Path) -> None:
    """Record the run's settings (without the key) and its seed in the results database."""
    store.set_meta("settings", settings.public())
    store.set_meta("seed", str(seed.resolve()))


def finished_earlier(known: dict | None, retry_failed: bool) -> bool:
    """Whether a sample's row needs no run now: done, or failed and not to be retried."""
    status = known["status"] if known else None
    return status == "done" or (status == "failed" and not retry_failed)


async def _rows_of(seed: Path) -> AsyncIterator[SeedRow]:
    for row in read_seed(seed):
        yield row


def count_total(seed: Path, limit: int | None) -> str:
    """Return the rows a run will go through, as the "total" event says it ("" if unknown)."""
    total = count_rows(seed)
    if limit is not None:
        total = limit if total is None else min(total, limit)
    return str(total) if total is not None else ""


async def _run_sample(
    graph: CompiledStateGraph, ctx: RunContext, row: SeedRow, report: RunReport, notify: Listener
) -> None:
    assert row.sample is not None
    store = ctx.store
    config = thread_config(ctx.settings, row.hash_id)
    notify("started", row.hash_id)
    try:
        snapshot = await graph.aget_state(config)
        # A thread is finished when nothing is left to run. A step that completed but was
        # not yet checkpointed when the process died is not "next" but still a task with
        # pending writes; resuming applies them and goes on.
        if snapshot.values and not snapshot.next and not snapshot.tasks:
            final = snapshot.values  # finished before a crash could record it
        else:
            # With a checkpoint, None continues the thread where it stopped.
            start = None if snapshot.values else row.sample
            final = await graph.ainvoke(
                start, config, context=ctx, durability=durability(ctx.settings)
            )
    except RunStopped:
        store.interrupt_sample(row.hash_id)
        report.interrupted += 1
        notify("interrupted", row.hash_id)
        return
    except (openai.APIError, images.ImageProblem) as err:
        reason = f"row {row.index} ({row.hash_id}): {error_name(err)}: {err}"
        store.fail_sample(row.hash_id, reason)
        _count_failure(report, notify, "failed", row.hash_id, reason)
        return
    finally:
        # The sample is no longer in flight, whichever way it left.
        ctx.client.usage.rounds.pop(row.hash_id, None)
    store.finish_sample(row.hash_id, len(final["rounds"]))
    if not ctx.settings.keep_history:
        # The results database keeps what `mmevol trace` shows round by round, so the
        # step-by-step checkpoints of a finished sample can go: the file stays small.
        await graph.checkpointer.adelete_thread(row.hash_id)
    report.done += 1
    notify("done", row.hash_id)


def _count_failure(report: RunReport, notify: Listener, event: str, key: str, reason: str) -> None:
    report.failed += 1
    report.failures.append((key, reason))
    notify(event, key)
