"""Runs shared by worker processes (--workers), over real HTTP to the simulated endpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from mmevol.graph.config import Settings
from mmevol.outputs.authors import export_json
from mmevol.run import runner
from mmevol.run.events import Event, SampleEvent, Total
from mmevol.run.seed import row_key
from mmevol.runtime.stops import StopReason
from mmevol.sim.demo_seed import make_demo_seed
from mmevol.store.results import Store


@pytest.fixture(scope="module")
def seed12(tmp_path_factory):
    """Twelve good rows and the four bad ones (missing image, escaping path...)."""
    return make_demo_seed(tmp_path_factory.mktemp("seed12"), n=12, seed=7, bad=True)


def export_of(settings: Settings, tmp_path, name: str) -> list[dict]:
    out = tmp_path / f"{name}.json"
    export_json(settings.results_db, out)
    return json.loads(out.read_text())


def failures_of(settings: Settings) -> dict[str, str]:
    with Store(settings.results_db) as store:
        return {r["hash_id"]: r["reason"] for r in store.rows("samples", status="failed")}


def call_keys(settings: Settings) -> list[str]:
    with Store(settings.results_db) as store:
        return [r["key"] for r in store.rows("calls", error=None)]


def test_two_workers_give_the_same_result_as_one_process(sim, seed12, make_settings, tmp_path):
    seed_path, images = seed12
    one = make_settings(sim, images, run="one", concurrency=4)
    single = runner.run(one, seed_path)
    events: list[Event] = []
    two = make_settings(sim, images, run="two", concurrency=4, workers=2)
    shared = runner.run(two, seed_path, listener=events.append)

    assert (shared.done, shared.failed) == (single.done, single.failed) == (12, 4)
    assert export_of(two, tmp_path, "two") == export_of(one, tmp_path, "one")
    assert failures_of(two) == failures_of(one)
    # Every call was made once, by one worker, and the calls are the same ones.
    keys = call_keys(two)
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(call_keys(one))
    # The parent counted the seed once; the workers' events reached the listener.
    assert [e for e in events if isinstance(e, Total)] == [Total(16)]
    kinds = [e.kind for e in events if isinstance(e, SampleEvent)]
    assert kinds.count("done") == 12
    assert kinds.count("failed") + kinds.count("rejected") == 4
    assert shared.worker_cpu > 0
    # The run's recorded settings are the run's, not one worker's share of them.
    with Store(two.results_db) as store:
        recorded = store.get_meta("settings")
    assert (recorded["workers"], recorded["concurrency"]) == (2, 4)


def test_resume_with_workers_skips_finished_rows_in_the_parent(sim, seed12, make_settings):
    seed_path, images = seed12
    settings = make_settings(sim, images, concurrency=4, workers=2, limit=6)
    first = runner.run(settings, seed_path)
    assert first.done + first.failed == 6
    before = sim.stats()["requests"]
    again = runner.run(settings, seed_path)
    assert (again.done, again.failed, again.skipped) == (0, 0, 6)
    assert sim.stats()["requests"] == before  # nothing asked again


def test_max_calls_counts_the_calls_of_all_workers(sim, seed12, make_settings, tmp_path):
    seed_path, images = seed12
    settings = make_settings(sim, images, concurrency=4, workers=2, max_calls=10)
    report = runner.run(settings, seed_path)
    assert report.stop == StopReason("max_calls", "reached --max-calls 10")
    assert sim.stats()["requests"] <= 10
    assert len(call_keys(settings)) <= 10
    # Without the budget the run finishes, and pays for no call twice.
    settings.max_calls = None
    finished = runner.run(settings, seed_path)
    assert not finished.stopped
    keys = call_keys(settings)
    assert len(keys) == len(set(keys))
    reference = make_settings(sim, images, run="reference", concurrency=4)
    runner.run(reference, seed_path)
    assert export_of(settings, tmp_path, "resumed") == export_of(reference, tmp_path, "reference")


def test_for_worker_splits_slots_and_rates_but_not_budgets():
    settings = Settings(concurrency=5, workers=2, rpm=600, tpm=None, max_calls=100, api_key="x")
    shares = [settings.for_worker(k, 2) for k in range(2)]
    assert [s.concurrency for s in shares] == [3, 2]
    assert [s.rpm for s in shares] == [300, 300]
    assert all(s.tpm is None and s.max_calls == 100 and s.workers == 1 for s in shares)


def test_rows_with_the_same_key_go_to_one_worker():
    # The parent deals a row to the worker that has its key in flight; the key is the
    # one the worker will record, computed from the raw row.
    assert row_key(3, {"image": "coco/a.jpg"}) == "3_coco_a.jpg"
    assert row_key(3, {"image": "coco/a.jpg", "hash_id": "x"}) == "x"
    assert row_key(5, None) == "#row-5"


# -- the command line, signals and a killed parent ------------------------------------------


class WorkersRun:
    """`mmevol run --workers 2` on ``seed16`` against an endpoint answering in 60 ms."""

    def __init__(self, seed16, server, checkpoints, tmp_path, cli_run, wait_for_requests):
        self.seed_path, self.images = seed16
        self.server, self.checkpoints, self.tmp_path = server, checkpoints, tmp_path
        self.cli_run, self.wait = cli_run, wait_for_requests

    def start(self, run: str, requests: int) -> subprocess.Popen:
        """Start a run and return once the endpoint has served ``requests`` requests."""
        proc = self.cli_run(
            self.seed_path, self.images, self.server, self.checkpoints, run, "--workers", "2"
        )
        self.wait(self.server, proc, requests)
        return proc

    def resume(self, run: str) -> list[dict]:
        """Run the same command again to the end and return the run's export."""
        proc = self.cli_run(
            self.seed_path, self.images, self.server, self.checkpoints, run, "--workers", "2"
        )
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        out = self.tmp_path / f"{run}.json"
        export_json(self.checkpoints / run / "results.db", out)
        return json.loads(out.read_text())


