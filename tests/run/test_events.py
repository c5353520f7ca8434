"""A run's events and stop reasons, from real runs against the simulated endpoint."""

from __future__ import annotations

import pickle
from collections import Counter
from typing import get_args

import pytest

from mmevol.run import runner
from mmevol.run.events import ENDS_A_ROW, Aborting, Event, Notice, SampleEvent, Stopping, Total
from mmevol.runtime.stops import SIGNAL, StopKind, StopReason
from mmevol.sim.demo_seed import make_demo_seed


@pytest.mark.parametrize("kind", get_args(StopKind))
def test_a_signal_exits_130_and_every_other_stop_3(kind):
    assert StopReason(kind, "why").exit_code == (130 if kind == "signal" else 3)


def test_events_and_reasons_cross_a_process_boundary_unchanged():
    # Worker processes send them to their parent through a multiprocessing queue.
    for event in (
        SampleEvent("done", "3_a.jpg"),
        Total(16),
        Total(None),
        Notice("note"),
        Stopping(SIGNAL),
        Aborting(),
    ):
        assert pickle.loads(pickle.dumps(event)) == event


def ends_per_row(events: list[Event]) -> Counter[str]:
    return Counter(e.hash_id for e in events if isinstance(e, SampleEvent) and e.kind in ENDS_A_ROW)


def test_a_run_tells_the_total_first_then_one_end_per_row(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    events: list[Event] = []
    report = runner.run(make_settings(sim, images), seed_path, listener=events.append)

    assert events[0] == Total(12)
    assert set(ends_per_row(events).values()) == {1} and len(ends_per_row(events)) == 12
    kinds = Counter(e.kind for e in events if isinstance(e, SampleEvent))
    assert kinds["done"] == report.done == 8
    assert kinds["rejected"] == report.failed == 4  # bad rows never start
    assert kinds["started"] == 8
    assert not any(isinstance(e, Stopping | Aborting) for e in events)
    assert report.stop is None and not report.stopped

    # Run again: every row is skipped (failed ones too, without --retry-failed).
    again: list[Event] = []
    runner.run(make_settings(sim, images), seed_path, listener=again.append)
    kinds = Counter(e.kind for e in again if isinstance(e, SampleEvent))
    assert kinds == Counter(skipped=12)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_budget_stop_is_told_once_with_its_reason(workers, sim, make_settings, tmp_path):
    seed_path, images = make_demo_seed(tmp_path / "seed", n=12, seed=3)
    settings = make_settings(sim, images, concurrency=4, workers=workers, max_calls=10)
    events: list[Event] = []
    report = runner.run(settings, seed_path, listener=events.append)

    reason = StopReason("max_calls", "reached --max-calls 10")
    # Told once, by the run as a whole: with workers, the others' "stopped with the
    # other workers" stays between the processes.
    assert [e for e in events if isinstance(e, Stopping)] == [Stopping(reason)]
    assert report.stop == reason and report.stop.exit_code == 3
    kinds = Counter(e.kind for e in events if isinstance(e, SampleEvent))
    assert kinds["interrupted"] == report.interrupted > 0
    # Every row that started ended, one way or the other.
    assert kinds["started"] == kinds["done"] + kinds["failed"] + kinds["interrupted"]
    ends = ends_per_row(events)
    assert all(n == 1 for n in ends.values())
