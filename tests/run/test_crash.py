"""Kill, stop and resume runs in a real subprocess, over real HTTP to the simulated endpoint."""

from __future__ import annotations

import json
import random
import shutil
import signal

from mmevol.outputs.authors import export_json
from mmevol.run import runner
from mmevol.sim.demo_seed import make_demo_seed
from mmevol.store.results import Store

CONCURRENCY = 4


def exported(settings_dir, tmp_path, name):
    out = tmp_path / f"{name}.json"
    export_json(settings_dir / "results.db", out)
    return json.loads(out.read_text())


def repeated_calls(server):
    return sum(n - 1 for n in server.stats()["bodies"].values())


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(
    seed16, reference16, sim_factory, tmp_path, cli_run, wait_for_requests
):
    seed_path, images = seed16
    expected, reference_calls = reference16
    server = sim_factory(seed=0, latency_ms=40)
    checkpoints = tmp_path / "ck"
    rng = random.Random(1)
    kills = 0
    for _ in range(4):
        proc = cli_run(seed_path, images, server, checkpoints, "killed")
        target = server.stats()["requests"] + rng.randint(3, 25)
        try:
            wait_for_requests(server, proc, target)
        except AssertionError:
            # The run finished before this kill point: nothing left to interrupt.
            proc.communicate()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 2
    proc = cli_run(seed_path, images, server, checkpoints, "killed")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert exported(checkpoints / "killed", tmp_path, "killed") == expected
    # At most the calls in flight at each kill were paid twice (a sample has up to 3 chunks).
    repeats = repeated_calls(server)
    assert repeats <= kills * CONCURRENCY * 3
    assert server.stats()["requests"] == reference_calls + repeats
    with Store(checkpoints / "killed" / "results.db") as store:
        assert store.statuses() == dict.fromkeys(store.statuses(), "done")
        assert len(store.statuses()) == 16


def test_ctrl_c_stops_cleanly_and_resumes_without_paying_twice(
    seed16, reference16, sim_factory, tmp_path, cli_run, wait_for_requests
):
    seed_path, images = seed16
    expected, reference_calls = reference16
    server = sim_factory(seed=0, latency_ms=60)
    checkpoints = tmp_path / "ck"
    proc = cli_run(seed_path, images, server, checkpoints, "stopped")
    wait_for_requests(server, proc, 12)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Stopping (interrupted by a signal): no new sample or call starts" in stderr
    assert "run the same command again to resume" in stderr
    with Store(checkpoints / "stopped" / "results.db") as store:
        statuses = set(store.statuses().values())
    assert "interrupted" in statuses and "failed" not in statuses

    proc = cli_run(seed_path, images, server, checkpoints, "stopped")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert exported(checkpoints / "stopped", tmp_path, "stopped") == expected
    # Every answer that was on its way at the stop was recorded: nothing paid twice.
    assert repeated_calls(server) == 0
    assert server.stats()["requests"] == reference_calls


def test_retry_failed_after_fixing_the_image(sim, make_settings, tmp_path):
    seed_path, images = make_demo_seed(tmp_path / "s", n=3, seed=2)
    hidden = images / "shapes" / "000001.jpg"
    moved = tmp_path / "moved.jpg"
    shutil.move(hidden, moved)
    settings = make_settings(sim, images)
    report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (2, 1)
    shutil.move(moved, hidden)
    again = runner.run(settings, seed_path)
    assert (again.done, again.failed, again.skipped) == (0, 0, 3)
    retried = runner.run(settings, seed_path, retry_failed=True)
    assert (retried.done, retried.skipped) == (1, 2)
