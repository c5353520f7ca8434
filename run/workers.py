"""Share a run's samples among worker processes, each with its own event loop and core.

One process orchestrates a few dozen samples a second at most: its event loop runs on
one core, whatever ``--concurrency`` says (see ``bench/README.md``). An endpoint that
can take more, such as OpenAI's top tier or a vLLM cluster, is then limited by the
orchestrator. With ``--workers N`` the parent checks the endpoint, counts the seed and
starts N worker processes, each with its share of ``--concurrency``, ``--rpm`` and
``--tpm``. The parent reads the seed and deals its rows out as workers have room (so a
worker with slow samples gets fewer, and all finish together), skipping rows already
finished; each worker validates its rows and runs them exactly as a single process
would, writing to the run's two SQLite databases (in WAL mode writers take turns of a
few milliseconds). Rows claiming the same hash_id go to the same worker while one of
them is in flight, which then sees the clash. The output does not depend on N:
operators are drawn from the seed, the hash_id, the round and the attempt, and the
export is in seed order.

What the processes share:

- a tally of calls and money in shared memory, so that ``--max-calls`` and ``--max-cost``
  hold for the run as a whole;
- a stop flag: a budget, the failure breaker or a signal in any process stops every
  worker cleanly; a second Ctrl-C (or SIGTERM) quits them all at once;
- a queue of events (samples started, done, failed...; usage twice a second), which the
  parent hands to the progress display and uses to deal out rows.

A worker whose parent dies exits at once, as if killed with it: what it recorded is kept
and the next run resumes from there. Workers are forked from a server process that has
already imported mmevol (multiprocessing's ``forkserver``), so starting them is quick and
never copies the parent's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmevol.graph.config import Settings
from mmevol.run import eventloop
from mmevol.run.engine import RunReport, finished_earlier, run_rows
from mmevol.run.events import ENDS_A_ROW, Aborting, Event, Listener, Notice, SampleEvent, Stopping
from mmevol.run.seed import SeedRow, raw_rows, row_key, seed_row, shard_rows
from mmevol.run.stop import Stop
from mmevol.runtime.limits import Tally
from mmevol.runtime.llm import Usage, spent_so_far
from mmevol.runtime.prices import PriceTable
from mmevol.runtime.stops import SIBLING, StopReason
from mmevol.store.results import Store

WATCH_EVERY = 0.2
"""Seconds between a worker's looks at the stop flag and at its parent."""

USAGE_EVERY = 0.5
"""Seconds between a worker's usage reports to the parent."""


class WorkerFailed(RuntimeError):
    """A worker process hit a programming error; its traceback is the message."""


@dataclass
class WorkerLink:
    """What one worker process gets from its parent besides its settings."""

    index: int
    tally: Tally
    stop_flag: Any
    """A shared integer: 1 once every worker should stop cleanly."""
    events: Any
    """The queue of messages to the parent."""
    parent_alive: Any
    """The read end of a pipe whose write end only the parent holds: EOF means it died."""
    inbox: Any
    """The queue of seed rows the parent deals to this worker; None ends it."""

    async def rows(self) -> AsyncIterator[SeedRow]:
        """Yield the rows dealt to this worker until the parent says there are no more."""
        loop = asyncio.get_running_loop()
        while True:
            # A blocking get, in a thread, so the event loop keeps serving samples.
            item = await loop.run_in_executor(None, self.inbox.get)
            if item is None:
                return
            yield seed_row(*item)

    def stop_all(self) -> None:
        """Ask every worker to stop cleanly."""
        self.stop_flag.value = 1

    async def watch(self, stop: Stop) -> None:
        """Stop with the others when the flag goes up; exit at once when the parent died."""
        while True:
            if self.parent_alive.poll():
                # Nothing is sent on this pipe: readable means closed, i.e. the parent is
                # gone. Leave as abruptly as it did; every answer so far is recorded.
                os._exit(1)
            if self.stop_flag.value and not stop.stopping:
                stop.stop(SIBLING)
            await asyncio.sleep(WATCH_EVERY)


