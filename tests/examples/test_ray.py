"""examples/ray/evolve.py on a local Ray instance (2 CPUs) against the simulated endpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mmevol.outputs.authors import export_json

pytest.importorskip(
    "ray", reason="ray is not installed: pip install 'mmevol[ray]' to test examples/ray"
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "ray" / "evolve.py"


def shard_processes(checkpoints: Path) -> dict[int, str]:
    """Return {pid: "I/N"} of the `mmevol run --shard` processes writing under checkpoints."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[1:4] == ["-m", "mmevol", "run"] and str(checkpoints) in argv and "--shard" in argv:
            found[int(entry.name)] = argv[argv.index("--shard") + 1]
    return found


def test_shards_as_ray_tasks_with_a_killed_one_retried_merge_into_the_unsharded_export(
    tmp_path, seed16, reference16, sim_factory
):
    seed_path, images = seed16
    sim = sim_factory(seed=0, latency_ms=150)
    checkpoints = tmp_path / "checkpoints"
    # Ray's session folder (sockets, logs), removed after; short: a socket path has a limit.
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    env = {
        **os.environ, "OPENAI_API_KEY": "sim", "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": ray_tmp, "RAY_DEDUP_LOGS": "0",  # every retry's line, not "repeated 2x"
    }  # fmt: skip
    proc = subprocess.Popen(
        [
            sys.executable, str(SCRIPT), str(seed_path), "--images", str(images),
            "--run", "evol", "--shards", "3", "--base-url", sim.base_url,
            "--checkpoints", str(checkpoints), "--num-cpus", "2", "--max-retries", "2",
            "--", "--concurrency", "2",
        ],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # Kill one shard's `mmevol run` once the shards are calling: Ray runs it again.
        deadline = time.monotonic() + 120
        killed = None
        while killed is None:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no shard process seen calling the endpoint"
            if sim.stats()["requests"] >= 4:
                for pid, shard in shard_processes(checkpoints).items():
                    os.kill(pid, signal.SIGKILL)
                    killed = shard
                    break
            time.sleep(0.02)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, output
    assert f"shard {killed}: mmevol run exited -9; Ray runs it again (it resumes)" in output
    for index in (1, 2, 3):
        assert re.search(rf"^shard {index}/3: done$", output, re.M), output

    out = tmp_path / "merged.json"
    export_json(checkpoints / "evol" / "results.db", out)
    assert json.loads(out.read_text()) == reference16[0]


def test_shards_still_failing_after_their_retries_are_named_and_the_run_says_to_resume(
    tmp_path, seed16
):
    seed_path, images = seed16
    with socket.socket() as sock:  # a port nothing listens on: every run exits 1 at its start
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    env = {
        **os.environ, "OPENAI_API_KEY": "sim", "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": ray_tmp, "RAY_DEDUP_LOGS": "0",  # every retry's line, not "repeated 2x"
    }  # fmt: skip
    try:
        proc = subprocess.run(
            [
                sys.executable, str(SCRIPT), str(seed_path), "--images", str(images),
                "--run", "evol", "--shards", "2", "--base-url", dead,
                "--checkpoints", str(tmp_path / "checkpoints"), "--num-cpus", "2",
                "--max-retries", "1", "--", "--retries", "0",
            ],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    for index in (1, 2):
        # The first run and its one retry each exited 1; then the driver gives up on it.
        # (Ray forwards a worker's lines asynchronously: the retry's may come after the
        # driver exits, so one line is what is sure to arrive.)
        assert f"shard {index}/2: mmevol run exited 1; Ray runs it again" in output
        assert f"shard {index}/2: still unfinished after 1 retries" in output
    assert "2 of 2 shards unfinished (shard 1/2, shard 2/2): run this command again" in output
