"""Fork a finished sample at round 2 with another operator; the original branch stays."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph import runner
from mmevol.graph.replay import ReplayProblem, parse_sets
from mmevol.graph.store import Store
from mmevol.graph.trace import trace_sample

HASH = "0_shapes_000000.jpg"


def exported(tmp_path, run):
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["export", "--run", run, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())[0]


def test_replay_changes_round_two_operator(sim, demo_seed, make_settings, tmp_path, monkeypatch):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=1, keep_history=True)
    runner.run(settings, seed_path)
    before = asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH))
    step = next(s for s in before if s["round"] == 2 and s["node"] == "select_operator")
    original_op = next(s for s in before if s["round"] == 2 and s["node"] == "evolve")["operator"]
    new_op = "interactive" if original_op != "interactive" else "reasoning"
    original_export = exported(tmp_path, settings.run)
    calls_before = sim.stats()["requests"]

    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    args = [
        "replay",
        HASH,
        "--run",
        settings.run,
        "--from",
        str(step["step"]),
        "--operator",
        new_op,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"forked {HASH} from step {step['step']} of main as fork1" in result.output
    assert "round 1: unchanged" in result.output  # the fork starts in round 2
    assert f"round 2: operator {original_op} -> {new_op}" in result.output
    assert sim.stats()["requests"] > calls_before  # the rest ran with real calls

    # The original branch is kept as it was, and the export still uses it.
    after = asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH))
    assert after == before
    assert exported(tmp_path, settings.run) == original_export
    fork = asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH, "fork1"))
    assert fork[: step["step"] - 1] == before[: step["step"] - 1]
    assert next(s for s in fork if s["round"] == 2 and s["node"] == "evolve")["operator"] == new_op

    store = Store(settings.results_db)
    rounds = {
        (r["branch"], r["round"]): r["operator"]
        for r in store.db.query("select * from rounds where hash_id = ?", [HASH])
    }
    store.close()
    assert rounds[("fork1", 1)] == rounds[("main", 1)]
    assert rounds[("fork1", 2)] == new_op and rounds[("main", 2)] == original_op

    # A second replay with --adopt makes the export use that fork.
    third_op = next(o for o in ("perceptual", "reasoning") if o != original_op)
    result = CliRunner().invoke(app, [*args[:-1], third_op, "--adopt"])
    assert result.exit_code == 0, result.output
    assert "as fork2" in result.output and "the export now uses fork2" in result.output
    adopted = exported(tmp_path, settings.run)
    assert adopted["conversations_v1"] == original_export["conversations_v1"]
    store = Store(settings.results_db)
    fork2_round2 = [
        json.loads(r["item"])
        for r in store.db.query(
            "select item from items where hash_id = ? and branch = 'fork2' and round = 2"
            " order by position",
            [HASH],
        )
    ]
    store.close()
    assert adopted["conversations_v2"] == fork2_round2


def test_replay_refuses_bad_requests(sim, demo_seed, make_settings, monkeypatch):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=1, keep_history=True)
    runner.run(settings, seed_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    base = ["replay", HASH, "--run", settings.run]
    cases = [
        (["--from", "999"], "--from must be a step number from 1 to"),
        (["--from", "3", "--operator", "interactive"], "--operator needs a step where"),
        (["--from", "1", "--operator", "bogus"], "--operator must be one of"),
        (["--from", "1", "--set", "nope=1"], "the state has no field 'nope'"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 1, result.output
        assert message in result.output


def test_replay_of_a_compacted_sample_says_why(sim, demo_seed, make_settings, monkeypatch):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=1)
    runner.run(settings, seed_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    result = CliRunner().invoke(app, ["replay", HASH, "--run", settings.run, "--from", "1"])
    assert result.exit_code == 1
    assert "compacted unless the run used --keep-history" in result.output


def test_parse_sets():
    assert parse_sets(["attempt=2", "caption=a red car", "problem=null"]) == {
        "attempt": 2,
        "caption": "a red car",
        "problem": None,
    }
    with pytest.raises(ReplayProblem, match="cannot be changed"):
        parse_sets(["rounds=[]"])
