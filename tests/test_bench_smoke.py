"""The benchmarks still run (--smoke sizes). Nothing here checks a speed: speed targets are
ratios the benchmarks print, measured by hand or in a CI step, never asserted in a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

EXPECTED = {
    "overhead": ["overhead:"],
    "latency": ["latency:", "latency-cpu:"] * 2,  # one worker, then two
    "barrier": ["barrier-scheduling:", "barrier:"],
    "footprint": ["footprint:", "footprint:", "footprint-flat:"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_smoke_run(name):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == EXPECTED[name], proc.stdout
    assert all(("PASS" in line or "FAIL" in line) for line in lines if "goal" in line)
