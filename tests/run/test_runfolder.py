"""One writer per run folder, and databases that belong together (run/runfolder.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.run import runner
from mmevol.run.runfolder import RunBusy, RunFolderProblem, RunLock, check_databases

cli = CliRunner()


def invoke(*args, env=None):
    return cli.invoke(app, [str(a) for a in args], env=env)


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


# -- the lock ---------------------------------------------------------------------------------


def test_a_second_holder_is_refused_with_the_holder_named(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunBusy) as caught:
            RunLock(tmp_path / "run").acquire()
    text = str(caught.value)
    assert f"pid {os.getpid()}" in text and socket.gethostname() in text
    assert "started" in text and "command" in text
    # Released: the next holder gets it without any notice of a stale lock.
    notices = []
    with RunLock(tmp_path / "run", on_notice=notices.append):
        pass
    assert notices == []


def test_a_dead_holders_lock_is_taken_over_with_a_notice(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            textwrap.dedent(f"""
                import sys, time
                from mmevol.run.runfolder import RunLock
                lock = RunLock({str(tmp_path / "run")!r}).acquire()
                print("held", flush=True)
                time.sleep(60)
            """),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunBusy, match=f"pid {holder.pid}"):
        RunLock(tmp_path / "run").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    notices = []
    with RunLock(tmp_path / "run", on_notice=notices.append):
        pass
    assert len(notices) == 1 and f"pid {holder.pid}" in notices[0]
    assert "no longer running" in notices[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_two_runs_at_once_the_second_refuses(
    workers, sim_factory, seed16, reference16, cli_run, wait_for_requests, tmp_path
):
    """The bug: two `mmevol run` on one run paid every call twice (or hit 'database is locked')."""
    seed_path, images = seed16
    server = sim_factory(seed=0, latency_ms=40)
    checkpoints = tmp_path / "checkpoints"
    first = cli_run(seed_path, images, server, checkpoints, "twice", "--workers", str(workers))
    wait_for_requests(server, first, 5)
    env = {"OPENAI_API_KEY": "sim", "MMEVOL_CHECKPOINTS": str(checkpoints)}
    second = invoke(
        "run", seed_path, "--images", images, "--run", "twice", "--base-url", server.base_url,
        env=env,
    )  # fmt: skip
    assert second.exit_code == 5, second.output
    line = one_line(second)
    assert f"pid {first.pid}" in line and "mmevol run" in line
    # Reading commands still work while the run holds the lock.
    assert invoke("status", "--run", "twice", "--json", env=env).exit_code == 0
    out = tmp_path / "partial.json"
    assert invoke("export", "--run", "twice", "-o", out, env=env).exit_code == 0
    # replay writes: it waits its turn like a run.
    replayed = invoke(
        "replay", "x", "--from", 1, "--run", "twice", "--base-url", server.base_url, env=env
    )
    assert replayed.exit_code == 5 and f"pid {first.pid}" in one_line(replayed)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert server.stats()["requests"] == reference16[1]


# -- databases that belong together ----------------------------------------------------------


@pytest.fixture
def finished_run(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, run="done", limit=2)
    assert runner.run(settings, seed_path).done == 2
    return settings, seed_path


def _run_again(settings, seed_path, sim):
    env = {"OPENAI_API_KEY": "sim", "MMEVOL_CHECKPOINTS": str(settings.checkpoints)}
    before = sim.stats()["requests"]
    result = invoke(
        "run", seed_path, "--images", settings.images, "--run", settings.run, "--limit", 2,
        "--base-url", sim.base_url, env=env,
    )  # fmt: skip
    assert sim.stats()["requests"] == before, "a broken run folder must cost nothing"
    return result


def test_an_empty_results_db_is_an_error_not_a_new_run(finished_run, sim):
    settings, seed_path = finished_run
    settings.results_db.write_bytes(b"")
    result = _run_again(settings, seed_path, sim)
    assert result.exit_code == 1
    assert "results.db" in one_line(result) and "empty" in one_line(result)


def test_a_missing_results_db_next_to_checkpoints_is_an_error(finished_run, sim):
    settings, seed_path = finished_run
    settings.results_db.unlink()
    result = _run_again(settings, seed_path, sim)
    assert result.exit_code == 1
    assert "results.db is missing" in one_line(result)


def test_a_missing_graph_db_next_to_paid_calls_is_an_error(finished_run, sim):
    settings, seed_path = finished_run
    settings.graph_db.unlink()
    result = _run_again(settings, seed_path, sim)
    assert result.exit_code == 1
    assert "graph.sqlite is missing" in one_line(result)


@pytest.mark.parametrize("name", ["results.db", "graph.sqlite"])
def test_a_corrupt_database_is_one_line_for_every_command(name, finished_run, sim, tmp_path):
    settings, seed_path = finished_run
    (settings.run_dir / name).write_bytes(b"\x00garbage, not a database" * 100)
    result = _run_again(settings, seed_path, sim)
    assert result.exit_code == 1
    assert name in one_line(result) and "not a SQLite database" in one_line(result)
    env = {"MMEVOL_CHECKPOINTS": str(settings.checkpoints)}
    for args in (
        ("status", "--run", "done"),
        ("export", "--run", "done", "-o", tmp_path / "x.json"),
        ("trace", "x", "--run", "done"),
    ):
        result = invoke(*args, env=env)
        assert result.exit_code == 1, (args, result.output)
        assert name in one_line(result), args
    assert not (tmp_path / "x.json").exists()


def test_a_results_db_deeper_corruption_is_refused_by_the_store(finished_run):
    settings, _ = finished_run
    data = bytearray(settings.results_db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # a valid header, a ruined first page
    settings.results_db.write_bytes(bytes(data))
    (settings.run_dir / "results.db-wal").unlink(missing_ok=True)
    (settings.run_dir / "results.db-shm").unlink(missing_ok=True)
    from mmevol.store.results import Store

    with pytest.raises(ValueError, match="results.db"):
        Store(settings.results_db)


def test_a_fresh_folder_and_a_results_db_without_calls_are_fine(tmp_path):
    check_databases(tmp_path / "new")
    (tmp_path / "new").mkdir()
    check_databases(tmp_path / "new")
    from mmevol.store.results import Store

    with Store(tmp_path / "new" / "results.db"):
        pass  # created, nothing paid, no checkpoints yet
    check_databases(tmp_path / "new")
    (tmp_path / "new" / "results.db").write_bytes(b"")
    with pytest.raises(RunFolderProblem, match="empty"):
        check_databases(tmp_path / "new")


def test_budget_spent_stops_before_any_call(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, run="budget", max_calls=3)
    first = runner.run(settings, seed_path)
    assert first.stop.kind == "max_calls" and "--max-calls" in first.stop.message
    before = sim.stats()["requests"]
    again = runner.run(settings, seed_path)
    assert again.stop.kind == "max_calls" and "--max-calls" in again.stop.message
    assert again.done == again.interrupted == 0
    assert sim.stats()["requests"] == before
    assert json.loads(json.dumps(again.failures)) == []


def test_a_run_killed_outright_leaves_a_lock_the_next_run_takes_over(
    sim, seed16, reference16, cli_run, wait_for_requests, tmp_path
):
    seed_path, images = seed16
    checkpoints = tmp_path / "checkpoints"
    first = cli_run(seed_path, images, sim, checkpoints, "killed")
    wait_for_requests(sim, first, 10)
    first.kill()
    first.communicate()
    again = cli_run(seed_path, images, sim, checkpoints, "killed")
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"took over the run lock of pid {first.pid}" in stderr
    assert "no longer running" in stderr
    out = tmp_path / "out.json"
    env = {"MMEVOL_CHECKPOINTS": str(checkpoints)}
    assert invoke("export", "--run", "killed", "-o", out, env=env).exit_code == 0
    assert json.loads(out.read_text()) == reference16[0]


# -- a checkpoint file a kill left unwritten is new, not lost (issue 19, item 11) -------------


def _unwritten_graph(path, how):
    """Leave ``graph.sqlite`` as a kill during start-up may: nothing checkpointed in it."""
    import asyncio
    import sqlite3

    from mmevol.graph.checkpoints import open_checkpointer

    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "no_tables":
        conn = sqlite3.connect(path)
        conn.execute("pragma journal_mode=wal")
        conn.close()
    else:  # "no_rows": its tables created, no checkpoint yet

        async def create():
            async with open_checkpointer(path) as saver:
                saver.setup()

        asyncio.run(create())


@pytest.mark.parametrize("how", ["zero_bytes", "no_tables"])
def test_a_checkpoint_file_never_written_is_a_new_run_not_a_lost_one(
    how, sim, demo_seed, make_settings
):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, run="fresh", limit=2)
    _unwritten_graph(settings.graph_db, how)
    check_databases(settings.run_dir)  # no RunFolderProblem
    assert runner.run(settings, seed_path).done == 2


def test_an_empty_checkpoint_file_next_to_paid_calls_is_still_refused(finished_run, sim):
    settings, seed_path = finished_run
    for suffix in ("", "-wal", "-shm"):
        (settings.run_dir / f"graph.sqlite{suffix}").unlink(missing_ok=True)
    _unwritten_graph(settings.graph_db, "zero_bytes")
    result = _run_again(settings, seed_path, sim)
    assert result.exit_code == 1
    assert "graph.sqlite" in one_line(result) and "paid calls" in one_line(result)