@pytest.fixture
def workers_run(seed16, sim_factory, tmp_path, cli_run, wait_for_requests):
    server = sim_factory(seed=0, latency_ms=60)
    return WorkersRun(seed16, server, tmp_path / "ck", tmp_path, cli_run, wait_for_requests)


def test_sigterm_to_the_parent_stops_every_worker_cleanly(workers_run, reference16):
    proc = workers_run.start("stopped", 12)
    proc.send_signal(signal.SIGTERM)  # the parent alone, as a job scheduler would
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.count("Stopping (interrupted by a signal)") == 1
    with Store(workers_run.checkpoints / "stopped" / "results.db") as store:
        statuses = set(store.statuses().values())
    assert "interrupted" in statuses and "failed" not in statuses

    assert workers_run.resume("stopped") == reference16[0]
    # Every answer on its way at the stop was recorded: nothing was paid twice.
    assert all(n == 1 for n in workers_run.server.stats()["bodies"].values())


def test_workers_die_with_a_killed_parent_and_the_run_resumes(workers_run, reference16):
    proc = workers_run.start("killed", 15)
    server = workers_run.server
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Orphaned workers notice within a fraction of a second and exit: the endpoint
    # stops getting requests.
    time.sleep(1.0)
    settled = server.stats()["requests"]
    time.sleep(1.0)
    assert server.stats()["requests"] == settled

    assert workers_run.resume("killed") == reference16[0]


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found += [int(p) for p in fh.read().split()]
    return found


def worker_pids(cli_pid: int) -> list[int]:
    """The workers: children of the fork server, itself a child of the mmevol process."""
    for pid in children(cli_pid):
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"forkserver" in fh.read():
                return children(pid)
    return []


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_a_worker_killed_outright_stops_the_run_and_it_resumes(workers_run, reference16):
    proc = workers_run.start("oom", 10)
    pids = worker_pids(proc.pid)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)  # as the kernel's OOM killer would
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    assert re.search(r"worker [01] died unexpectedly \(killed by SIGKILL\)", stderr), stderr

    assert workers_run.resume("oom") == reference16[0]
