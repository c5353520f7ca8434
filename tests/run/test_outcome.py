"""How `mmevol run` ends: its summary, the failures it names, its advice and exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmevol.run.engine import RunReport
from mmevol.run.outcome import run_outcome
from mmevol.runtime.stops import SIGNAL, max_calls_reached


@pytest.mark.parametrize(
    ("report", "earlier", "code"),
    [
        (RunReport(done=3), 0, 0),
        (RunReport(done=3, failed=1), 0, 4),
        (RunReport(done=3), 2, 4),
        (RunReport(parked=2), 0, 3),
        (RunReport(interrupted=1), 0, 3),
        (RunReport(interrupted=1, stop=SIGNAL), 0, 130),
        (RunReport(parked=2, stop=max_calls_reached(5), failed=1), 0, 3),
    ],
)
def test_exit_status_follows_the_report(report, earlier, code):
    assert run_outcome(report, "trial", Path("runs/trial"), earlier).exit_code == code


def test_ten_failures_are_named_and_the_rest_counted():
    report = RunReport(failed=12, failures=[(f"s{n}", "bad image") for n in range(12)])
    ending = run_outcome(report, "trial", Path("runs/trial"), 0)
    assert ending.summary == (
        "run 'trial': 0 done, 12 failed, 0 skipped (already finished or failed earlier)"
        " -> runs/trial"
    )
    assert ending.failures[0] == "  failed s0: bad image"
    assert ending.failures[10:] == ["  ... and 2 more (mmevol status --run trial)"]
    assert ending.advice == ["exit status 4: 12 samples failed."]


def test_a_budget_stop_says_which_option_to_raise():
    ending = run_outcome(RunReport(stop=max_calls_reached(5)), "trial", Path("runs/trial"), 0)
    assert ending.advice == [
        "Stopped: reached --max-calls 5, counted over every invocation of this run, so the same "
        "command would stop again at once. To go on, raise --max-calls above what was spent "
        "and run again."
    ]
