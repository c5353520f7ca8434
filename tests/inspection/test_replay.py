"""Fork a finished sample at round 2 with another operator; the original branch stays."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.config import Settings
from mmevol.inspection.replay import ReplayProblem, parse_sets, replay_settings
from mmevol.inspection.trace import UnknownSample, trace_sample
from mmevol.run import runner
from mmevol.store.results import Store

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

    with Store(settings.results_db) as store:
        rounds = {
            (r["branch"], r["round"]): r["operator"] for r in store.rows("rounds", hash_id=HASH)
        }
    assert rounds[("fork1", 1)] == rounds[("main", 1)]
    assert rounds[("fork1", 2)] == new_op and rounds[("main", 2)] == original_op

    # A second replay makes fork2; adopting it makes the export use that fork.
    third_op = next(o for o in ("perceptual", "reasoning") if o != original_op)
    result = CliRunner().invoke(app, [*args[:-1], third_op])
    assert result.exit_code == 0, result.output
    assert "as fork2" in result.output
    assert f"mmevol replay {HASH} --run {settings.run} --adopt fork2" in result.output
    result = CliRunner().invoke(app, ["replay", HASH, "--run", settings.run, "--adopt", "fork2"])
    assert result.exit_code == 0, result.output
    assert "the export now uses fork2" in result.output
    adopted = exported(tmp_path, settings.run)
    assert adopted["conversations_v1"] == original_export["conversations_v1"]
    with Store(settings.results_db) as store:
        fork2_round2 = [
            json.loads(r["item"])
            for r in store.rows("items", hash_id=HASH, branch="fork2", round=2)
        ]
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


def kept_history_run(sim, demo_seed, make_settings, monkeypatch):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=1, keep_history=True)
    runner.run(settings, seed_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    steps = asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH))
    return settings, steps


def replay_cli(settings, *extra):
    return CliRunner().invoke(app, ["replay", HASH, "--run", settings.run, *map(str, extra)])


def branch_rows(settings, branch):
    with Store(settings.results_db) as store:
        return {
            table: store.count(table, hash_id=HASH, branch=branch)
            for table in ("rounds", "items", "dropped")
        }


def test_set_at_a_select_operator_step(sim, demo_seed, make_settings, monkeypatch):
    # Reported: "Missing required config key 'N/A'", and a half-made fork left behind.
    settings, before = kept_history_run(sim, demo_seed, make_settings, monkeypatch)
    step = next(s for s in before if s["round"] == 2 and s["node"] == "select_operator")
    result = replay_cli(settings, "--from", step["step"], "--set", "attempt=2")
    assert result.exit_code == 0, result.output
    assert "as fork1" in result.output
    fork = asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH, "fork1"))
    assert fork[: step["step"] - 1] == before[: step["step"] - 1]
    evolve = fork[step["step"]]
    assert evolve["node"] == "evolve" and evolve["round"] == 2 and evolve["attempt"] == 2
    assert asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH)) == before


def test_replay_from_step_one_leaves_main_alone(sim, demo_seed, make_settings, monkeypatch):
    # Reported: `--from 1` renumbered the main branch's trace steps, and the next replay
    # reused the fork's name.
    settings, before = kept_history_run(sim, demo_seed, make_settings, monkeypatch)
    for name in ("fork1", "fork2"):
        result = replay_cli(settings, "--from", 1, "--set", "attempt=2")
        assert result.exit_code == 0, result.output
        assert f"as {name}" in result.output
    assert asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH)) == before
    for name in ("fork1", "fork2"):
        fork = asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH, name))
        assert fork[0]["node"] == "select_operator" and fork[1]["attempt"] == 2
        assert len(fork) == len(before)
        assert branch_rows(settings, name)["rounds"] == 3


def test_failed_replay_leaves_nothing_half_made(sim, demo_seed, make_settings, monkeypatch):
    settings, before = kept_history_run(sim, demo_seed, make_settings, monkeypatch)
    step = next(s for s in before if s["round"] == 3 and s["node"] == "select_operator")
    sim.enqueue("status", status=400)  # the fork's first call is refused
    result = replay_cli(settings, "--from", step["step"], "--operator", "reasoning")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: the replay failed") and "nothing of fork1 was kept" in line
    assert branch_rows(settings, "fork1") == {"rounds": 0, "items": 0, "dropped": 0}
    with pytest.raises(UnknownSample):
        asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH, "fork1"))
    assert asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH)) == before
    # The refused call stays on record (it counts in the run's calls); the name is not reused.
    result = replay_cli(settings, "--from", step["step"], "--operator", "reasoning")
    assert result.exit_code == 0, result.output
    assert "as fork2" in result.output


def test_refused_replays_make_nothing(sim, demo_seed, make_settings, monkeypatch):
    settings, before = kept_history_run(sim, demo_seed, make_settings, monkeypatch)
    score = next(s for s in before if s["node"] == "score")
    result = replay_cli(settings, "--from", score["step"], "--set", "attempt=1")
    assert result.exit_code == 1
    assert f"step {score['step']} runs score" in result.output
    assert f"--from {score['step'] - 1}" in result.output
    assert branch_rows(settings, "fork1") == {"rounds": 0, "items": 0, "dropped": 0}
    result = replay_cli(settings)
    assert result.exit_code == 1 and "give --from STEP to fork, or --adopt BRANCH" in result.output


def test_adopt_an_existing_fork(sim, demo_seed, make_settings, monkeypatch, tmp_path):
    settings, before = kept_history_run(sim, demo_seed, make_settings, monkeypatch)
    original = exported(tmp_path, settings.run)
    step = next(s for s in before if s["round"] == 3 and s["node"] == "select_operator")
    result = replay_cli(settings, "--from", step["step"], "--operator", "interactive")
    assert result.exit_code == 0, result.output
    assert exported(tmp_path, settings.run) == original

    result = replay_cli(settings, "--adopt", "fork9")
    assert result.exit_code == 1
    assert "sample '0_shapes_000000.jpg' has no finished branch 'fork9'" in result.output
    assert "fork1" in result.output

    result = replay_cli(settings, "--adopt", "fork1")
    assert result.exit_code == 0, result.output
    assert "the export now uses fork1 for this sample" in result.output
    adopted = exported(tmp_path, settings.run)
    assert adopted["conversations_v1"] == original["conversations_v1"]
    assert adopted != original

    result = replay_cli(settings, "--adopt", "main")
    assert result.exit_code == 0, result.output
    assert exported(tmp_path, settings.run) == original


def test_replay_settings_read_a_run_recorded_with_several_endpoints(tmp_path):
    recorded = Settings(run="r", checkpoints=tmp_path, base_url=["http://a/v1", "http://b/v1"])
    with Store(tmp_path / "results.db") as store:
        store.set_meta("settings", recorded.public())
    again = replay_settings(tmp_path / "results.db", tmp_path, "r")
    assert again.base_urls == ("http://a/v1", "http://b/v1")
    only = replay_settings(tmp_path / "results.db", tmp_path, "r", base_url="http://c/v1")
    assert only.base_urls == ("http://c/v1",)


@pytest.mark.parametrize("node", ["validate", "eliminate"])
def test_replay_from_a_validate_or_eliminate_step_runs_the_fork_to_the_end(
    node, sim, demo_seed, make_settings, monkeypatch
):
    # validate and eliminate choose their next node as they run; a fork written before
    # them must still run them, then go on to the end. Found while testing this: a fork
    # before an eliminate step failed with "Missing required config key 'N/A' for
    # 'route_after_score'" (the state update ran the router, which needs the run's settings).
    settings, before = kept_history_run(sim, demo_seed, make_settings, monkeypatch)
    step = next(s for s in before if s["round"] == 2 and s["node"] == node)
    result = replay_cli(settings, "--from", step["step"], "--set", "caption=a fork")
    assert result.exit_code == 0, result.output
    fork = asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH, "fork1"))
    assert fork[: step["step"] - 1] == before[: step["step"] - 1]
    # Reported by a trial: the fork's trace showed the state update as an extra step
    # ("12 r1 a1 eliminate" before the real "13 r2 a1 eliminate"), renumbering the rest.
    assert [(s["step"], s["node"], s["round"]) for s in fork] == [
        (s["step"], s["node"], s["round"]) for s in before
    ]
    assert fork[step["step"] - 1]["checkpoint_id"] != before[step["step"] - 1]["checkpoint_id"]
    assert branch_rows(settings, "fork1")["rounds"] == 3
    assert asyncio.run(trace_sample(settings.graph_db, settings.results_db, HASH)) == before