def run_workers(
    settings: Settings, seed: Path, *, retry_failed: bool = False, listener: Listener
) -> RunReport:
    """Run (or resume) a seed with ``settings.workers`` processes; see the module docstring.

    ``run.runner.run`` has checked the endpoint, created the run's databases, recorded
    the run and counted the seed already.

    Raises:
        WorkerFailed: a worker hit a programming error (the others were stopped cleanly).
    """
    count = min(settings.workers, settings.concurrency)
    context = _context()
    store = Store(settings.results_db)
    try:
        tally = spent_so_far(store, PriceTable(settings.prices), context)
    finally:
        store.close()
    return _Parent(settings, seed, retry_failed, listener, context, tally, count).run()


def _context() -> Any:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")  # Windows
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mmevol.run.workers"])
    return context


class _Parent:
    """Start the workers, feed their events to the listener, and add up their reports."""

    def __init__(
        self,
        settings: Settings,
        seed: Path,
        retry_failed: bool,
        listener: Listener,
        context: Any,
        tally: Tally,
        count: int,
    ):
        self.notify = listener
        self.usage = Usage(calls_before=tally.calls_before, cost_before=tally.cost_before)
        if hasattr(listener, "attach"):
            listener.attach(self.usage)
        self.stop_flag = context.Value("i", 0)
        self.events = context.Queue()
        alive_r, self.alive_w = context.Pipe(duplex=False)
        self.inboxes = [context.Queue() for _ in range(count)]
        shares = [settings.for_worker(k, count) for k in range(count)]
        self.procs = [
            context.Process(
                target=_worker_main,
                args=(
                    shares[k],
                    retry_failed,
                    WorkerLink(k, tally, self.stop_flag, self.events, alive_r, self.inboxes[k]),
                ),
                name=f"mmevol-worker-{k}",
            )
            for k in range(count)
        ]
        # A row is dealt only into a free slot. A row queued at a busy worker could wait
        # there for a whole sample's time while another worker has slots free, which
        # stretched the end of a run by seconds; a free slot waits only for the deal's
        # round trip, a millisecond or so.
        self.room = [w.concurrency for w in shares]
        self.outstanding = [0] * count
        self.owner: dict[str, int] = {}
        """Which worker has the row of each key in flight."""
        self.seed_rows = shard_rows(raw_rows(seed), settings.shard_of)
        self.limit = settings.limit
        self.retry_failed = retry_failed
        self.store = Store(settings.results_db)
        self.skipped = 0
        self._alive_r = alive_r
        self.reports: dict[int, RunReport] = {}
        self.usages: dict[int, dict] = {}
        self.bugs: dict[int, str] = {}
        """The traceback of each worker that hit a programming error."""
        self.notices: set[str] = set()
        self.stop = Stop(listener)
        # The run's stop, wherever it comes from (a signal here, or a worker's budget,
        # breaker or signal), stops every worker and the dealing of rows; quitting at
        # once is passed on to the workers as a second signal.
        self.stop.on_stop(self._stop_workers)
        self.stop.on_abort(self._kill_workers)

    def run(self) -> RunReport:
        try:
            with self.stop.signals():
                with _main_module_hidden():
                    for proc in self.procs:
                        proc.start()
                self._alive_r.close()  # the workers hold their own copies
                self._deal()
                self._pump()
                for proc in self.procs:
                    proc.join()
        finally:
            self.alive_w.close()
            self.events.close()
            self.store.close()
        if self.bugs:
            index, text = next(iter(self.bugs.items()))
            raise WorkerFailed(f"worker {index} failed:\n{text}")
        return self._report()

    # -- dealing rows -------------------------------------------------------------------

    def _deal(self) -> None:
        """Give rows to the workers with room, until the seed ends or the run stops."""
        while self.seed_rows is not None:
            if self.stop.stopping:
                self._end_rows()
                return
            k = max(range(len(self.procs)), key=lambda n: self.room[n] - self.outstanding[n])
            if self.outstanding[k] >= self.room[k]:
                return
            item = next(self.seed_rows, None)
            if item is None or (self.limit is not None and item[0] >= self.limit):
                self._end_rows()
                return
            index, raw, error = item
            key = row_key(index, raw)
            if error is None and self._finished_earlier(key, index):
                self.skipped += 1
                self.notify(SampleEvent("skipped", key))
                continue
            k = self.owner.get(key, k)
            self.owner[key] = k
            self.outstanding[k] += 1
            self.inboxes[k].put(item)

    def _finished_earlier(self, key: str, index: int) -> bool:
        # The worker would skip it too; deciding here spares a resumed run of 163k rows
        # the round trip of every finished one.
        known = self.store.sample(key)
        return (
            known is not None
            and known["idx"] == index
            and finished_earlier(known, self.retry_failed)
        )

    def _end_rows(self) -> None:
        self.seed_rows = None
        for inbox in self.inboxes:
            inbox.put(None)

    # -- events -------------------------------------------------------------------------

    def _pump(self) -> None:
        while True:
            try:
                message = self.events.get(timeout=WATCH_EVERY)
            except queue.Empty:
                self._check_exits()
                if not any(proc.is_alive() for proc in self.procs):
                    break
                continue
            self._take(message)
        while True:  # whatever the last workers sent before exiting
            try:
                self._take(self.events.get_nowait())
            except queue.Empty:
                break
        self._check_exits()

    def _take(self, message: tuple) -> None:
        kind, index, *rest = message
        if kind == "event":
            self._event(index, rest[0])
        elif kind == "usage":
            self.usages[index] = rest[0]
            self._sum_usage()
        elif kind == "report":
            self.reports[index] = rest[0]
        elif kind == "bug":
            self.bugs[index] = rest[0]
            self.stop.stop(StopReason("worker_failed", f"worker {index} failed"))

    def _event(self, index: int, event: Event) -> None:
        match event:
            case SampleEvent(kind=kind, hash_id=key) if kind in ENDS_A_ROW:
                self.outstanding[index] -= 1
                if self.owner.get(key) == index:
                    del self.owner[key]
                self.notify(event)
                self._deal()
            case Stopping(reason=reason):
                # A worker that stopped because the others did says nothing new; the
                # first worker to stop for a reason of its own gives the run its reason.
                if reason.kind != "sibling":
                    self.stop.stop(reason)
            case Aborting():
                self.stop.aborted()  # the workers quit already; the display says so once
            case Notice(text=text):
                if text not in self.notices:
                    self.notices.add(text)
                    self.notify(event)
            case _:
                self.notify(event)

    def _stop_workers(self, reason: StopReason) -> None:
        self.stop_flag.value = 1
        if self.seed_rows is not None:
            self._end_rows()

    def _kill_workers(self) -> None:
        # Ctrl-C reaches the workers too (one process group); SIGTERM sent to the parent
        # alone reaches them through the flag, and a second one is passed on as an abort.
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    def _sum_usage(self) -> None:
        parts = self.usages.values()
        u = self.usage
        u.calls = sum(p["calls"] for p in parts)
        u.errors = sum(p["errors"] for p in parts)
        u.input_tokens = sum(p["input_tokens"] for p in parts)
        u.cached_tokens = sum(p["cached_tokens"] for p in parts)
        u.output_tokens = sum(p["output_tokens"] for p in parts)
        u.cost = sum(p["cost"] for p in parts)
        u.unpriced = {m for p in parts for m in p["unpriced"]}
        # A new dict, not an update: the progress display reads it from another thread.
        u.rounds = {h: r for p in parts for h, r in p["rounds"].items()}

    def _check_exits(self) -> None:
        for k, proc in enumerate(self.procs):
            code = proc.exitcode
            if code is None or k in self.reports or k in self.bugs:
                continue
            if code != 0 and not self.stop.aborting:
                reason = StopReason(
                    "worker_died", f"worker {k} died unexpectedly ({_exit_text(code)})"
                )
                self.stop.stop(reason)
                self.reports[k] = RunReport(stop=reason)

    def _report(self) -> RunReport:
        report = RunReport(skipped=self.skipped)
        for part in self.reports.values():
            report.done += part.done
            report.failed += part.failed
            report.skipped += part.skipped
            report.interrupted += part.interrupted
            report.failures.extend(part.failures)
            report.worker_cpu += part.worker_cpu
        if self.stop.stopping or any(part.stopped for part in self.reports.values()):
            report.stop = self.stop.reason or SIBLING
        return report


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start workers without running the caller's script again in each of them.

    multiprocessing re-imports the parent's ``__main__`` in a started process, so that a
    target defined there can be found; a script without an ``if __name__ == "__main__"``
    guard would then start a whole run inside every worker. Workers run only mmevol's
    own code, so the script is hidden from multiprocessing while they start.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)
        if "__spec__" not in saved:
            del main.__spec__


