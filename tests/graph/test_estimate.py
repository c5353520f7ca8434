import json

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph.config import Settings
from mmevol.graph.estimate import KEPT_SHARE, estimate
from mmevol.graph.runtime.prices import PriceTable
from mmevol.graph.seed import read_seed
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
