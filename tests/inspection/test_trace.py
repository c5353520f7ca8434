"""Trace a sample that retried, dropped items and had an empty round."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.checkpoints import open_checkpointer
from mmevol.inspection.trace import trace_sample
from mmevol.run import runner
from mmevol.store.results import Store

GOOD = {
    "question": "Which shape lies closest to the top edge of the picture?",
    "steps": ["Compare the top edges of all shapes."],
    "answer": "The green star is closest to the top edge.",
}
INVENTED = {
    "question": "What is inside the region [0.999, 0.001, 0.999, 0.002]?",
    "answer": "Nothing at all.",
}


def scripted_run(sim_factory, demo_seed, make_settings, keep_history=True):
    seed_path, images = demo_seed
    server = sim_factory(seed=0)
    settings = make_settings(
        server, images, limit=1, rounds=2, concurrency=1, keep_history=keep_history
    )
    server.enqueue("content", content="I'm sorry, I can't help with that.")
    server.enqueue("content", content="```json\n" + json.dumps([GOOD, INVENTED]) + "\n```")
    server.enqueue("content", content='[{"improved": "yes", "score": 7, "reason": "harder"}]')
    for _ in range(3):
        server.enqueue("content", content="", finish_reason="stop")
    runner.run(settings, seed_path)
    return settings


def test_trace_shows_retry_drops_and_empty_round(sim_factory, demo_seed, make_settings):
    settings = scripted_run(sim_factory, demo_seed, make_settings)
    hash_id = "0_shapes_000000.jpg"
    steps = asyncio.run(trace_sample(settings.graph_db, settings.results_db, hash_id))
    nodes = [s["node"] for s in steps]
    round1 = ["select_operator", "evolve", "validate"] * 2 + ["score", "eliminate"]
    round2 = ["select_operator", "evolve", "validate"] * 3 + ["eliminate"]
    assert nodes == round1 + round2

    validate1, validate2 = steps[2], steps[5]
    assert validate1["error"] == "the answer was a refusal" and validate1["items_out"] == 0
    assert steps[1]["calls"][0]["parse"] == "unusable: the answer was a refusal"  # evolve
    assert validate2["items_out"] == 1
    assert validate2["attempt"] == 2
    (drop,) = validate2["dropped"]
    assert drop["stage"] == "check" and "not among the given boxes" in drop["reason"]
    assert steps[6]["verdicts"] == [{"improved": True, "score": 7, "reason": "harder"}]
    assert steps[7]["kept_scores"] == [7] and "error" not in steps[7]
    assert steps[-1]["round"] == 2
    assert steps[-1]["error"].startswith("no usable evolution after 3 attempts")
    evolve_call = steps[1]["calls"][0]
    assert evolve_call["input_tokens"] > 85 and evolve_call["latency_ms"] >= 0


def test_trace_cli_text_json_and_raw(sim_factory, demo_seed, make_settings):
    settings = scripted_run(sim_factory, demo_seed, make_settings)
    cli = CliRunner()
    args = ["trace", "0_shapes_000000.jpg", "--run", settings.run]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "problem: the answer was a refusal" in result.output
    assert "dropped (check): has coordinates that are not among the given boxes" in result.output
    assert "verdicts: yes 7" in result.output

    result = cli.invoke(app, [*args, "--json"])
    assert len(json.loads(result.output)) == 8 + 10

    result = cli.invoke(app, [*args, "--raw"])
    assert result.exit_code == 0, result.output
    assert "<given_items>" in result.output  # re-rendered evolution prompt
    assert "<rewritten_items>" in result.output  # re-rendered judge prompt
    assert "Which shape lies closest to the top edge" in result.output  # the stored answer

    result = cli.invoke(app, ["trace", "nope", "--run", settings.run])
    assert result.exit_code == 1
    assert (
        "Error: no checkpoint and no finished round of sample 'nope' in this run" in result.output
    )


def test_compacted_sample_is_traced_round_by_round(sim_factory, demo_seed, make_settings):
    settings = scripted_run(sim_factory, demo_seed, make_settings, keep_history=False)

    async def checkpoints():
        async with open_checkpointer(settings.graph_db) as saver:
            return [c async for c in saver.alist(None)]

    assert asyncio.run(checkpoints()) == []
    steps = asyncio.run(trace_sample(settings.graph_db, settings.results_db, "0_shapes_000000.jpg"))
    assert [(s["node"], s["round"], s["attempt"]) for s in steps] == [
        ("round", 1, 2),
        ("round", 2, 3),
    ]
    first, second = steps
    assert first["kept_scores"] == [7]
    assert [d["stage"] for d in first["dropped"]] == ["check"]
    assert [c["parse"] for c in first["calls"]] == [
        "unusable: the answer was a refusal",
        "ok",
        "ok",
    ]
    assert second["error"].startswith("no usable evolution after 3 attempts")
    assert len(second["calls"]) == 3


def test_trace_of_a_failed_sample_says_why(sim_factory, demo_seed, make_settings):
    seed_path, images = demo_seed  # rows 8..11 are bad: missing image, escaping path, ...
    server = sim_factory(seed=0)
    server.enqueue("status", status=400)  # row 0's first call is refused: it fails mid-way
    settings = make_settings(server, images, concurrency=1)
    runner.run(settings, seed_path)
    cli = CliRunner()
    result = cli.invoke(app, ["trace", "8_shapes_000008.jpg", "--run", settings.run])
    assert result.exit_code == 0, result.output
    assert "failed: row 8 (8_shapes_000008.jpg): image 'shapes/000008.jpg' not found" in (
        " ".join(result.output.split())
    )
    result = cli.invoke(app, ["trace", "#row-10", "--run", settings.run])
    assert result.exit_code == 0, result.output
    assert "failed: row 10 (id bad_malformed): invalid sample" in result.output

    steps = asyncio.run(trace_sample(settings.graph_db, settings.results_db, "0_shapes_000000.jpg"))
    assert steps[-1]["node"] == "failed"
    assert "BadRequestError" in steps[-1]["error"]
    result = cli.invoke(app, ["trace", "0_shapes_000000.jpg", "--run", settings.run])
    assert "failed: row 0 (0_shapes_000000.jpg): BadRequestError" in result.output


def test_trace_of_an_interrupted_sample_says_why_it_stopped(sim, demo_seed, make_settings):
    # Issue 19.9: every call of the sample failed with a 404; trace printed nothing.
    from mmevol.sim.errors import error_body

    seed_path, images = demo_seed
    sim.set_behaviour("status", status=404, body=error_body(404, "The model `x` does not exist"))
    settings = make_settings(sim, images, limit=1, max_retries=0)
    assert runner.run(settings, seed_path).interrupted == 1
    result = CliRunner().invoke(app, ["trace", "0_shapes_000000.jpg", "--run", settings.run])
    assert result.exit_code == 0, result.output
    last = " ".join(result.output.split("\n")[-2].split())
    assert last.startswith("1 interrupted: the endpoint failed call ")
    assert "(evolve, round 1): HTTP 404 Not Found: The model `x` does not exist" in last
    assert last.endswith("fix the endpoint (--base-url, --model, the key) and run the run again")

    steps = asyncio.run(trace_sample(settings.graph_db, settings.results_db, "0_shapes_000000.jpg"))
    assert steps[-1]["node"] == "interrupted"
    assert steps[-1]["calls"][0]["error"].startswith("NotFoundError: Error code: 404")


def test_trace_text_escapes_control_characters_of_model_text(sim_factory, demo_seed, make_settings):
    # Issue 19.10: a model's answer could clear the screen or retitle the terminal.
    seed_path, images = demo_seed
    server = sim_factory(seed=0)
    evil = dict(GOOD, question="Which shape\x1b[2J\x1b]0;owned\x07 is on top?\u202e")
    server.enqueue("content", content=json.dumps([evil]))
    settings = make_settings(server, images, limit=1, rounds=1, concurrency=1)
    runner.run(settings, seed_path)
    result = CliRunner().invoke(
        app, ["trace", "0_shapes_000000.jpg", "--run", settings.run, "--raw"]
    )
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\u202e" not in result.output
    assert "Which shape\\x1b[2J\\x1b]0;owned\\x07 is on top?\\u202e" in result.output


def test_trace_text_keeps_columns_apart_and_counts_each_call_once(
    sim_factory, demo_seed, make_settings
):
    # Issue 19.10: "select_operatoroperator", and the evolve call counted on validate too.
    settings = scripted_run(sim_factory, demo_seed, make_settings)
    result = CliRunner().invoke(app, ["trace", "0_shapes_000000.jpg", "--run", settings.run])
    assert result.exit_code == 0, result.output
    heads = [line.split() for line in result.output.splitlines() if line[:3].strip().isdigit()]
    assert heads[0][3:5] == ["select_operator", "operator"]
    calls = {(h[3], "call(s)," in h) for h in heads}
    assert ("evolve", True) in calls and ("validate", True) not in calls
    total = sum(int(h[h.index("call(s),") - 1]) for h in heads if "call(s)," in h)
    with Store(settings.results_db) as store:
        assert total == len(store.rows("calls"))
