"""The one stop mechanism of single-process runs, workers and the workers' parent."""

from __future__ import annotations

import os
import signal

from mmevol.run.events import Aborting, Event, Stopping
from mmevol.run.stop import Stop
from mmevol.runtime.stops import SIGNAL, StopReason

BUDGET = StopReason("max_calls", "reached --max-calls 10")


def test_the_first_reason_wins_and_is_told_once():
    events: list[Event] = []
    stop = Stop(events.append)
    seen: list[StopReason] = []
    stop.on_stop(seen.append)
    stop.stop(BUDGET)
    stop.stop(StopReason("breaker", "the endpoint keeps failing"))
    assert stop.stopping and stop.reason == BUDGET
    assert events == [Stopping(BUDGET)] and seen == [BUDGET]
    # A hook that comes late still learns of the stop.
    late: list[StopReason] = []
    stop.on_stop(late.append)
    assert late == [BUDGET]


def test_a_second_signal_aborts_but_a_second_reason_does_not():
    events: list[Event] = []
    stop = Stop(events.append)
    aborts: list[int] = []
    stop.on_abort(lambda: aborts.append(1))
    stop.stop(BUDGET)
    stop.stop(SIGNAL)  # another process's signal, passed on as a reason: no abort
    assert not stop.aborting and aborts == []
    stop.signal()  # a signal here while stopping: quit at once
    stop.signal()
    assert stop.aborting and aborts == [1, 1]
    assert events == [Stopping(BUDGET), Aborting()]  # the abort is told once
    assert stop.reason == BUDGET


def test_signals_are_handled_inside_the_block_only():
    stop = Stop(lambda event: None)
    before = signal.getsignal(signal.SIGTERM)
    with stop.signals():
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.reason == SIGNAL
    assert signal.getsignal(signal.SIGTERM) is before
