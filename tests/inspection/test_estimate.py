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


def test_estimate_with_gates_matches_the_calls_of_a_gated_run(tmp_path, sim_factory):
    """The gates' calls per round and node, against a real gated run on the sim.

    The sim's blind model attempts every question (blind_rate 1), as the estimate assumes,
    so every chunk of kept items gets its comparison. Tolerance: each gate node's calls
    within 20% per round and 12% over the run (the sim keeps fewer items in later rounds
    than the authors' shares, so a few samples keep nothing and make no gate call); the
    gates' prompt tokens of the blind and judge2 nodes within a factor of two (the estimate
    sizes items from the authors' answers, the sim writes shorter ones).
    """
    from mmevol.run import runner
    from mmevol.store.results import Store

    seed_path, images = make_demo_seed(tmp_path / "seed", n=40, seed=0)
    server = sim_factory(seed=0, blind_rate=1.0)
    settings = Settings(
        run="gated", checkpoints=tmp_path / "ck", images=images, base_url=server.base_url,
        api_key="sim", concurrency=8, gates="blind,judge2",
    )  # fmt: skip
    assert runner.run(settings, seed_path).done == 40
    with Store(settings.results_db) as store:
        made = {
            (r["round"], r["node"]): r
            for r in store.db.query(
                "select round, node, count(*) as calls, sum(input_tokens) as tin"
                " from calls group by round, node"
            )
        }
    result = estimate(settings, seed_path)
    plain = estimate(Settings(), seed_path)
    assert result.gates == ("blind", "judge2")
    for expected, without in zip(result.rounds, plain.rounds, strict=True):
        assert set(expected.gates) == {"blind", "score_blind", "judge2"}
        # The gates add to the round; the evolution and judge calls stay as they were.
        gate_calls = sum(w.calls for w in expected.gates.values())
        assert expected.calls == pytest.approx(without.calls + gate_calls)
        assert expected.cost > without.cost
        for node, work in expected.gates.items():
            real = made[(expected.round, node)]
            assert work.calls == pytest.approx(real["calls"], rel=0.2), (expected.round, node)
            if node != "score_blind":
                assert 0.5 < work.input_tokens / real["tin"] < 2, (expected.round, node)
    for node in ("blind", "score_blind", "judge2"):
        real = sum(r["calls"] for (_, n), r in made.items() if n == node)
        assert sum(r.gates[node].calls for r in result.rounds) == pytest.approx(real, rel=0.12)
    # All gate calls, and the run's too, land on the one model, its totals add up.
    (model,) = result.models
    assert model.calls == pytest.approx(sum(r.calls for r in result.rounds))
    assert sum(r["calls"] for r in made.values()) == pytest.approx(model.calls, rel=0.12)


def test_estimate_prices_each_gate_on_its_model_and_shows_it_in_the_cli(tmp_path):
    seed_path, _ = make_demo_seed(tmp_path, n=6, seed=0)
    settings = Settings(gates="judge2,blind", blind_model="gpt-4o", judge2_model="local-judge")
    result = estimate(settings, seed_path)
    models = {m.model: m for m in result.models}
    assert set(models) == {"gpt-4o-mini", "gpt-4o", "local-judge"}
    blind = sum(r.gates["blind"].calls for r in result.rounds)
    judge2 = sum(r.gates["judge2"].calls for r in result.rounds)
    assert models["gpt-4o"].calls == pytest.approx(blind) and blind > 0
    assert models["local-judge"].calls == pytest.approx(judge2) and judge2 > 0
    assert models["local-judge"].cost == 0 and result.unpriced == ["local-judge"]
    price = PriceTable().get("gpt-4o")
    assert models["gpt-4o"].cost == pytest.approx(
        price.cost(models["gpt-4o"].input_tokens, models["gpt-4o"].output_tokens)
    )
    # The comparison of blind answers is the judge's call.
    plain = {m.model: m for m in estimate(Settings(), seed_path).models}
    compare = sum(r.gates["score_blind"].calls for r in result.rounds)
    assert models["gpt-4o-mini"].calls == pytest.approx(plain["gpt-4o-mini"].calls + compare)

    args = ["estimate", str(seed_path), "--gates", "blind,judge2", "--blind-model", "gpt-4o"]
    data = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert data["gates"] == ["blind", "judge2"]
    assert list(data["rounds"][0]["gates"]) == ["blind", "score_blind", "judge2"]
    assert data["rounds"][0]["calls"] == round(result.rounds[0].calls)
    text = CliRunner().invoke(app, args, env={"COLUMNS": "200"}).output
    assert "gate calls" in text and "score_blind" in text
    # Without --gates the JSON is what it was.
    data = json.loads(CliRunner().invoke(app, ["estimate", str(seed_path), "--json"]).output)
    assert "gates" not in data and "gates" not in data["rounds"][0]
