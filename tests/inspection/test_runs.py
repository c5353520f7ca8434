"""`mmevol runs` lists the runs of a checkpoints folder; a missing run names those that exist."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.inspection.runs import list_runs
from mmevol.run import runner


def test_runs_lists_each_run_with_its_state(demo_run, sim, demo_seed, make_settings, tmp_path):
    # Issue 19.13: there was no way to see which runs a checkpoints folder holds.
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(demo_run.run_dir, checkpoints / "finished")
    seed_path, images = demo_seed
    sim.set_behaviour("status", status=503)
    settings = make_settings(sim, images, run="stopped", limit=2, max_retries=0)
    assert runner.run(settings, seed_path).interrupted == 2
    (checkpoints / "not-a-run").mkdir()

    rows = [
        (r.run, r.samples, r.done, r.failed, r.interrupted, r.live) for r in list_runs(checkpoints)
    ]
    assert rows == [("finished", 12, 8, 4, 0, False), ("stopped", 2, 0, 0, 2, False)]

    result = CliRunner().invoke(app, ["runs", "--checkpoints", str(checkpoints), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [r["run"] for r in shown] == ["finished", "stopped"]
    assert shown[1] == {
        "run": "stopped", "samples": 2, "done": 0, "failed": 0, "interrupted": 2,
        "other": 0, "live": False, "path": str(checkpoints.resolve() / "stopped"),
    }  # fmt: skip
    result = CliRunner().invoke(app, ["runs", "--checkpoints", str(checkpoints)])
    assert result.exit_code == 0, result.output
    assert "finished" in result.output and "stopped" in result.output


def test_runs_of_an_empty_or_missing_folder(tmp_path):
    result = CliRunner().invoke(app, ["runs", "--checkpoints", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    assert result.output == f"no runs under {tmp_path / 'none'}\n"


def test_a_missing_run_is_named_with_its_absolute_path_and_the_runs_there(
    demo_run, tmp_path, monkeypatch
):
    # Issue 19.13: "no run named 'x' under 'checkpoints'" named neither where nor what exists.
    checkpoints = tmp_path / "ck"
    shutil.copytree(demo_run.run_dir, checkpoints / "demo")
    monkeypatch.chdir(tmp_path)
    for command in ("status", "stats", "trace"):
        args = [command, *(["some-hash"] if command == "trace" else []), "--run", "dmeo"]
        result = CliRunner().invoke(app, [*args, "--checkpoints", "ck"])
        assert result.exit_code == 1, result.output
        assert " ".join(result.output.split()) == (
            f"Error: no run named 'dmeo' under {checkpoints}; runs there: demo"
            " (mmevol runs lists them)"
        )
    result = CliRunner().invoke(app, ["status", "--checkpoints", "elsewhere"])
    assert " ".join(result.output.split()) == (
        f"Error: no run named 'default' under {tmp_path / 'elsewhere'}; there are no runs there"
        " (give --checkpoints or set MMEVOL_CHECKPOINTS to the folder of runs)"
    )
