"""Run seed rows through the graph in this process: many samples in flight, each its own thread.

There is no barrier between rounds: a sample goes from round 1 to round 3 on its own,
and a new sample starts as soon as one finishes, so a slow sample never holds the
others back. A row finished in an earlier run is skipped and an interrupted one
continues from its last checkpoint.

``run_rows`` is what one process does with the rows it is given: the whole seed for a
single-process run, or the rows a worker's parent deals it (``run.workers``). Checking
the endpoint, recording the run and choosing between the two is ``run.runner``'s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import openai
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from mmevol.graph.build import build_graph
from mmevol.graph.checkpoints import open_checkpointer
from mmevol.graph.config import Settings
from mmevol.graph.context import RunContext
from mmevol.run.events import Listener, Notice, SampleEvent, SampleKind
from mmevol.run.seed import SeedRow, row_key, seed_row
from mmevol.run.stop import Stop
from mmevol.runtime import images
from mmevol.runtime.batchapi import LineRefused, Parked, run_with
from mmevol.runtime.encoder import ImageEncoder
from mmevol.runtime.limits import Tally
from mmevol.runtime.llm import ModelClient, RunStopped, error_name
from mmevol.runtime.stops import StopReason
from mmevol.store.results import Store


@dataclass
class RunReport:
    """What one invocation of the runner did."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    interrupted: int = 0
    """Samples stopped mid-way by the run's stop; the next run resumes them."""
    parked: int = 0
    """Batch mode: samples still waiting for batch answers when the run stopped."""
    stop: StopReason | None = None
    """Why the run stopped before the seed was through (a signal, a budget, the breaker...)."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    worker_cpu: float = 0.0
    """CPU seconds used by worker processes (``--workers``), all threads and their image
    helpers; 0 without them."""

    @property
    def stopped(self) -> bool:
        """Return True when the run stopped before the seed was through."""
        return self.stop is not None


def thread_config(settings: Settings, hash_id: str, traced: bool = True) -> dict:
    """Return the LangGraph config of one sample: its thread, tags for tracing, step limit.

    The run name, tags and metadata serve LangSmith only; LangGraph merges them into the
    config of every task and branch, so an untraced run (``traced`` False) leaves them out.
    """
    config: dict = {
        "configurable": {"thread_id": hash_id},
        # Each attempt is three steps and each round two more; leave ample headroom.
        "recursion_limit": settings.rounds * (3 * settings.max_attempts + 4) + 10,
    }
    if traced:
        config["run_name"] = f"mmevol {hash_id}"
        config["tags"] = ["mmevol", f"run:{settings.run}", f"sample:{hash_id}"]
        config["metadata"] = {"mmevol_run": settings.run, "hash_id": hash_id}
    return config


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


async def run_rows(
    settings: Settings,
    rows: AsyncIterator[SeedRow],
    stop: Stop,
    *,
    retry_failed: bool = False,
    listener: Listener,
    tally: Tally | None = None,
) -> RunReport:
    """Run the given rows through the graph, ``settings.concurrency`` samples at a time.

    The run's folder, its results database and its checkpoint database exist already.
    ``stop`` stops the samples (its reason ends up in the report); SIGINT and SIGTERM are
    handed to it while the rows run. ``tally`` counts calls and money for the budgets
    (worker processes share one); without it the run counts in this process, from what
    the results database recorded.
    """
    report = RunReport()
    with Store(settings.results_db) as store:
        async with (
            ModelClient(
                settings,
                store,
                on_stop=stop.stop,
                on_notice=lambda text: listener(Notice(text)),
                tally=tally,
            ) as client,
            ImageEncoder(on_notice=lambda text: listener(Notice(text))) as encoder,
        ):
            encoder.start()
            stop.on_stop(client.stop)  # no new model call from then on
            if hasattr(listener, "attach"):
                listener.attach(client.usage)
            ctx = RunContext(settings, store, client, encoder)
            with stop.signals():
                async with open_checkpointer(settings.graph_db) as saver:
                    graph = compile_graph(saver)
                    if client.batches is None:
                        await _run_rows(graph, ctx, rows, retry_failed, report, listener, stop)
                    else:
                        await _run_batched(graph, ctx, rows, retry_failed, report, listener, stop)
            # Batch mode's samples still waiting; an online run leaves them be (asking
            # online what a batch will answer would pay twice).
            report.parked = store.count("samples", status="parked")
        report.stop = stop.reason
    return report


async def _run_batched(
    graph: CompiledStateGraph,
    ctx: RunContext,
    rows: AsyncIterator[SeedRow],
    retry_failed: bool,
    report: RunReport,
    notify: Listener,
    stop: Stop,
) -> None:
    """Batch mode: run the rows, then the parked samples whose answers came, until none waits.

    Each pass runs every sample that can go on until it finishes or parks on its next
    call; the batches are polled all the while. When every sample waits, the shard being
    filled is submitted and the run waits for a batch to finish.
    """
    queue, store = ctx.client.batches, ctx.store
    assert queue is not None
    await queue.start()

    async def passes() -> None:
        await _run_rows(graph, ctx, rows, retry_failed, report, notify, stop)
        while not stop.stopping:
            ready = store.ready_parked()
            if ready:
                await _run_rows(graph, ctx, _stored_rows(store, ready), False, report, notify, stop)
            elif not store.count("samples", status="parked"):
                break
            else:
                await queue.flush()
                if not stop.stopping:
                    await queue.wait(lambda: stop.stopping)

    await run_with(queue, passes)


async def _stored_rows(store: Store, hash_ids: list[str]) -> AsyncIterator[SeedRow]:
    """Yield the seed rows of samples, as their start recorded them."""
    for hash_id in hash_ids:
        sample = store.sample(hash_id)
        if sample is not None:
            yield seed_row(sample["idx"], json.loads(sample["seed"]), None)


async def _run_rows(
    graph: CompiledStateGraph,
    ctx: RunContext,
    rows: AsyncIterator[SeedRow],
    retry_failed: bool,
    report: RunReport,
    notify: Listener,
    stop: Stop,
) -> None:
    settings, store = ctx.settings, ctx.store
    slots = asyncio.Semaphore(settings.concurrency)
    running: set[asyncio.Task] = set()
    bugs: list[BaseException] = []

    def cancel_all() -> None:
        for task in list(running):
            task.cancel()

    # Quitting at once cancels the samples in flight; what they recorded is kept.
    stop.on_abort(cancel_all)

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
        if stop.stopping or (settings.limit is not None and row.index >= settings.limit):
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
        if known is not None and known["status"] == "parked" and store.waiting(row.hash_id):
            continue  # batch mode: its answers are not back yet
        if finished_earlier(known, retry_failed):
            report.skipped += 1
            notify(SampleEvent("skipped", row.hash_id))
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
        if stop.stopping:
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


def finished_earlier(known: dict | None, retry_failed: bool) -> bool:
    """Whether a sample's row needs no run now: done, or failed and not to be retried."""
    status = known["status"] if known else None
    return status == "done" or (status == "failed" and not retry_failed)


async def _run_sample(
    graph: CompiledStateGraph, ctx: RunContext, row: SeedRow, report: RunReport, notify: Listener
) -> None:
    assert row.sample is not None
    store = ctx.store
    config = thread_config(ctx.settings, row.hash_id, traced=ctx.client.traced)
    notify(SampleEvent("started", row.hash_id))
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
    except Parked:
        store.park_sample(row.hash_id)
        notify(SampleEvent("parked", row.hash_id))
        return
    except RunStopped:
        store.interrupt_sample(row.hash_id)
        report.interrupted += 1
        notify(SampleEvent("interrupted", row.hash_id))
        return
    except (openai.APIError, images.ImageProblem, LineRefused) as err:
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
    notify(SampleEvent("done", row.hash_id))


def _count_failure(
    report: RunReport, notify: Listener, kind: SampleKind, key: str, reason: str
) -> None:
    report.failed += 1
    report.failures.append((key, reason))
    notify(SampleEvent(kind, key))
