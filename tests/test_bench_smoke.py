"""The benchmarks still run (--smoke sizes). Nothing here checks a speed: speed targets are
ratios the benchmarks print, measured by hand or in a CI step, never asserted in a test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

EXPECTED = {
    "overhead": ["overhead:"],
    "batch": ["batch:"],
    "latency": ["latency:", "latency-cpu:"] * 2,  # one worker, then two
    "barrier": ["barrier-scheduling:", "barrier:"],
    "footprint": ["footprint:", "footprint:", "footprint-flat:"],
    "export": ["export:"] * 8 + ["export-flat:"] * 4,
    "gates": ["gates-cost:"] * 3 + ["gates-filters:"] * 2 + ["gates-filters-memory:"],
    "scale": ["scale:", "scale:", "scale-ratio:"] * 2,  # no latency, then with latency
    "soak": [
        "soak-runs:",
        "soak-race:",
        "soak-outage:",
        "soak-export:",
        "soak-repeats:",
        "soak-surrogates:",
        "soak-changed:",
        "soak-batch-lost:",
    ],
}
STRICT = {"soak"}
"""Benchmarks whose goals are correctness, not speed: a missed goal is a bug, even in smoke."""


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_smoke_run(name):
    strict = ["--strict"] if name in STRICT else []
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), "--smoke", *strict],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600 if name == "soak" else 240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == EXPECTED[name], proc.stdout
    assert all(("PASS" in line or "FAIL" in line) for line in lines if "goal" in line)
    if name == "overhead":
        # The regression guard: the ratio to the bare loop is printed (never judged here).
        assert re.search(r"ratio \d+\.\d+ .*CPU ratio \d+\.\d+", lines[0]), lines[0]


def _result_with(finished: list[float]):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from _common import Result
    finally:
        sys.path.remove(str(REPO / "bench"))
    return Result("r", len(finished), 0.0, 0.0, 6 * len(finished), finished=finished)


def test_steady_rate_is_the_ideal_for_a_perfect_client():
    # 10 waves of 4 samples, each wave finishing 3 s after the previous one; the last
    # finishes slowly, as a tail does: only the stretch with every slot busy counts.
    finished = [3.0 * wave for wave in range(1, 10) for _ in range(4)] + [28, 29, 31, 40]
    assert _result_with(finished).steady_rate(4) == pytest.approx(4 / 3)


def test_steady_rate_needs_a_stretch_with_every_slot_busy():
    assert _result_with([1.0, 2.0, 3.0, 4.0, 5.0]).steady_rate(2) is None
    assert _result_with([1.0] * 10).steady_rate(4) is None
    assert _result_with([float(t) for t in range(1, 7)]).steady_rate(2) == pytest.approx(1.0)
