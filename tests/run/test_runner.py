"""End-to-end runs over real HTTP against the simulated endpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mmevol.outputs.authors import export_json
from mmevol.run import engine, runner
from mmevol.runtime.llm import EndpointProblem
from mmevol.sim.demo_seed import bad_indices
from mmevol.store.results import Store


def rows_of(settings):
    with Store(settings.results_db) as store:
        return {
            "samples": {r["hash_id"]: r for r in store.rows("samples")},
            "rounds": store.rows("rounds"),
            "calls": store.rows("calls"),
        }


def test_end_to_end_with_bad_samples_and_export(sim, demo_seed, make_settings, tmp_path):
    seed_path, images = demo_seed
    settings = make_settings(sim, images)
    report = runner.run(settings, seed_path)
    assert report.done == 8
    assert report.failed == 4

    data = rows_of(settings)
    failed = {r["idx"]: r["reason"] for r in data["samples"].values() if r["status"] == "failed"}
    bad = bad_indices(8)
    assert "not found" in failed[bad["missing_image"]]
    assert "escapes the image root" in failed[bad["escaping_path"]]
    assert failed[bad["malformed"]].startswith(f"row {bad['malformed']} ")
    assert "conversations_v0" in failed[bad["malformed"]]
    assert "not a readable image" in failed[bad["not_an_image"]]
    # A bad sample never reaches the model.
    assert {c["hash_id"] for c in data["calls"]} <= {
        h for h, r in data["samples"].items() if r["status"] == "done"
    }

    out = tmp_path / "evolved.json"
    assert export_json(settings.results_db, out).written == 8
    exported = json.loads(out.read_text())
    seed_rows = [json.loads(line) for line in seed_path.read_text().splitlines()][:8]
    assert [e["image"] for e in exported] == [s["image"] for s in seed_rows]
    for sample, original in zip(exported, seed_rows, strict=True):
        for key, value in original.items():
            assert sample[key] == value  # every seed field kept as it was
        assert sample["hash_id"]
        for rnd in (1, 2, 3):
            for item in sample[f"conversations_v{rnd}"]:
                assert isinstance(item["score"], int) and 0 <= item["score"] <= 10
                assert item["question"] and item["answer"]
    assert sum(len(s["conversations_v1"]) for s in exported) > 0
    assert all(r["round"] in (1, 2, 3) for r in data["rounds"])
    assert len(data["rounds"]) == 8 * 3


def test_rerun_resumes_and_skips_finished(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=3)
    first = runner.run(settings, seed_path)
    calls_after_first = sim.stats()["requests"]
    second = runner.run(settings, seed_path)
    assert (first.done, second.done, second.skipped) == (3, 0, 3)
    assert (
        sim.stats()["requests"] == calls_after_first + 0 * 1
    )  # nothing asked again (preflight aside)


def test_same_seed_same_operators_other_seed_differs(sim, demo_seed, make_settings):
    seed_path, images = demo_seed

    def operators(run, seed):
        settings = make_settings(sim, images, run=run, seed=seed, limit=6)
        runner.run(settings, seed_path)
        return [(r["hash_id"], r["round"], r["operator"]) for r in rows_of(settings)["rounds"]]

    assert operators("a", 11) == operators("b", 11)
    assert operators("a", 11) != operators("c", 12)


def test_missing_key_is_one_error_before_any_sample(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    with pytest.raises(EndpointProblem, match="OPENAI_API_KEY is not set"):
        runner.run(make_settings(sim, images, api_key=""), seed_path)
    assert sim.stats()["requests"] == 0


def test_unreachable_endpoint_is_one_error(demo_seed, make_settings, sim):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(EndpointProblem, match="cannot reach the endpoint"):
        runner.run(settings, seed_path)
    assert not settings.results_db.exists()


def test_unusable_answer_is_retried_with_feedback_then_round_ends_empty(
    sim_factory, demo_seed, make_settings
):
    seed_path, images = demo_seed
    server = sim_factory(seed=0)
    settings = make_settings(server, images, limit=1, rounds=1, max_attempts=2, concurrency=1)
    server.enqueue("content", content="I'm sorry, I can't help with that.")
    server.enqueue("content", content="<html><body>502</body></html>")
    runner.run(settings, seed_path)
    data = rows_of(settings)
    (record,) = data["rounds"]
    assert record["attempts"] == 2 and record["kept"] == 0
    assert "no usable evolution after 2 attempts" in record["reason"]
    assert [c["parse"] for c in data["calls"]] == [
        "unusable: the answer was a refusal",
        "unusable: the answer was an HTML page, not JSON",
    ]
    assert data["samples"][record["hash_id"]]["status"] == "done"
    # The retry told the model what was wrong with its previous answer.
    first, second = list(server.recent)[-2:]
    assert "<feedback>" not in first
    assert "the answer was a refusal" in second


def test_a_hash_id_given_twice_fails_the_second_row_only(sim, make_settings, tmp_path):
    from mmevol.sim.demo_seed import make_demo_seed

    seed_path, images = make_demo_seed(tmp_path / "s", n=3, seed=1)
    rows = [json.loads(line) for line in seed_path.read_text().splitlines()]
    rows[0]["hash_id"] = rows[2]["hash_id"] = "same"
    seed_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = make_settings(sim, images)
    report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (2, 1)
    assert report.failures == [("#row-2", "row 2: hash_id 'same' is also row 0's")]
    # Running again changes nothing: the first row is done, the duplicate is reported again.
    again = runner.run(settings, seed_path)
    assert (again.done, again.skipped, again.failed) == (0, 2, 1)


def test_calls_are_tagged_by_run_and_sample_for_tracing(make_settings, sim, tmp_path):
    settings = make_settings(sim, tmp_path, run="trial")
    config = engine.thread_config(settings, "7_a.jpg")
    assert config["configurable"] == {"thread_id": "7_a.jpg"}
    assert {"run:trial", "sample:7_a.jpg"} <= set(config["tags"])
    assert config["metadata"] == {"mmevol_run": "trial", "hash_id": "7_a.jpg"}
    # Enough steps for every attempt of every round.
    assert config["recursion_limit"] > settings.rounds * (3 * settings.max_attempts + 2)


def test_the_api_key_is_written_nowhere(sim_factory, demo_seed, make_settings):
    seed_path, images = demo_seed
    key = "sk-test-0123456789-secret"
    server = sim_factory(seed=0, api_key=key)
    settings = make_settings(server, images, api_key=key, limit=2, keep_history=True)
    report = runner.run(settings, seed_path)
    assert report.done == 2  # the key reached the endpoint
    written = [p for p in settings.run_dir.iterdir() if p.is_file()]
    assert {p.name for p in written} >= {"graph.sqlite", "results.db"}
    for path in written:
        assert key.encode() not in path.read_bytes(), path.name


def test_a_shard_runs_its_rows_only_and_records_its_shard(sim, demo_seed, make_settings, tmp_path):
    from mmevol.run.events import Total
    from mmevol.run.seed import raw_rows, row_key, shard_index

    seed_path, images = demo_seed
    mine = [
        (index, key)
        for index, raw, error in raw_rows(seed_path)
        if shard_index(key := row_key(index, raw if error is None else None), 2) == 2
    ]
    events = []
    settings = make_settings(sim, images, run="half", shard="2/2")
    report = runner.run(settings, seed_path, listener=events.append)
    assert Total(None) in events  # a shard's size is not known without reading every row
    with Store(settings.results_db) as store:
        assert sorted(store.statuses()) == sorted(key for _, key in mine)
        assert [r["idx"] for r in store.rows("samples")] == [i for i, _ in mine]
        assert store.get_meta("settings")["shard"] == "2/2"
        assert store.get_meta("seed_fingerprint").startswith("sha256:")
        run_id = store.get_meta("run_id")
    assert report.done + report.failed == len(mine)
    # Resumed: nothing to do, and the run keeps its id.
    assert runner.run(settings, seed_path).skipped == len(mine)
    with Store(settings.results_db) as store:
        assert store.get_meta("run_id") == run_id
    # The export counts the shard's rows, not the seed's.
    result = export_json(settings.results_db, tmp_path / "half.json")
    assert result.never_started == 0
    # --limit counts seed rows before sharding: shard 2/2 of the first 5 rows.
    limited = make_settings(sim, images, run="limited", shard="2/2", limit=5)
    runner.run(limited, seed_path)
    with Store(limited.results_db) as store:
        assert sorted(store.statuses()) == sorted(key for i, key in mine if i < 5)


# -- a resume must not change what the run makes (issue 19, item 4) ---------------------------


def _recorded(settings) -> dict:
    with Store(settings.results_db) as store:
        return {table: store.rows(table) for table in ("meta", "samples", "rounds", "calls")}


@pytest.fixture
def resumable(sim, demo_seed, make_settings):
    """A run of two rows, stopped after a few calls so that samples remain to resume."""
    seed_path, images = demo_seed
    settings = make_settings(sim, images, run="kept", limit=3, max_calls=4)
    runner.run(settings, seed_path)
    return settings, seed_path


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"seed": 1}, "--seed 0 (recorded) vs 1 (now)"),
        ({"model": "gpt-4o"}, "--model 'gpt-4o-mini' (recorded) vs 'gpt-4o' (now)"),
        ({"rounds": 2}, "--rounds 3 (recorded) vs 2 (now)"),
        ({"temperature": 0.2}, "--temperature 1.0 (recorded) vs 0.2 (now)"),
        ({"shard": "1/2"}, "--shard None (recorded) vs '1/2' (now)"),
        ({"scorer_model": "gpt-4o"}, "--scorer-model 'gpt-4o-mini' (recorded) vs 'gpt-4o'"),
        ({"max_tokens": 100, "seed": 2}, "vs 2 (now), --max-tokens 4096 (recorded) vs 100 (now);"),
    ],
)
def test_a_resume_with_settings_that_change_results_is_refused_touching_nothing(
    change, named, resumable, sim
):
    settings, seed_path = resumable
    before, requests = _recorded(settings), sim.stats()["requests"]
    changed = dataclasses.replace(settings, max_calls=None, **change)
    with pytest.raises(runner.SettingsChanged) as caught:
        runner.run(changed, seed_path)
    message = str(caught.value)
    assert named in message and "\n" not in message
    assert "--run" in message  # what to do: a new run name
    assert _recorded(settings) == before and sim.stats()["requests"] == requests


def test_a_resume_with_another_seed_file_is_refused(resumable, sim, tmp_path):
    settings, seed_path = resumable
    other = tmp_path / "other.jsonl"
    other.write_text(seed_path.read_text() + seed_path.read_text().splitlines()[0] + "\n")
    before = _recorded(settings)
    with pytest.raises(runner.SettingsChanged, match="another seed") as caught:
        runner.run(dataclasses.replace(settings, max_calls=None), other)
    assert str(other) in str(caught.value) and "--run" in str(caught.value)
    assert _recorded(settings) == before


def test_a_resume_may_change_how_calls_are_sent(resumable, sim, demo_seed, tmp_path):
    settings, seed_path = resumable
    recorded = _recorded(settings)["meta"]
    free = dataclasses.replace(
        settings, concurrency=2, timeout=30.0, max_retries=1, rpm=6000.0, max_calls=None,
        max_cost=50.0, limit=4, keep_history=True, batch_poll=1.0,
    )  # fmt: skip
    report = runner.run(free, seed_path)
    assert report.done + report.failed + report.skipped == 4 and not report.stopped
    with Store(settings.results_db) as store:
        assert store.get_meta("settings")["concurrency"] == 2  # the latest, as before
    assert recorded  # the first run recorded its settings


def test_the_cli_refuses_a_changed_resume_in_one_line(resumable, sim):
    from typer.testing import CliRunner

    from mmevol.cli import app

    settings, seed_path = resumable
    before = _recorded(settings)
    result = CliRunner().invoke(
        app,
        [
            "run", str(seed_path), "--images", str(settings.images), "--run", settings.run,
            "--limit", "3", "--base-url", sim.base_url, "--seed", "7",
        ],
        env={"OPENAI_API_KEY": "sim", "MMEVOL_CHECKPOINTS": str(settings.checkpoints)},
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--seed 0 (recorded) vs 7 (now)" in lines[0], result.output
    assert _recorded(settings) == before
