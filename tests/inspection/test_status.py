"""`mmevol status` after a run was killed: samples it had in flight show as interrupted."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.inspection.status import run_summary


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


def test_a_batch_row_costs_exactly_half_and_status_shows_batch_spend_and_cached_tokens(
    demo_run, tmp_path, monkeypatch
):
    from mmevol.runtime.prices import PriceTable
    from mmevol.store.results import Store

    with Store(demo_run.results_db) as store:
        answered = [r for r in store.rows("calls") if r["error"] is None]
    assert answered
    # The same answers recorded again as the Batch API's (as batch mode records them),
    # each with a share of cached prompt tokens, in a run of their own.
    path = tmp_path / "ck" / "copy" / "results.db"
    path.parent.mkdir(parents=True)
    shutil.copy(demo_run.results_db.parent / "graph.sqlite", path.parent)  # the run's pair
    fields = ("key", "hash_id", "branch", "round", "node", "attempt", "chunk", "model",
              "input_tokens", "output_tokens", "finish_reason", "response")  # fmt: skip
    with Store(path) as store:
        for row in answered:
            copy = {k: row[k] for k in fields} | {"cached_tokens": row["input_tokens"] // 3}
            store.log_call(copy)
            store.log_call(copy | {"batch": 1})
        online, batch = store.spent()["by_model"]
    assert (online["batch"], batch["batch"]) == (0, 1)
    assert {k: v for k, v in online.items() if k != "batch"} == {
        k: v for k, v in batch.items() if k != "batch"
    }
    prices = PriceTable()
    assert prices.row_cost(online) > 0
    assert prices.row_cost(batch) == prices.row_cost(online) / 2  # exactly half

    summary = run_summary(path)
    assert [r["batch"] for r in summary["models"]] == [0, 1]
    assert summary["batch_cost_usd"] == round(prices.row_cost(batch), 4)
    assert summary["cost_usd"] == round(prices.row_cost(online) + prices.row_cost(batch), 4)
    assert summary["cached_tokens"] == 2 * sum(r["input_tokens"] // 3 for r in answered)
    monkeypatch.setenv("MMEVOL_CHECKPOINTS", str(tmp_path / "ck"))
    result = CliRunner().invoke(app, ["status", "--run", "copy"])
    assert result.exit_code == 0, result.output
    assert f"(batch ${summary['batch_cost_usd']:.4f})" in result.output
    assert "cached" in result.output  # the models table has a cached_tokens column


def test_status_shows_the_http_status_and_message_of_endpoint_errors(
    sim, demo_seed, make_settings, monkeypatch
):
    # Issue 19.9: every call failed with a 404 and status showed only "http error".
    from mmevol.run import runner
    from mmevol.sim.errors import error_body

    seed_path, images = demo_seed
    sim.set_behaviour("status", status=404, body=error_body(404, "The model `x` does not exist"))
    settings = make_settings(sim, images, limit=2, max_retries=0)
    report = runner.run(settings, seed_path)
    assert report.interrupted == 2

    from mmevol.store.results import Store

    with Store(settings.results_db) as store:
        failed = [c for c in store.rows("calls") if c["error"]]
    (row,) = run_summary(settings.results_db)["errors"]
    assert row == {
        "node": "evolve",
        "endpoint": sim.base_url,
        "status": "HTTP 404 Not Found",
        "message": "The model `x` does not exist",
        "calls": len(failed),
    }
    monkeypatch.setenv("MMEVOL_CHECKPOINTS", str(settings.checkpoints))
    result = CliRunner().invoke(app, ["status", "--run", settings.run])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "endpoint errors" in text
    assert "HTTP 404 Not Found" in text and "does not exist" in text


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        ("NotFoundError: Error code: 404", "HTTP 404 Not Found", ""),
        (
            "InternalServerError: Error code: 500 - The server had an error",
            "HTTP 500 Internal Server Error",
            "The server had an error",
        ),
        (
            "RateLimitError: Error code: 429 - {'error': {'message': 'slow down', 'code': None}}",
            "HTTP 429 Too Many Requests",
            "slow down",
        ),
        ("APIConnectionError: Connection error.", "APIConnectionError", "Connection error."),
    ],
)
def test_describe_error_names_the_http_status_and_message(error, status, message):
    from mmevol.inspection.status import describe_error

    assert describe_error(error) == (status, message)
