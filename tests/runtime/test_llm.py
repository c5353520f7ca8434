"""The model client over real HTTP: budgets, pushback, the breaker, structured output."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from mmevol.inspection.status import run_summary
from mmevol.outputs.stats import compute_stats
from mmevol.run import runner
from mmevol.run.events import Notice
from mmevol.runtime.llm import CallKey, ModelClient, spent_so_far
from mmevol.runtime.prices import PriceTable
from mmevol.runtime.stops import StopReason
from mmevol.sim.demo_seed import make_demo_seed
from mmevol.store.results import Store


def calls_of(settings):
    with Store(settings.results_db) as store:
        return store.rows("calls")


def test_max_calls_stops_cleanly_and_resume_finishes(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=6, max_calls=10)
    report = runner.run(settings, seed_path)
    assert report.stop == StopReason("max_calls", "reached --max-calls 10")
    assert len(calls_of(settings)) == 10
    assert report.interrupted > 0 and report.failed == 0
    # The budget counts the whole run, so raise it to finish.
    settings = make_settings(sim, images, limit=6)
    again = runner.run(settings, seed_path)
    assert not again.stopped and again.done + report.done == 6


def test_max_cost_uses_the_price_table(sim, demo_seed, make_settings, tmp_path):
    seed_path, images = demo_seed
    prices = tmp_path / "prices.json"
    # Priced so that a single call costs about a cent.
    prices.write_text(json.dumps({"gpt-4o-mini": {"input": 5.0, "output": 5.0}}))
    settings = make_settings(sim, images, limit=6, max_cost=0.05, prices=prices)
    report = runner.run(settings, seed_path)
    assert report.stop.kind == "max_cost"
    assert report.stop.message.startswith("reached --max-cost $0.05")
    spent = sum((c["input_tokens"] + c["output_tokens"]) * 5.0 / 1e6 for c in calls_of(settings))
    assert 0.05 <= spent < 0.05 + 4 * 0.02  # at most the calls in flight past the budget


def hand_cost(rows, price_in, price_cached, price_out):
    """Dollars of recorded calls, computed by hand from their token counts."""
    return sum(
        ((r["input_tokens"] or 0) - (r["cached_tokens"] or 0)) * price_in / 1e6
        + (r["cached_tokens"] or 0) * price_cached / 1e6
        + (r["output_tokens"] or 0) * price_out / 1e6
        for r in rows
    )


def test_cached_tokens_are_recorded_and_priced_at_the_cached_rate(
    sim_factory, demo_seed, make_settings
):
    seed_path, images = demo_seed
    server = sim_factory(seed=0, cached_share=0.5)
    settings = make_settings(server, images, limit=3)
    assert runner.run(settings, seed_path).done == 3
    rows = [r for r in calls_of(settings) if r["error"] is None]
    assert rows and all(r["cached_tokens"] == r["input_tokens"] // 2 > 0 for r in rows)
    assert not any(r["batch"] for r in rows)  # online
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens.
    expected = hand_cost(rows, 0.15, 0.075, 0.60)
    assert expected < hand_cost(rows, 0.15, 0.15, 0.60)  # the discount is real
    with Store(settings.results_db) as store:
        assert spent_so_far(store, PriceTable()).cost_before == pytest.approx(expected, abs=1e-12)
    summary = run_summary(settings.results_db)
    assert summary["cost_usd"] == round(expected, 4)
    assert summary["cached_tokens"] == sum(r["cached_tokens"] for r in rows)
    assert summary["batch_cost_usd"] == 0
    stats = compute_stats(settings.results_db)["cost"]
    assert stats["usd"] == pytest.approx(expected, abs=1e-6)
    assert stats["cached_tokens"] == summary["cached_tokens"] and stats["batch_usd"] == 0


def test_max_cost_counts_cached_tokens_at_the_cached_price(
    sim_factory, demo_seed, make_settings, tmp_path
):
    seed_path, images = demo_seed
    server = sim_factory(seed=0, cached_share=0.75)
    prices = tmp_path / "prices.json"
    # Only uncached input costs: a call costs about a quarter of its full input price.
    prices.write_text(
        json.dumps({"gpt-4o-mini": {"input": 10.0, "output": 0.0, "cached_input": 0.0}})
    )
    settings = make_settings(server, images, limit=6, max_cost=0.02, prices=prices)
    report = runner.run(settings, seed_path)
    assert report.stop.kind == "max_cost"
    rows = calls_of(settings)
    spent = hand_cost(rows, 10.0, 0.0, 0.0)
    largest = max(hand_cost([r], 10.0, 0.0, 0.0) for r in rows)
    assert 0.02 <= spent < 0.02 + 4 * largest  # at most the calls in flight past the budget
    full = hand_cost(rows, 10.0, 10.0, 0.0)
    assert full > 2 * (0.02 + 4 * largest)  # counted at full price, it would have stopped early
    # A resume counts what was spent the same way: with a budget above the cached spend
    # (and below the full price of the same calls) it goes on calling.
    before = server.stats()["requests"]
    settings = make_settings(server, images, limit=6, max_cost=2 * spent, prices=prices)
    assert 2 * spent < full
    runner.run(settings, seed_path)
    assert server.stats()["requests"] > before


def test_a_batch_answer_costs_exactly_half_of_the_same_answer_online(sim, make_settings, tmp_path):
    settings = make_settings(sim, tmp_path)

    async def count() -> tuple[float, float]:
        with Store(None) as store:
            async with ModelClient(settings, store) as client:
                client._count("gpt-4o-2024-08-06", 12_345, 678, 9_000)
                online = client.usage.cost
                client._count("gpt-4o-2024-08-06", 12_345, 678, 9_000, batch=True)
                return online, client.usage.cost - online

    online, batch = asyncio.run(count())
    assert online > 0 and batch == online / 2


def test_rate_limit_answers_back_off_and_shrink_concurrency(sim_factory, demo_seed, make_settings):
    seed_path, images = demo_seed
    server = sim_factory(seed=0, rate_limit_rate=0.3, retry_after=0.01)
    settings = make_settings(server, images, limit=4, max_retries=8)
    report = runner.run(settings, seed_path)
    assert report.done == 4 and report.failed == 0
    assert server.stats()["faults"]["rate_limit"] > 0
    assert all(c["error"] is None for c in calls_of(settings))


def test_sustained_failures_stop_the_run_instead_of_interrupting_every_sample(
    sim_factory, make_settings, tmp_path
):
    seed_path, images = make_demo_seed(tmp_path / "seed", n=40, seed=1)
    server = sim_factory(seed=0, error_rate=1.0)
    settings = make_settings(server, images, max_retries=0, concurrency=2)
    report = runner.run(settings, seed_path)
    assert report.stop.kind == "breaker"
    assert report.stop.message.startswith("the endpoint keeps failing: 10 of the last 10")
    assert "InternalServerError" in report.stop.message
    # The samples whose call failed are interrupted, not failed: the next run resumes them,
    # and the rest of the seed never started and stays pending for it.
    # Each sample made one call per chunk (sample 1 has three); at most the calls
    # already on their way when the breaker tripped come after the tenth failure.
    assert 10 <= server.stats()["requests"] <= 10 + 2 * 3
    assert report.failed == 0 and report.interrupted <= 12
    with Store(settings.results_db) as store:
        assert set(store.statuses().values()) == {"interrupted"}
        assert len(store.statuses()) == report.interrupted


def test_structured_output_when_accepted(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=2, structured_output=True)
    notices = []
    report = runner.run(
        settings,
        seed_path,
        listener=lambda e: notices.append(e.text) if isinstance(e, Notice) else None,
    )
    assert report.done == 2 and notices == []
    responses = [c["response"] for c in calls_of(settings)]
    assert all(r.startswith("{") for r in responses)  # pure JSON, no fence
    assert all(c["parse"] == "ok" for c in calls_of(settings) if c["node"] == "evolve")


def test_structured_output_refused_falls_back_once(sim_factory, demo_seed, make_settings):
    seed_path, images = demo_seed
    server = sim_factory(seed=0, reject_structured=True)
    settings = make_settings(server, images, limit=3, structured_output=True, concurrency=1)
    notices = []
    report = runner.run(
        settings,
        seed_path,
        listener=lambda e: notices.append(e.text) if isinstance(e, Notice) else None,
    )
    assert report.done == 3
    rejected = [n for n in notices if "rejected structured output" in n]
    assert len(rejected) == 1
    assert server.stats()["faults"]["bad_request"] == 1


def test_timeout_and_retries_bound_a_call_to_a_hanging_endpoint(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    sim.set_behaviour("hang")
    settings = make_settings(sim, images, limit=1, concurrency=1, timeout=0.3, max_retries=2)
    report = runner.run(settings, seed_path)
    # One call: the first request and two retries, each given up after --timeout.
    assert sim.stats()["requests"] == 3
    assert (report.done, report.failed, report.interrupted) == (0, 0, 1)
    (call,) = calls_of(settings)
    assert call["error"].startswith("APITimeoutError")


def test_first_ctrl_c_stops_the_retries_of_calls_to_a_hanging_endpoint(
    seed16, sim, tmp_path, cli_run, wait_for_requests
):
    seed_path, images = seed16
    sim.set_behaviour("hang")
    checkpoints = tmp_path / "ck"
    proc = cli_run(seed_path, images, sim, checkpoints, "hung", "--timeout", "2", "--retries", "5")
    # The first four samples' first calls (sample 1 has three chunks): all hang.
    wait_for_requests(sim, proc, 6)
    proc.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    # The calls in flight get at most --timeout; none is retried after the signal.
    assert time.monotonic() - signalled < 2 + 4
    assert sim.stats()["requests"] == 6
    with Store(checkpoints / "hung" / "results.db") as store:
        assert set(store.statuses().values()) == {"interrupted"}
    sim.set_behaviour(None)
    proc = cli_run(seed_path, images, sim, checkpoints, "hung", "--timeout", "2")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "16 done, 0 failed" in stdout


def test_leaving_an_async_with_block_closes_the_connection_pool(sim, make_settings, tmp_path):
    settings = make_settings(sim, tmp_path)
    settings.run_dir.mkdir(parents=True)
    store = Store(settings.results_db)

    async def go():
        async with ModelClient(settings, store) as client:
            key = CallKey("0_a.jpg", 1, "score", 0)
            answer = await client.ask(key, "<items>\n1. Q: What is red? A: The box.\n</items>")
        return client, answer

    try:
        client, answer = asyncio.run(go())
    finally:
        store.close()
    assert answer.text and not answer.reused  # a real call over the pool
    assert client.http.is_closed


def test_preflight_refuses_a_base_url_without_v1_and_suggests_it(sim, demo_seed, tmp_path):
    # Issue 19.9: without /v1 every call answered 404 and the run exited 3 with "run
    # again to resume", which could not help.
    from typer.testing import CliRunner

    from mmevol.cli import app

    seed_path, images = demo_seed
    bare = sim.base_url.removesuffix("/v1")
    result = CliRunner().invoke(
        app,
        ["run", str(seed_path), "--images", str(images), "--base-url", bare, "--limit", "1"],
        env={"OPENAI_API_KEY": "sim"},
    )
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: the endpoint {bare} answered GET /models with HTTP 404 Not Found; the API "
        f"answers at {bare}/v1: run again with --base-url {bare}/v1\n"
    )
    assert sim.stats()["by_kind"] == {"evolve": 0, "score": 0, "other": 0}
    assert not (tmp_path / "checkpoints").exists()


def test_answers_holding_a_lone_surrogate_are_recorded_once_and_unusable(
    sim_factory, demo_seed, make_settings, tmp_path
):
    """Item 3 of issue 19: a lone surrogate (``"\\ud800"`` in the JSON) crashed the whole run
    before its answer was recorded, so every resume paid for the same call again."""
    from mmevol.outputs.authors import export_json

    sim = sim_factory(seed=0, surrogate_rate=0.3)
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=6)
    report = runner.run(settings, seed_path)
    assert report.done + report.failed == 6 and not report.stopped
    sent = sim.stats()
    assert sent["faults"]["surrogate"] > 0
    calls = calls_of(settings)
    assert len(calls) == sent["requests"]  # every paid answer is on record, once
    broken = [c for c in calls if c["finish_reason"] == "invalid_text"]
    assert len(broken) == sent["faults"]["surrogate"]
    for call in broken:  # kept as it came, the surrogate escaped
        assert "\\ud800" in call["response"] and call["error"] is None
        assert call["parse"].startswith("unusable: the answer is not valid text")
    with Store(settings.results_db) as store:
        counted = store.answered_calls()
    assert counted["answered"] == counted["keys"]
    again = runner.run(settings, seed_path)
    assert sim.stats()["requests"] == sent["requests"]  # a resume pays nothing again
    assert again.done + again.failed == 0
    out = tmp_path / "out.json"
    assert export_json(settings.results_db, out).written == report.done
    assert "\ud800" not in out.read_text(encoding="utf-8")


def test_the_short_call_path_records_what_chat_openai_ainvoke_does(sim, make_settings, tmp_path):
    # Without LangSmith tracing the client skips ChatOpenAI.ainvoke's layers (issue 22);
    # with it (``traced``) every call goes through ainvoke. Both must record the same.
    scripts = [
        ("content", {"content": "<items>1. Q: Red? A: Yes.</items>"}),
        ("content", {"content": "cut", "finish_reason": "length"}),
        ("html", {}),
        ("no_choices", {}),
    ]
    recorded = {}
    for traced in (False, True):
        settings = make_settings(sim, tmp_path, run=f"traced-{traced}")
        settings.run_dir.mkdir(parents=True)
        store = Store(settings.results_db)

        async def go(store=store, settings=settings, traced=traced):
            async with ModelClient(settings, store) as client:
                client.traced = traced
                answers = []
                for n, (kind, fields) in enumerate(scripts):
                    sim.enqueue(kind, **fields)
                    key = CallKey("0_a.jpg", 1, "score", n)
                    answers.append(await client.ask(key, "judge these"))
                return answers

        try:
            answers = asyncio.run(go())
            rows = store.rows("calls")
        finally:
            store.close()
        recorded[traced] = (
            [(a.text, a.finish_reason) for a in answers],
            [
                {k: v for k, v in row.items() if k not in ("id", "latency_ms", "created_at")}
                for row in rows
            ],
        )
    short, full = recorded[False], recorded[True]
    assert short == full
    texts = [text for text, _ in short[0]]
    assert texts[0] == "<items>1. Q: Red? A: Yes.</items>"
    assert [reason for _, reason in short[0]] == ["stop", "length", "not_a_completion"] + [
        "not_a_completion"
    ]