class _Forward:
    """A worker's listener: passes events to the parent, and the usage twice a second."""

    def __init__(self, link: WorkerLink):
        self.link = link
        self.usage: Usage | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, event: Event) -> None:
        self.link.events.put(("event", self.link.index, event))

    def attach(self, usage: Usage) -> None:
        self.usage = usage
        self._thread = threading.Thread(target=self._every, name="mmevol-usage", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._send_usage()

    def _every(self) -> None:
        while not self._done.wait(USAGE_EVERY):
            self._send_usage()

    def _send_usage(self) -> None:
        u = self.usage
        assert u is not None
        snapshot = {
            "calls": u.calls,
            "errors": u.errors,
            "input_tokens": u.input_tokens,
            "cached_tokens": u.cached_tokens,
            "output_tokens": u.output_tokens,
            "cost": u.cost,
            "unpriced": sorted(u.unpriced),
            "rounds": dict(u.rounds),  # copied in one step under the GIL
        }
        self.link.events.put(("usage", self.link.index, snapshot))


def cpu_with_children() -> float:
    """Return this process's CPU seconds plus those of its children that have ended.

    All threads count; a run's image helper is a child that ends with the run.
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _worker_main(settings: Settings, retry_failed: bool, link: WorkerLink) -> None:
    """Run one worker's share of the seed and send its report to the parent."""
    # Until the run installs its own handlers, a Ctrl-C is the parent's to act on (it
    # raises the stop flag); afterwards the run's handlers take it as usual.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward = _Forward(link)
    started = cpu_with_children()
    try:
        report = eventloop.run(_work(settings, retry_failed, link, forward))
    except BaseException:  # noqa: BLE001 - a bug: the parent stops the rest and shows it
        message, code = ("bug", link.index, traceback.format_exc()), 1
    else:
        report.worker_cpu = cpu_with_children() - started
        message, code = ("report", link.index, report), 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's handlers are gone by now
    forward.close()
    link.events.put(message)
    if code:
        raise SystemExit(code)


async def _work(
    settings: Settings, retry_failed: bool, link: WorkerLink, forward: _Forward
) -> RunReport:
    """Run the rows the parent deals, stopping with (and stopping) the other workers."""
    stop = Stop(forward)
    # The reason reaches the parent (through ``forward``) before the flag goes up.
    stop.on_stop(lambda reason: link.stop_all())
    watch = asyncio.create_task(link.watch(stop))
    try:
        return await run_rows(
            settings,
            link.rows(),
            stop,
            retry_failed=retry_failed,
            listener=forward,
            tally=link.tally,
        )
    finally:
        watch.cancel()
