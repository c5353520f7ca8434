"""The command line, driven through typer's CliRunner against the simulated endpoint."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmevol.cli import app

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def test_every_command_has_help_text():
    for command in app.registered_commands:
        assert command.callback.__doc__, command.name
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for name in ("run", "status", "export", "serve-sim", "demo"):
        assert name in result.output


def test_run_status_export(sim, demo_seed, tmp_path):
    seed_path, images = demo_seed
    env = {"OPENAI_API_KEY": "sim"}
    result = invoke(
        "run", seed_path, "--images", images, "--run", "cli", "--limit", 3,
        "--base-url", sim.base_url, "--concurrency", 2, env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "run 'cli': 3 done, 0 failed, 0 skipped" in result.output

    result = invoke("status", "--run", "cli", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["samples"] == {"done": 3}
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert {c["node"] for c in summary["calls"]} == {"evolve", "score"}

    result = invoke("status", "--run", "cli")
    assert result.exit_code == 0 and "samples done 3" in result.output

    out = tmp_path / "out.json"
    result = invoke("export", "--run", "cli", "-o", out)
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())) == 3


def test_missing_key_is_one_line(demo_seed, sim):
    seed_path, images = demo_seed
    result = invoke("run", seed_path, "--images", images, "--base-url", sim.base_url)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: OPENAI_API_KEY is not set. Export it (any value, e.g. EMPTY, for a local vLLM "
        "or SGLang server) and run again."
    ]


def test_unknown_run_and_missing_seed(tmp_path):
    result = invoke("status", "--run", "nope")
    assert result.exit_code == 1
    assert "Error: no run named 'nope' under" in result.output
    result = invoke("run", tmp_path / "missing.jsonl", env={"OPENAI_API_KEY": "x"})
    assert result.exit_code == 1
    assert "Error: seed" in result.output and "does not exist" in result.output


@pytest.mark.parametrize(("option", "value"), [("--rounds", 0), ("--concurrency", 0)])
def test_bad_option_values(option, value, demo_seed):
    seed_path, images = demo_seed
    result = invoke("run", seed_path, option, value, env={"OPENAI_API_KEY": "x"})
    assert result.exit_code == 1
    assert "must be at least 1" in result.output


def test_demo(tmp_path):
    result = invoke("demo", "--samples", 4, "--checkpoints", tmp_path / "ck")
    assert result.exit_code == 0, result.output
    assert "demo: 4 samples evolved, 0 failed" in result.output
    exported = json.loads((tmp_path / "ck" / "demo" / "evolved.json").read_text())
    assert len(exported) == 4
    assert all("conversations_v3" in s for s in exported)
