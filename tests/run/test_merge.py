"""Shard runs (``--shard I/N``) merged into one run, over real HTTP against the sim."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.config import Settings
from mmevol.inspection.trace import trace_sample
from mmevol.run import runner
from mmevol.run.merge import MergeProblem, merge
from mmevol.run.runfolder import RunBusy, RunLock
from mmevol.sim.demo_seed import make_demo_seed
from mmevol.sim.server import SimOptions, SimServer
from mmevol.store.results import Store

cli = CliRunner()


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sharded(demo_seed, tmp_path_factory):
    """One unsharded run of ``demo_seed`` and its 3 shards, each run on its own.

    Shard 2 reads a copy of the seed at another path (as on another machine) with other
    limits; shard 3 runs with two worker processes. Read-only for tests: copy to change.
    """
    seed_path, images = demo_seed
    tmp = tmp_path_factory.mktemp("sharded")
    elsewhere = tmp / "elsewhere" / "seed.jsonl"
    elsewhere.parent.mkdir()
    shutil.copy(seed_path, elsewhere)
    checkpoints = tmp / "runs"
    with SimServer(SimOptions(seed=0)) as server:

        def settings(run, **extra):
            values = dict(
                run=run, checkpoints=checkpoints, images=images, base_url=server.base_url,
                api_key="sim", concurrency=4, seed=5,
            )  # fmt: skip
            return Settings(**{**values, **extra})

        whole = runner.run(settings("whole"), seed_path)
        assert (whole.done, whole.failed) == (8, 4)
        reports = [
            runner.run(settings("s1", shard="1/3"), seed_path),
            runner.run(settings("s2", shard="2/3", concurrency=2, rpm=6000.0), elsewhere),
            runner.run(settings("s3", shard="3/3", workers=2), seed_path),
        ]
    # Every row, good or bad, ran in exactly one shard.
    assert sum(r.done for r in reports) == 8 and sum(r.failed for r in reports) == 4
    assert all(r.done + r.failed for r in reports)
    return checkpoints


def shard_dirs(checkpoints: Path, *names: str) -> list[Path]:
    return [checkpoints / n for n in names or ("s1", "s2", "s3")]


def exported(checkpoints: Path, run: str, tmp_path: Path, *options) -> bytes:
    out = tmp_path / f"{run}-{'-'.join(map(str, options)) or 'authors'}.json"
    result = invoke("export", "--run", run, "--checkpoints", checkpoints, "-o", out, *options)
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def without_call_ids(steps: list[dict]) -> list[dict]:
    return [
        {**step, "calls": [{k: v for k, v in c.items() if k != "id"} for c in step["calls"]]}
        for step in steps
    ]


def without_latency(summary: dict) -> dict:
    return {
        **summary,
        **{
            table: [{k: v for k, v in c.items() if k != "mean_latency_ms"} for c in summary[table]]
            for table in ("calls", "endpoints")
        },
    }


def test_three_shards_merged_export_what_one_run_exports(sharded, tmp_path):
    result = invoke("merge", "--run", "merged", "--checkpoints", sharded, *shard_dirs(sharded))
    assert result.exit_code == 0, result.output
    assert "shards 1, 2, 3 of 3 merged; missing: none" in result.output
    for options in ((), ("--format", "llava"), ("--format", "sharegpt")):
        assert exported(sharded, "merged", tmp_path, *options) == exported(
            sharded, "whole", tmp_path, *options
        )
    with (
        Store(sharded / "merged" / "results.db") as merged,
        Store(sharded / "whole" / "results.db") as whole,
    ):
        # Every sample keeps its seed index; calls are all there, under new ids.
        pick = ("hash_id", "idx", "status", "reason", "rounds_done", "seed")
        assert [{k: r[k] for k in pick} for r in merged.rows("samples")] == [
            {k: r[k] for k in pick} for r in whole.rows("samples")
        ]
        assert merged.count("calls") == whole.count("calls")
        assert len({r["id"] for r in merged.rows("calls")}) == merged.count("calls")
        assert merged.count("dropped") == whole.count("dropped")
        meta = merged.get_meta("merge")
    assert meta["of"] == 3 and sorted(s["shard"] for s in meta["sources"].values()) == [
        "1/3",
        "2/3",
        "3/3",
    ]


def test_status_stats_and_report_read_a_merged_run(sharded, tmp_path):
    assert merge("readers", sharded, shard_dirs(sharded)).missing == []
    status = invoke("status", "--run", "readers", "--checkpoints", sharded, "--json")
    assert status.exit_code == 0, status.output
    whole = invoke("status", "--run", "whole", "--checkpoints", sharded, "--json")
    # The same figures (latencies are the shards' own, measured on other runs).
    assert without_latency(json.loads(status.output)) == without_latency(json.loads(whole.output))
    stats = invoke("stats", "--run", "readers", "--checkpoints", sharded, "--json")
    assert stats.exit_code == 0, stats.output
    whole_stats = invoke("stats", "--run", "whole", "--checkpoints", sharded, "--json")
    mine, theirs = json.loads(stats.output), json.loads(whole_stats.output)
    assert {k: v for k, v in mine.items() if k != "run"} == {
        k: v for k, v in theirs.items() if k != "run"
    }
    report = invoke(
        "report", "--run", "readers", "--checkpoints", sharded, "-o", tmp_path / "r.html"
    )
    assert report.exit_code == 0, report.output
    assert "12 samples (8 with their image)" in " ".join(report.output.split())
    plots = invoke("stats", "--run", "readers", "--checkpoints", sharded, "--plots", tmp_path)
    assert plots.exit_code == 0, plots.output
    assert sorted(p.suffix for p in tmp_path.glob("*.png")) and "wrote" in plots.output


def test_merging_again_adds_new_shards_and_nothing_twice(sharded):
    first = merge("growing", sharded, shard_dirs(sharded, "s1"))
    assert (first.merged, first.missing) == ([1], [2, 3])
    again = merge("growing", sharded, shard_dirs(sharded, "s1", "s2"))
    assert [(f.shard, f.added, f.updated, f.unchanged) for f in again.folders] == [
        ("1/3", 0, 0, 5),
        ("2/3", 0 + again.folders[1].samples, 0, 0),
    ]
    assert again.missing == [3]
    merge("growing", sharded, shard_dirs(sharded))
    merge("growing", sharded, shard_dirs(sharded))  # a shard merged twice adds nothing
    with (
        Store(sharded / "growing" / "results.db") as merged,
        Store(sharded / "whole" / "results.db") as whole,
    ):
        for table in ("samples", "rounds", "items", "dropped", "calls"):
            assert merged.count(table) == whole.count(table), table


def test_overlapping_shards_are_refused_and_nothing_is_written(sharded, tmp_path):
    copy = tmp_path / "s1-again"
    shutil.copytree(sharded / "s1", copy)
    result = invoke("merge", "--run", "overlap", "--checkpoints", tmp_path, sharded / "s1", copy)
    assert result.exit_code == 1
    assert "both hold sample" in result.output and "overlap" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "overlap").exists()
    # The same shard run again in another folder (its own run id), against the target.
    merge("target", tmp_path, [sharded / "s1"])
    with Store(copy / "results.db") as store:
        store.set_meta("run_id", "another-run")
    before = (tmp_path / "target" / "results.db").read_bytes()
    with pytest.raises(MergeProblem, match="already holds from .*s1: they overlap"):
        merge("target", tmp_path, [copy])
    assert (tmp_path / "target" / "results.db").read_bytes() == before
    # An unsharded run overlaps every shard: refused as another split.
    with pytest.raises(MergeProblem, match="the same N"):
        merge("mixed", tmp_path, [sharded / "s1", sharded / "whole"])


def test_a_shard_of_another_seed_is_refused(sharded, tmp_path, sim, make_settings):
    other_seed, images = make_demo_seed(tmp_path / "other", n=3, seed=11)
    settings = make_settings(sim, images, run="foreign", shard="2/3", checkpoints=tmp_path)
    runner.run(settings, other_seed)
    result = invoke(
        "merge", "--run", "m", "--checkpoints", tmp_path, sharded / "s1", tmp_path / "foreign"
    )
    assert result.exit_code == 1
    assert "ran another seed" in result.output and "only shards of one seed merge" in result.output
    assert not (tmp_path / "m").exists()


def test_settings_that_change_results_are_refused(sharded, tmp_path):
    copy = tmp_path / "s2-other-model"
    shutil.copytree(sharded / "s2", copy)
    with Store(copy / "results.db") as store:
        settings = store.get_meta("settings")
        store.set_meta("settings", {**settings, "model": "gpt-4o", "temperature": 0.2})
    with pytest.raises(MergeProblem) as problem:
        merge("m", tmp_path, [sharded / "s1", copy])
    assert "--model 'gpt-4o-mini' vs 'gpt-4o'" in str(problem.value)
    assert "--temperature 1.0 vs 0.2" in str(problem.value)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("damage", ["random_bytes", "truncated", "graph_truncated"])
def test_a_shard_with_a_malformed_database_is_one_line_writing_nothing(damage, sharded, tmp_path):
    """Item 12 of issue 19: a damaged shard database was a traceback."""
    import random

    copy = tmp_path / "s2-damaged"
    shutil.copytree(sharded / "s2", copy)
    name = "graph.sqlite" if damage == "graph_truncated" else "results.db"
    for suffix in ("-wal", "-shm"):
        (copy / f"{name}{suffix}").unlink(missing_ok=True)
    data = (copy / name).read_bytes()
    if damage == "random_bytes":
        data = random.Random(1).randbytes(len(data))
    else:  # its SQLite header intact, its second half gone
        data = data[: len(data) // 2]
    (copy / name).write_bytes(data)
    result = invoke("merge", "--run", "m", "--checkpoints", tmp_path, sharded / "s1", copy)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(copy / name) in lines[0], result.output
    assert not (tmp_path / "m").exists()


def test_folders_that_are_not_runs_or_are_busy_are_refused(sharded, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("merge", "--run", "m", "--checkpoints", tmp_path, tmp_path / "empty")
    assert result.exit_code == 1 and "is not a run folder" in result.output
    copy = tmp_path / "busy"
    shutil.copytree(sharded / "s3", copy)
    with RunLock(copy):
        result = invoke("merge", "--run", "m", "--checkpoints", tmp_path, copy)
        assert result.exit_code == 5, result.output
        assert "is being written by pid" in result.output
        with pytest.raises(RunBusy):
            merge("m", tmp_path, [copy])
    assert not (tmp_path / "m").exists()
    # A run of its own is not a merge target.
    result = invoke("merge", "--run", "whole", "--checkpoints", sharded, sharded / "s1")
    assert result.exit_code == 1 and "was not made by mmevol merge" in result.output


def test_a_shard_killed_and_resumed_then_merged(
    seed16, reference16, sim_factory, tmp_path, cli_run, wait_for_requests
):
    seed_path, images = seed16
    expected, _ = reference16
    server = sim_factory(seed=0, latency_ms=40)
    runs = tmp_path / "runs"
    for i in (1, 2):
        proc = cli_run(seed_path, images, server, runs, f"s{i}", "--shard", f"{i}/3")
        assert proc.wait(timeout=120) == 0, proc.communicate()
    # Shard 3 is killed mid-run, keeping every step's checkpoint (for the trace below).
    proc = cli_run(seed_path, images, server, runs, "s3", "--shard", "3/3", "--keep-history")
    wait_for_requests(server, proc, server.stats()["requests"] + 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = invoke("merge", "--run", "m", "--checkpoints", runs, *shard_dirs(runs))
    assert result.exit_code == 0, result.output
    with Store(runs / "m" / "results.db") as store:
        unfinished = [h for h, s in store.statuses().items() if s == "running"]
    assert unfinished
    status = json.loads(invoke("status", "--run", "m", "--checkpoints", runs, "--json").output)
    assert status["samples"].get("interrupted") == len(unfinished)
    # The trace of an interrupted sample shows its own calls, answers included.
    for hash_id in unfinished:
        there = asyncio.run(
            trace_sample(
                runs / "s3" / "graph.sqlite", runs / "s3" / "results.db", hash_id, raw=True
            )
        )
        here = asyncio.run(
            trace_sample(runs / "m" / "graph.sqlite", runs / "m" / "results.db", hash_id, raw=True)
        )
        assert without_call_ids(here) == without_call_ids(there)
        ids = [c["id"] for step in here for c in step["calls"]]
        assert ids
        with Store(runs / "m" / "results.db") as store:
            assert {store.get_call(i)["hash_id"] for i in ids} == {hash_id}
    shown = invoke("trace", unfinished[0], "--run", "m", "--checkpoints", runs)
    assert shown.exit_code == 0 and "evolve" in shown.output
    # Resumed to the end, then merged again: the export is that of one uninterrupted run.
    proc = cli_run(seed_path, images, server, runs, "s3", "--shard", "3/3", "--keep-history")
    assert proc.wait(timeout=120) == 0, proc.communicate()
    again = merge("m", runs, shard_dirs(runs))
    assert again.folders[2].updated == len(unfinished)
    assert json.loads(exported(runs, "m", tmp_path)) == expected
