"""Trace a sample that retried, dropped items and had an empty round."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.checkpoints import open_checkpointer
from mmevol.inspection.trace import trace_sample
from mmevol.run import runner

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
    assert validate1["calls"][0]["parse"] == "unusable: the answer was a refusal"
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
