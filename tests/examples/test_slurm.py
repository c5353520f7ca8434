"""examples/slurm: the array script run with plain bash, as Slurm would run one task.

The test plays Slurm (SLURM_ARRAY_TASK_ID, N) and has the script serve the project's
simulated endpoint (`mmevol serve-sim`) instead of `vllm serve`, through MMEVOL_SERVE_CMD.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mmevol.outputs.authors import export_json

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "examples" / "slurm"
PY = sys.executable
SIM = f'exec {PY} -m mmevol serve-sim --port "$PORT"'


def task_env(tmp_path: Path, seed16, task: int | None, **overrides: str) -> dict[str, str]:
    seed_path, images = seed16
    env = {
        **os.environ,
        "MODEL": "gpt-4o-mini",
        "SEED": str(seed_path),
        "IMAGES": str(images),
        "RUN": "evol",
        "N": "2",
        "CHECKPOINTS": str(tmp_path / "checkpoints"),
        "MMEVOL": f"{PY} -m mmevol",
        "PYTHON": PY,
        "MMEVOL_SERVE_CMD": SIM,
        "MMEVOL_RUN_ARGS": "--concurrency 4",
        "SERVE_TIMEOUT": "60",
    }
    env.pop("OPENAI_API_KEY", None)
    if task is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(task)
    env.update(overrides)
    return env


def run_script(name: str, env: dict[str, str], cwd: Path, timeout: float = 180):
    return subprocess.run(
        ["bash", str(SLURM / name)], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def server_of(stderr: str) -> tuple[int, int]:
    found = re.search(r"started the server \(pid (\d+)\) on port (\d+)", stderr)
    assert found, stderr
    return int(found[1]), int(found[2])


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def assert_server_stopped(stderr: str) -> None:
    pid, port = server_of(stderr)
    assert not running(pid), f"the server (pid {pid}) is still running"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    assert "server stopped" in stderr


def test_array_tasks_then_merge_export_what_one_run_exports(tmp_path, seed16, reference16):
    for task in (1, 2):
        proc = run_script("evolve.sbatch", task_env(tmp_path, seed16, task), tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"shard {task}/2 is done" in proc.stderr
        assert_server_stopped(proc.stderr)
        assert (tmp_path / f"mmevol-serve-local_{task}.log").exists()

    merged = run_script("merge.sbatch", task_env(tmp_path, seed16, None), tmp_path)
    assert merged.returncode == 0, merged.stderr
    out = tmp_path / "merged.json"
    export_json(tmp_path / "checkpoints" / "evol" / "results.db", out)
    assert json.loads(out.read_text()) == reference16[0]

    # Submitting a task again resumes it: its samples are finished, none is run again.
    again = run_script("evolve.sbatch", task_env(tmp_path, seed16, 1), tmp_path)
    assert again.returncode == 0, again.stderr
    assert re.search(r": 0 done, 0 failed, [1-9]\d* skipped", again.stdout), again.stdout
    assert_server_stopped(again.stderr)


def test_server_is_stopped_when_the_run_fails(tmp_path, seed16):
    env = task_env(tmp_path, seed16, 1, SEED=str(tmp_path / "no-such-seed.jsonl"))
    proc = run_script("evolve.sbatch", env, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "no-such-seed.jsonl" in proc.stderr
    assert "mmevol run exited 1" in proc.stderr
    assert_server_stopped(proc.stderr)


def test_server_that_never_answers_is_given_up_and_stopped(tmp_path, seed16):
    env = task_env(tmp_path, seed16, 1, MMEVOL_SERVE_CMD="exec sleep 300", SERVE_TIMEOUT="2")
    proc = run_script("evolve.sbatch", env, tmp_path)
    assert proc.returncode == 1
    assert "the server did not answer http://127.0.0.1:" in proc.stderr
    assert "/v1/models within 2 s (SERVE_TIMEOUT)" in proc.stderr
    assert_server_stopped(proc.stderr)
    assert not (tmp_path / "checkpoints" / "evol-shard-1").exists()


def test_server_that_exits_at_start_is_reported_with_its_output(tmp_path, seed16):
    serve = "echo 'CUDA error: no GPU found' >&2; exit 7"
    proc = run_script(
        "evolve.sbatch", task_env(tmp_path, seed16, 1, MMEVOL_SERVE_CMD=serve), tmp_path
    )
    assert proc.returncode == 1
    assert "the server exited (status 7) before answering" in proc.stderr
    assert "CUDA error: no GPU found" in proc.stderr


def test_sigterm_stops_the_run_and_the_server_and_a_resubmission_resumes(tmp_path, seed16):
    slow = task_env(tmp_path, seed16, 2, MMEVOL_SERVE_CMD=SIM + " --latency-ms 300")
    proc = subprocess.Popen(
        ["bash", str(SLURM / "evolve.sbatch")], env=slow, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    results = tmp_path / "checkpoints" / "evol-shard-2" / "results.db"
    deadline = time.monotonic() + 60
    while not results.exists():  # the run has started
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "got TERM: stopping the run cleanly" in stderr
    assert_server_stopped(stderr)

    again = run_script("evolve.sbatch", task_env(tmp_path, seed16, 2), tmp_path)
    assert again.returncode == 0, again.stderr
    assert "shard 2/2 is done" in again.stderr


def test_bad_task_settings_are_refused_before_anything_starts(tmp_path, seed16):
    no_task = run_script("evolve.sbatch", task_env(tmp_path, seed16, None), tmp_path)
    assert no_task.returncode == 1
    assert "SLURM_ARRAY_TASK_ID is not set: submit with sbatch --array=1-N" in no_task.stderr
    outside = run_script("evolve.sbatch", task_env(tmp_path, seed16, 3), tmp_path)
    assert outside.returncode == 1
    assert "array task 3 is outside 1..2: submit with --array=1-2" in outside.stderr
    no_model = run_script("evolve.sbatch", task_env(tmp_path, seed16, 1, MODEL=""), tmp_path)
    assert no_model.returncode == 1
    assert "MODEL is not set" in no_model.stderr
    for proc in (no_task, outside, no_model):
        assert "started the server" not in proc.stderr
