"""Batch mode over real HTTP: shards in a folder answered like `vllm run-batch` does."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from mmevol.outputs.authors import export_json
from mmevol.run import runner
from mmevol.runtime.batchapi import read_results
from mmevol.store.results import Store


class FolderAnswerer:
    """Answer the shard files of a --batch-dir folder as `vllm run-batch -i X -o Y` would.

    Each request goes to the simulated endpoint over HTTP; the result file is written
    whole (to a temporary name, then renamed), in vllm's output shape.
    """

    def __init__(
        self, folder: Path, base_url: str, fail_first_shard: bool = False, twice: bool = False
    ):
        self.folder, self.base_url = folder, base_url
        self.fail_first_shard = fail_first_shard
        self.twice = twice
        """Answer two requests of the first shard twice: the first differently, the second alike."""
        self.failed: list[str] = []
        self.shards: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FolderAnswerer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                for path in sorted(self.folder.glob("mmevol-*.jsonl")):
                    if path.name.endswith(".output.jsonl"):
                        continue
                    out = path.with_name(path.name[: -len(".jsonl")] + ".output.jsonl")
                    if not out.exists():
                        self._answer(http, path, out)
                time.sleep(0.05)

    def _answer(self, http: httpx.Client, path: Path, out: Path) -> None:
        lines = []
        fail = self.fail_first_shard and not self.shards
        for raw in path.read_bytes().splitlines():
            request = json.loads(raw)
            key = request["custom_id"]
            if fail:  # every line of the first shard fails, as a flaky server's would
                self.failed.append(key)
                response = {"status_code": 500, "body": {"error": {"message": "boom"}}}
            else:
                answer = http.post(f"{self.base_url}/chat/completions", json=request["body"])
                response = {"status_code": answer.status_code, "body": answer.json()}
            lines.append(
                {"id": f"vllm-{key}", "custom_id": key, "response": response, "error": None}
            )
        if self.twice and not self.shards and len(lines) >= 2:
            other = json.loads(json.dumps(lines[0]))
            other["response"]["body"]["choices"][0]["message"]["content"] = "Another answer."
            lines += [other, lines[1]]
        part = out.with_suffix(".part")
        part.write_text("".join(json.dumps(line) + "\n" for line in lines))
        part.replace(out)
        self.shards.append(path.name)


def _export(settings, tmp_path: Path, name: str) -> list[dict]:
    out = tmp_path / f"{name}.json"
    export_json(settings.results_db, out)
    return json.loads(out.read_text())


def _cli_export(checkpoints: Path, run: str, tmp_path: Path) -> list[dict]:
    """Export a run with `mmevol export` in a process of its own; return the records."""
    import subprocess
    import sys

    out = tmp_path / f"{run}.json"
    subprocess.run(
        [sys.executable, "-m", "mmevol", "export", "--run", run, "--checkpoints",
         str(checkpoints), "-o", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return json.loads(out.read_text())


def test_batch_dir_run_exports_what_an_online_run_exports(
    sim, make_settings, seed16, reference16, tmp_path
):
    seed_path, images = seed16
    folder = tmp_path / "shards"
    settings = make_settings(
        sim, images, run="bdir", batch_dir=folder, batch_poll=0.05, batch_flush=30
    )
    with FolderAnswerer(folder, sim.base_url) as answerer:
        report = runner.run(settings, seed_path)
    assert (report.done, report.failed, report.parked, report.stop) == (16, 0, 0, None)
    assert _export(settings, tmp_path, "bdir") == reference16[0]
    with Store(settings.results_db) as store:
        calls = store.rows("calls")
        assert calls and all(c["batch"] == 1 for c in calls)
        assert store.answered_calls()["answered"] == store.answered_calls()["keys"]
        shards = store.rows("batch_shards")
    # Each pass of the samples submits one shard: at least one per call of a sample's path.
    assert len(shards) == len(answerer.shards) >= 6
    assert all(s["state"] == "finished" for s in shards)
    # No body was sent to the endpoint twice.
    assert sim.stats()["requests"] == reference16[1]


def test_failed_lines_go_out_again_in_a_later_shard(sim, make_settings, seed16, tmp_path):
    seed_path, images = seed16
    folder = tmp_path / "shards"
    settings = make_settings(sim, images, run="bfail", batch_dir=folder, batch_poll=0.05, limit=4)
    with FolderAnswerer(folder, sim.base_url, fail_first_shard=True) as answerer:
        report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (4, 0)
    with Store(settings.results_db) as store:
        errors = [c for c in store.rows("calls") if c["error"]]
        assert sorted(c["key"] for c in errors) == sorted(answerer.failed)
        assert answerer.failed and all("HTTP 500: boom" in c["error"] for c in errors)
        # Each failed key was answered later, exactly once.
        for call in errors:
            answers = [c for c in store.rows("calls", key=call["key"]) if c["error"] is None]
            assert len(answers) == 1
        requests = {r["key"]: r for r in store.rows("batch_requests")}
        assert all(requests[c["key"]]["failures"] == 1 for c in errors)


def test_read_results_takes_openai_and_vllm_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    lines = [
        {
            "custom_id": "a",
            "response": {"status_code": 200, "body": {"choices": []}},
            "error": None,
        },
        {"custom_id": "b", "response": {"status_code": 400, "body": {"error": {"message": "bad"}}}},
        {"custom_id": "c", "response": None, "error": {"code": "batch_expired", "message": "late"}},
        {"custom_id": "d", "error": {"code": "server_error", "message": "oops"}},
        "not json",
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    got = {r.key: (r.status, r.error) for r in read_results(path)}
    assert got == {
        "a": (200, None),
        "b": (400, "HTTP 400: bad"),
        "c": (None, "batch_expired: late"),
        "d": (500, "server_error: oops"),
    }


@pytest.mark.parametrize("workers", [2])
def test_batch_refuses_workers(make_settings, sim, tmp_path, workers):
    with pytest.raises(ValueError, match="--batch runs in one process"):
        make_settings(sim, tmp_path, batch=True, workers=workers)


def test_batch_dir_needs_no_endpoint(seed16, reference16, tmp_path, sim):
    """Shards answered offline: the run itself talks to no endpoint and needs no key."""
    from mmevol.graph.config import Settings

    seed_path, images = seed16
    folder = tmp_path / "shards"
    settings = Settings(
        run="offline", checkpoints=tmp_path / "cp", images=images, concurrency=4,
        base_url="http://127.0.0.1:9/v1", batch_dir=folder, batch_poll=0.05, limit=3,
    )  # fmt: skip
    with FolderAnswerer(folder, sim.base_url):
        report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (3, 0)
    assert _export(settings, tmp_path, "offline") == reference16[0][:3]


def test_fallback_sends_unanswered_requests_online(
    sim, make_settings, seed16, reference16, tmp_path
):
    """Nobody runs the shards: after --batch-fallback they go through the online API."""
    seed_path, images = seed16
    settings = make_settings(
        sim, images, run="fallback", batch_dir=tmp_path / "shards", batch_poll=0.05,
        batch_fallback=0.0002, limit=3,
    )  # fmt: skip
    report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (3, 0)
    assert _export(settings, tmp_path, "fallback") == reference16[0][:3]
    with Store(settings.results_db) as store:
        calls = store.rows("calls")
        requests = store.rows("batch_requests")
    assert calls and not any(c["batch"] for c in calls)  # every answer came online
    assert {r["state"] for r in requests} == {"online"}
    assert len(requests) == len(calls)


def test_shards_are_split_by_bytes(sim, make_settings, seed16, reference16, tmp_path):
    seed_path, images = seed16
    folder = tmp_path / "shards"
    limit = 40_000
    settings = make_settings(
        sim, images, run="bytes", batch_dir=folder, batch_poll=0.05, batch_max_bytes=limit,
        limit=6,
    )  # fmt: skip
    with FolderAnswerer(folder, sim.base_url) as answerer:
        report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (6, 0)
    assert _export(settings, tmp_path, "bytes") == reference16[0][:6]
    sizes = [(folder / name).stat().st_size for name in answerer.shards]
    assert max(sizes) <= limit
    with Store(settings.results_db) as store:
        shards = store.rows("batch_shards")
    # The first pass (6 samples' first evolve calls, each with an image) filled several.
    first_pass = [s for s in shards if s["id"] <= 3]
    assert len(shards) > len(answerer.shards) / 2 and sum(s["bytes"] for s in first_pass) > limit


def test_kill_9_then_resume_pays_nothing_twice(sim, cli_run, seed16, reference16, tmp_path):
    """SIGKILL a --batch-dir run at several points; resuming finishes with the same export."""
    import signal

    seed_path, images = seed16
    folder, checkpoints = tmp_path / "shards", tmp_path / "cp"
    extra = ["--batch-dir", str(folder), "--batch-poll", "0.05"]
    with FolderAnswerer(folder, sim.base_url) as answerer:
        for shards_before_kill in (1, 3, 5):
            proc = cli_run(seed_path, images, sim, checkpoints, "kill", *extra)
            deadline = time.monotonic() + 60
            while len(answerer.shards) < shards_before_kill and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        proc = cli_run(seed_path, images, sim, checkpoints, "kill", *extra)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    results = checkpoints / "kill" / "results.db"
    with Store(results) as store:
        counted = store.answered_calls()
    assert counted["answered"] == counted["keys"]  # no key answered twice on record
    assert _cli_export(checkpoints, "kill", tmp_path) == reference16[0]
    # Every request the endpoint answered is on record: none was sent twice.
    assert sim.stats()["requests"] == reference16[1]


def test_max_cost_counts_what_submitted_batches_may_cost(sim, make_settings, seed16, tmp_path):
    """A shard whose estimate would overrun --max-cost is not submitted; the run stops."""
    seed_path, images = seed16
    folder = tmp_path / "shards"
    settings = make_settings(
        sim, images, run="budget", batch_dir=folder, batch_poll=0.05, max_cost=0.001,
        limit=4,
    )  # fmt: skip
    with FolderAnswerer(folder, sim.base_url) as answerer:
        report = runner.run(settings, seed_path)
    assert report.stop is not None and report.stop.kind == "max_cost"
    assert "next batch shard" in report.stop.message
    assert report.parked == 4 and answerer.shards == []
    with Store(settings.results_db) as store:
        (shard,) = store.rows("batch_shards")
    # 4 image requests of 4096 output tokens at half gpt-4o-mini's price exceed $0.001.
    assert shard["state"] == "closed" and shard["estimate"] > 0.001
    # status lists the shard and the parked samples.
    from typer.testing import CliRunner

    from mmevol.cli import app
    from mmevol.inspection.status import run_summary

    summary = run_summary(settings.results_db)
    assert summary["samples"]["parked"] == 4
    (row,) = summary["batches"]
    assert row["state"] == "closed" and row["requests"] >= 4 and row["estimate_usd"] > 0.001
    shown = CliRunner().invoke(
        app,
        ["status", "--run", "budget", "--checkpoints", str(settings.checkpoints)],
        env={"COLUMNS": "250"},
    )
    assert shown.exit_code == 0 and "parked 4" in shown.output and "closed" in shown.output
    # An online run leaves the parked samples alone (asking them online would pay twice).
    report = runner.run(make_settings(sim, images, run="budget", limit=4), seed_path)
    assert (report.done, report.parked) == (0, 4)
    # With a budget that fits, the batch run collects and finishes.
    settings = make_settings(sim, images, run="budget", batch_dir=folder, batch_poll=0.05, limit=4)
    with FolderAnswerer(folder, sim.base_url):
        report = runner.run(settings, seed_path)
    assert (report.done, report.parked, report.stop) == (4, 0, None)


def test_a_batch_run_costs_half_the_online_run_of_the_same_calls(
    sim, make_settings, seed16, tmp_path
):
    from mmevol.runtime.prices import PriceTable

    seed_path, images = seed16
    online = make_settings(sim, images, run="online", limit=3)
    assert runner.run(online, seed_path).done == 3
    batch = make_settings(
        sim, images, run="half", batch_dir=tmp_path / "b", batch_poll=0.05, limit=3
    )
    with FolderAnswerer(tmp_path / "b", sim.base_url):
        assert runner.run(batch, seed_path).done == 3
    prices = PriceTable()
    cost = {}
    for settings in (online, batch):
        with Store(settings.results_db) as store:
            spent = store.spent()["by_model"]
        assert {bool(row["batch"]) for row in spent} == {settings is batch}
        cost[settings.run] = sum(prices.row_cost(row) for row in spent)
    assert cost["online"] > 0
    assert cost["half"] == pytest.approx(cost["online"] / 2, rel=1e-12)


# -- the Batch API of the simulated endpoint (/v1/files, /v1/batches) -----------------------


def _recorded_batches(settings) -> list[dict]:
    with Store(settings.results_db) as store:
        return [s for s in store.rows("batch_shards") if s["batch_id"]]


def test_batch_api_run_exports_what_an_online_run_exports(
    sim_factory, make_settings, seed16, reference16, tmp_path
):
    sim = sim_factory(seed=0, batch_turnaround=0.2)
    seed_path, images = seed16
    settings = make_settings(sim, images, run="api", batch=True, batch_poll=0.05)
    report = runner.run(settings, seed_path)
    assert (report.done, report.failed, report.parked, report.stop) == (16, 0, 0, None)
    assert _export(settings, tmp_path, "api") == reference16[0]
    stats = sim.stats()
    assert stats["requests"] == stats["batch_lines_answered"] == reference16[1]
    batches = _recorded_batches(settings)
    assert stats["batches_created"] == len(batches) >= 6
    assert all(b["status"] == "completed" and b["state"] == "finished" for b in batches)
    with Store(settings.results_db) as store:
        assert all(c["batch"] == 1 for c in store.rows("calls"))
        # Shard files are removed once the server has them.
        assert not list((settings.run_dir / "batches").glob("*.jsonl"))
        summary = store.batch_summary()
    assert summary["parked"] == 0 and summary["waiting"] == 0


def test_kill_9_during_batches_then_resume_creates_no_batch_twice(
    sim_factory, cli_run, seed16, reference16, tmp_path
):
    """SIGKILL at random moments (submitting, polling, downloading); then resume."""
    import random
    import signal

    sim = sim_factory(seed=0, batch_turnaround=0.3)
    seed_path, images = seed16
    checkpoints = tmp_path / "cp"
    rng = random.Random(7)
    for _ in range(5):
        proc = cli_run(
            seed_path, images, sim, checkpoints, "kill", "--batch", "--batch-poll", "0.05"
        )
        time.sleep(rng.uniform(1.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = cli_run(seed_path, images, sim, checkpoints, "kill", "--batch", "--batch-poll", "0.05")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    results = checkpoints / "kill" / "results.db"
    with Store(results) as store:
        counted = store.answered_calls()
        batches = [s for s in store.rows("batch_shards") if s["batch_id"]]
    assert counted["answered"] == counted["keys"]
    stats = sim.stats()
    # Every batch the server created is on record: none was created twice.
    assert stats["batches_created"] == len(batches)
    # No request was answered twice (a shard dropped before its batch existed cost nothing).
    assert stats["batch_lines_answered"] == reference16[1]
    assert _cli_export(checkpoints, "kill", tmp_path) == reference16[0]


def test_an_expired_batch_keeps_its_partial_output(
    sim_factory, make_settings, seed16, reference16, tmp_path
):
    """The first batches expire half-way: what they answered is kept, the rest goes again."""
    sim = sim_factory(seed=0, batch_turnaround=1.0, batch_expire_after=0.6)
    seed_path, images = seed16
    settings = make_settings(sim, images, run="expire", batch=True, batch_poll=0.05, limit=8)

    def heal() -> None:  # once two batches expired, batches complete again
        while sim.stats()["batches_created"] < 2:
            time.sleep(0.02)
        time.sleep(1.0)
        sim.set_batch(batch_turnaround=0.1, batch_expire_after=None)

    healer = threading.Thread(target=heal, daemon=True)
    healer.start()
    report = runner.run(settings, seed_path)
    healer.join(5)
    assert (report.done, report.failed) == (8, 0)
    assert _export(settings, tmp_path, "expire") == reference16[0][:8]
    expired = [b for b in _recorded_batches(settings) if b["status"] == "expired"]
    assert expired and all(0 < b["completed"] < b["requests"] for b in expired)
    # The answers an expired batch gave were kept: nothing was answered twice.
    with Store(settings.results_db) as store:
        counted = store.answered_calls()
    assert counted["answered"] == counted["keys"] == sim.stats()["batch_lines_answered"]


def test_failed_lines_are_retried_and_counted(
    sim_factory, make_settings, seed16, reference16, tmp_path
):
    sim = sim_factory(seed=0, batch_turnaround=0.05, batch_failed_lines=0.3)
    seed_path, images = seed16
    settings = make_settings(sim, images, run="lines", batch=True, batch_poll=0.05, limit=8)
    report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (8, 0)
    assert _export(settings, tmp_path, "lines") == reference16[0][:8]
    with Store(settings.results_db) as store:
        errors = [c for c in store.rows("calls") if c["error"]]
        requests = store.rows("batch_requests")
    stats = sim.stats()
    assert errors and len(errors) == stats["batch_lines_failed"]
    assert all(e["error"].startswith("batch line: HTTP 500") and e["batch"] == 1 for e in errors)
    assert sum(r["failures"] or 0 for r in requests) == len(errors)


def test_a_batch_created_but_not_recorded_is_adopted_not_created_again(
    sim, make_settings, tmp_path, monkeypatch
):
    """The process dies right after the server created the batch, before it was recorded."""
    import asyncio

    from mmevol.runtime import batchapi

    settings = make_settings(sim, tmp_path, run="adopt", batch=True)
    settings.run_dir.mkdir(parents=True)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    request = {
        "key": "s|r1|evolve|a1|c0", "hash_id": "s", "branch": "main", "round": 1,
        "node": "evolve", "attempt": 1, "chunk": 0, "model": "gpt-4o-mini",
    }  # fmt: skip

    class Killed(BaseException):
        pass

    def make_queue(store):
        return batchapi.BatchQueue(
            settings, store, on_result=lambda r, res: ("answered", 0.0), spent=lambda: 0.0,
            on_stop=lambda reason: None, on_notice=notices.append,
        )  # fmt: skip

    notices: list[str] = []

    async def first_life():
        with Store(settings.results_db) as store:
            queue = make_queue(store)
            await queue.start()
            await queue.put(request, body, 0.0)
            real = queue._submitted

            def die(shard, fields):
                raise Killed  # the batch exists on the server; the store says "creating"

            queue._submitted = die
            await queue.flush()
            queue._submitted = real
            (shard,) = store.shards()
            assert shard["state"] == "creating" and shard["batch_id"] is None

    async def second_life():
        with Store(settings.results_db) as store:
            queue = make_queue(store)
            await queue.start()
            (shard,) = store.shards()
            assert shard["state"] == "submitted" and shard["batch_id"].startswith("batch_")
            assert store.request(request["key"])["state"] == "submitted"
            await queue.aclose()

    asyncio.run(first_life())
    asyncio.run(second_life())
    assert sim.stats()["batches_created"] == 1
    assert any("not submitted again" in n for n in notices)


def test_ctrl_c_while_batches_run_then_the_same_command_collects_them(
    sim_factory, cli_run, seed16, tmp_path
):
    import signal

    sim = sim_factory(seed=0, batch_turnaround=3.0)
    seed_path, images = seed16
    checkpoints = tmp_path / "cp"
    extra = ("--batch", "--batch-poll", "0.05", "--limit", "4")
    proc = cli_run(seed_path, images, sim, checkpoints, "ctrlc", *extra)
    deadline = time.monotonic() + 60
    while sim.stats()["batches_created"] < 1:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "4 samples are parked waiting for batch answers" in err
    sim.set_batch(batch_turnaround=0.05)
    proc = cli_run(seed_path, images, sim, checkpoints, "ctrlc", *extra)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "4 done" in out
    assert sim.stats()["batches_created"] >= 6
    with Store(checkpoints / "ctrlc" / "results.db") as store:
        counted = store.answered_calls()
    assert counted["answered"] == counted["keys"] == sim.stats()["batch_lines_answered"]


def test_the_batch_api_of_a_run_with_several_endpoints_is_the_first_ones(
    sim_factory, make_settings, demo_seed
):
    seed_path, images = demo_seed
    first, second = sim_factory(seed=0, batch_turnaround=0.1), sim_factory(seed=1)
    settings = make_settings(
        first, images, base_url=[first.base_url, second.base_url], limit=2, batch=True,
        batch_poll=0.05,
    )  # fmt: skip
    report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (2, 0)
    assert first.stats()["batches_created"] >= 6
    assert second.stats()["batches_created"] == 0 and second.stats()["requests"] == 0


# -- batches that never come back: forgotten by the server, expired again and again ---------


def _finish_or_fail(proc, seconds: float, what: str) -> tuple[str, str]:
    """Wait for a `mmevol run`; a run still going after ``seconds`` fails the test."""
    import subprocess

    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the run did not finish within {seconds:g} s: {what}")
    return out, " ".join((out + err).split())


@pytest.mark.parametrize("fallback", [False, True], ids=["new-batch", "batch-fallback"])
def test_a_batch_the_server_forgot_is_lost_and_its_requests_go_again(
    sim_factory, cli_run, seed16, reference16, tmp_path, fallback
):
    """Issue 19.6: the server restarts without its batch table; its batch answers 404.

    The run stops polling it after a few checks and asks its open requests again: in a
    new batch, or online under --batch-fallback. Nothing recorded is paid twice.
    """
    sim = sim_factory(seed=0, batch_turnaround=1000)
    seed_path, images = seed16
    checkpoints = tmp_path / "cp"
    extra = ["--batch", "--batch-poll", "0.05", "--limit", "4", "--retries", "2"]
    extra += ["--batch-fallback", "24"] if fallback else []
    proc = cli_run(seed_path, images, sim, checkpoints, "lost", *extra)
    deadline = time.monotonic() + 60
    while sim.stats()["batches_created"] < 1:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    assert sim.forget_batches() == 1
    sim.set_batch(batch_turnaround=0.05)
    out, said = _finish_or_fail(proc, 90, "it polls the forgotten batch forever")
    assert proc.returncode == 0, said
    assert "4 done" in out
    with Store(checkpoints / "lost" / "results.db") as store:
        first, *later = store.rows("batch_shards")
        calls = store.rows("calls")
        counted = store.answered_calls()
        requests = {r["key"]: r for r in store.rows("batch_requests")}
    assert first["state"] == "finished" and first["status"] == "lost"
    assert f"batch shard {first['name']}" in said and "no longer knows" in said
    # The first shard held the first evolve call of each sample (one per chunk).
    first_keys = {c["key"] for c in calls if c["key"].split("|")[1:3] == ["r1", "evolve"]}
    assert len(first_keys) == first["requests"] >= 4
    if fallback:  # the lost batch's requests were answered online, the rest in batches
        assert {requests[k]["state"] for k in first_keys} == {"online"}
        assert not any(c["batch"] for c in calls if c["key"] in first_keys)
        assert all(c["batch"] == 1 for c in calls if c["key"] not in first_keys)
    else:  # asked again in a new batch, and counted as a miss towards --retries
        assert all(c["batch"] == 1 for c in calls)
        assert all(requests[k]["failures"] == 1 for k in first_keys)
        assert all(s["status"] == "completed" for s in later)
    # Nothing answered twice on record, nothing paid that was not recorded.
    assert counted["answered"] == counted["keys"] == sim.stats()["answered"]
    assert _cli_export(checkpoints, "lost", tmp_path) == reference16[0][:4]
    # `mmevol status` shows the lost shard.
    from mmevol.inspection.status import run_summary

    states = [row["state"] for row in run_summary(checkpoints / "lost" / "results.db")["batches"]]
    assert states[0] == "lost" and set(states[1:]) == {"completed"}


def test_expiries_count_toward_retries_then_the_request_goes_online(
    sim_factory, make_settings, seed16, reference16, tmp_path
):
    """Issue 19.7: every batch expires before running a line (73 shards for one request).

    Each request is asked in a batch 1 + --retries times, then online.
    """
    sim = sim_factory(seed=0, batch_turnaround=1.0, batch_expire_after=0.0)
    seed_path, images = seed16
    # --max-calls bounds the run: before the fix, each resubmission reserves a call.
    settings = make_settings(
        sim, images, run="expiring", batch=True, batch_poll=0.05, limit=2, max_retries=2,
        max_calls=150,
    )  # fmt: skip
    notices: list[str] = []
    report = runner.run(
        settings, seed_path, listener=lambda e: notices.append(getattr(e, "text", ""))
    )
    assert (report.done, report.failed, report.stop) == (2, 0, None)
    assert _export(settings, tmp_path, "expiring") == reference16[0][:2]
    with Store(settings.results_db) as store:
        requests = store.rows("batch_requests")
        calls = store.rows("calls")
        shards = store.rows("batch_shards")
    # Three expiries each (1 + --retries), then online.
    assert requests and all(r["failures"] == 3 for r in requests)
    assert calls and not any(c["batch"] for c in calls) and len(calls) == len(requests)
    assert {s["status"] for s in shards} == {"expired"}
    assert sim.stats()["batches_created"] == len(shards) <= 3 * len(requests)
    assert any("went unanswered 3 times" in n and "asking online" in n for n in notices)


def test_expiries_without_an_online_endpoint_interrupt_the_sample(seed16, tmp_path):
    """--batch-dir without --batch-fallback: nowhere to ask online; the sample is interrupted."""
    from mmevol.graph.config import Settings

    seed_path, images = seed16
    folder = tmp_path / "shards"  # nobody answers a line: each shard is only marked done
    settings = Settings(
        run="nowhere", checkpoints=tmp_path / "cp", images=images, concurrency=4,
        base_url="http://127.0.0.1:9/v1", batch_dir=folder, batch_poll=0.05, limit=1,
        max_retries=1, max_calls=20,
    )  # fmt: skip
    notices: list[str] = []

    def done_marker() -> None:  # `.done` beside each shard: it ended with no line answered
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for path in folder.glob("mmevol-*.jsonl"):
                path.with_name(path.name[: -len(".jsonl")] + ".done").touch()
            time.sleep(0.02)

    stop = threading.Event()
    marker = threading.Thread(target=done_marker, daemon=True)
    marker.start()
    try:
        report = runner.run(
            settings, seed_path, listener=lambda e: notices.append(getattr(e, "text", ""))
        )
    finally:
        stop.set()
        marker.join(5)
    assert (report.done, report.failed, report.interrupted, report.stop) == (0, 0, 1, None)
    with Store(settings.results_db) as store:
        (request,) = store.rows("batch_requests")
        assert store.rows("calls") == []
        assert store.statuses() == {request["hash_id"]: "interrupted"}
    assert request["failures"] == 2 and len(list(folder.glob("mmevol-*.done"))) == 2
    assert any("no online endpoint" in n and "--batch-fallback" in n for n in notices)


def test_a_custom_id_answered_twice_differently_is_noticed_and_the_first_kept(
    sim, make_settings, seed16, reference16, tmp_path
):
    """Issue 19.8: an output file with two different lines for one custom_id."""
    seed_path, images = seed16
    folder = tmp_path / "shards"
    settings = make_settings(sim, images, run="twice", batch_dir=folder, batch_poll=0.05, limit=3)
    notices: list[str] = []
    with FolderAnswerer(folder, sim.base_url, twice=True) as answerer:
        report = runner.run(
            settings, seed_path, listener=lambda e: notices.append(getattr(e, "text", ""))
        )
    assert (report.done, report.failed) == (3, 0)
    assert _export(settings, tmp_path, "twice") == reference16[0][:3]  # the first answers
    first = folder / answerer.shards[0].replace(".jsonl", ".output.jsonl")
    keys = [json.loads(line)["custom_id"] for line in first.read_text().splitlines()]
    differs, alike = keys[0], keys[1]
    said = [n for n in notices if "twice" in n]
    assert len(said) == 1 and first.name in said[0] and differs in said[0]
    assert alike not in said[0]
    with Store(settings.results_db) as store:
        shard = store.rows("batch_shards")[0]
        calls = store.rows("calls", key=differs)
    assert "1 custom_id answered twice, differently" in shard["error"]
    assert len(calls) == 1 and calls[0]["response"] != "Another answer."
