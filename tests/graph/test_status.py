"""`mmevol status` after a run was killed: samples it had in flight show as interrupted."""

from __future__ import annotations

import json
import signal

from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.status import run_summary


def test_killed_run_shows_interrupted_not_running(
    sim_factory, seed16, cli_run, wait_for_requests, tmp_path, monkeypatch
):
    # Reported: after kill -9 (or a closed terminal) `status` showed samples "running"
    # forever.
    seed_path, images = seed16
    server = sim_factory(seed=0, latency_ms=200)
    checkpoints = tmp_path / "ck"
    monkeypatch.setenv("MMEVOL_CHECKPOINTS", str(checkpoints))
    proc = cli_run(seed_path, images, server, checkpoints, "killed")
    try:
        wait_for_requests(server, proc, 2)
        live = run_summary(checkpoints / "killed" / "results.db")["samples"]
        assert live.get("running", 0) > 0  # the run is alive: its samples are running
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    summary = run_summary(checkpoints / "killed" / "results.db")
    assert "running" not in summary["samples"]
    assert summary["samples"]["interrupted"] == live["running"] + live.get("interrupted", 0)

    result = CliRunner().invoke(app, ["status", "--run", "killed", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == summary["samples"]
    result = CliRunner().invoke(app, ["status", "--run", "killed"])
    assert "interrupted" in result.output and "running" not in result.output
    result = CliRunner().invoke(app, ["export", "--run", "killed", "-o", tmp_path / "o.json"])
    assert result.exit_code == 0, result.output
    assert "unfinished (interrupted" in result.output
