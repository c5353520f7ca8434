import json

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.config import Settings
from mmevol.inspection.estimate import KEPT_SHARE, estimate
from mmevol.run.seed import read_seed
from mmevol.runtime.prices import PriceTable
from mmevol.sim.demo_seed import make_demo_seed


def test_estimate_counts_round_one_exactly_and_scales_later_rounds(tmp_path):
    seed_path, _ = make_demo_seed(tmp_path, n=6, seed=0, bad=True)
    result = estimate(Settings(chunk_size=10), seed_path)
    # Only the malformed row is left out: an estimate reads no image.
    assert (result.samples, result.skipped) == (9, 1)
    counts = [len(r.sample.seed_items) for r in read_seed(seed_path) if r.sample]
    first, second, third = result.rounds
    assert first.items_in == sum(counts)
    chunks = sum(-(-n // 10) for n in counts)
    assert first.calls == 2 * chunks  # one evolution and one judge call per chunk
    kept1 = [max(1.0, n * KEPT_SHARE[1]) for n in counts]
    assert second.items_in == pytest.approx(sum(kept1))
    assert third.items_in == pytest.approx(sum(max(1.0, n * KEPT_SHARE[2]) for n in kept1))
    price = PriceTable().get("gpt-4o-mini")
    assert first.cost == pytest.approx(price.cost(first.input_tokens, first.output_tokens))
    assert result.total_cost == pytest.approx(sum(r.cost for r in result.rounds))


def test_estimate_cli_json_and_unpriced_model(tmp_path):
    seed_path, _ = make_demo_seed(tmp_path, n=3, seed=0)
    result = CliRunner().invoke(app, ["estimate", str(seed_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["samples"] == 3 and [r["round"] for r in data["rounds"]] == [1, 2, 3]
    assert data["total_cost"] > 0
    result = CliRunner().invoke(app, ["estimate", str(seed_path), "--model", "local-qwen"])
    assert result.exit_code == 0, result.output
    assert "no price known for 'local-qwen'" in result.output


def test_estimate_prices_online_and_batch_side_by_side_per_model_and_in_total(tmp_path):
    seed_path, _ = make_demo_seed(tmp_path, n=40, seed=0)
    settings = Settings(scorer_model="gpt-4o")
    result = estimate(settings, seed_path)
    evolver, judge = result.models
    assert (evolver.model, judge.model) == ("gpt-4o-mini", "gpt-4o")
    for model in result.models:
        assert model.batch_cost == pytest.approx(model.cost / 2) and model.cost > 0
    assert evolver.calls + judge.calls == pytest.approx(sum(r.calls for r in result.rounds))
    assert result.total_cost == pytest.approx(evolver.cost + judge.cost)
    assert result.total_batch_cost == pytest.approx(result.total_cost / 2)
    price = PriceTable().get("gpt-4o")
    assert judge.batch_cost == pytest.approx(
        price.cost(judge.input_tokens, judge.output_tokens, batch=True)
    )

    args = ["estimate", str(seed_path), "--scorer-model", "gpt-4o"]
    data = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert [m["model"] for m in data["models"]] == ["gpt-4o-mini", "gpt-4o"]
    assert all(m["batch_cost_usd"] == pytest.approx(m["cost_usd"] / 2, abs=0.01)
               for m in data["models"] + data["rounds"])  # fmt: skip
    assert data["total_batch_cost"] == round(result.total_batch_cost, 2)
    assert data["batch_within_hours"] == 24
    text = CliRunner().invoke(app, args, env={"COLUMNS": "200"}).output
    assert f"${result.total_cost:.2f} online, ${result.total_batch_cost:.2f} in batch mode" in text
    assert "within 24 h" in text and "per model" in text
    total = next(line for line in text.splitlines() if "│ total" in line)
    assert f"{result.total_cost:.2f}" in total and f"{result.total_batch_cost:.2f}" in total


def test_estimate_of_a_shard_counts_its_rows_only(tmp_path):
    seed_path, _ = make_demo_seed(tmp_path, n=6, seed=0, bad=True)
    parts = [estimate(Settings(shard=f"{i}/3"), seed_path) for i in (1, 2, 3)]
    whole = estimate(Settings(), seed_path)
    assert sum(p.samples for p in parts) == whole.samples
    assert sum(p.skipped for p in parts) == whole.skipped
    assert all(p.samples < whole.samples for p in parts)
    result = CliRunner().invoke(app, ["estimate", str(seed_path), "--shard", "2/3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == parts[1].samples


def test_estimate_json_keys_are_snake_case_like_stats(tmp_path):
    # Issue 19.13: rows had keys "items in", "cost USD", "batch cost USD".
    seed_path, _ = make_demo_seed(tmp_path, n=3, seed=0)
    data = json.loads(CliRunner().invoke(app, ["estimate", str(seed_path), "--json"]).output)
    assert list(data["rounds"][0]) == [
        "round", "items_in", "calls", "input_tokens", "output_tokens", "cost_usd",
        "batch_cost_usd",
    ]  # fmt: skip
    assert list(data["models"][0]) == [
        "model",
        "calls",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "batch_cost_usd",
    ]
    assert list(data) == [
        "samples", "skipped", "rounds", "models", "total_cost", "total_batch_cost",
        "batch_within_hours", "unpriced",
    ]  # fmt: skip
