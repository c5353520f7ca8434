import json
import re

import pytest

from mmevol.runtime.prices import PriceTable, usage_tokens


def test_defaults_and_dated_snapshots():
    table = PriceTable()
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert table.get("gpt-4o-mini-2024-07-18") == table.get("gpt-4o-mini")
    assert table.get("gpt-4o-2024-08-06") == table.get("gpt-4o")
    assert table.get("Qwen2-VL-72B") is None
    assert table.cost("Qwen2-VL-72B", 10, 10) == 0.0


def test_override_file(tmp_path, monkeypatch):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"qwen-vl": {"input": 1, "output": 2}, "gpt-4o-mini": {"input": 0, "output": 0}})
    )
    table = PriceTable(path)
    assert table.cost("qwen-vl", 1_000_000, 500_000) == pytest.approx(2.0)
    assert table.cost("gpt-4o-mini", 1000, 1000) == 0
    monkeypatch.setenv("MMEVOL_PRICES", str(path))
    assert PriceTable().get("qwen-vl") is not None


def test_bad_file_names_itself(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text('{"m": {"in": 1}}')
    with pytest.raises(ValueError, match="prices.json.*is not usable"):
        PriceTable(path)


def test_cached_input_tokens_cost_the_cached_price_and_batch_halves_every_price():
    table = PriceTable()
    # input_tokens includes the cached ones, as OpenAI's usage.prompt_tokens does.
    assert table.cost("gpt-4o-mini", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.075)
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000, cached_tokens=400_000) == (
        pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.60)
    )
    for model, cached in [("gpt-4o", 1.25), ("gpt-4.1", 0.50), ("gpt-4.1-mini", 0.10),
                          ("gpt-4.1-nano", 0.025)]:  # fmt: skip
        assert table.get(model).cached_input == cached
    for args in [(1234, 567, 0), (98_765, 4321, 50_000), (7, 3, 7)]:
        online = table.cost("gpt-4o-2024-08-06", *args)
        assert table.cost("gpt-4o-2024-08-06", *args, batch=True) == online / 2  # exactly
    # More cached tokens than input ones (a confused endpoint) never make money.
    assert table.cost("gpt-4o-mini", 100, 0, cached_tokens=500) == table.cost(
        "gpt-4o-mini", 100, 0, cached_tokens=100
    )
    assert table.cost("Qwen2-VL-72B", 10, 10, 5, batch=True) == 0.0


def test_price_file_cached_input_and_batch_keys(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "qwen-vl": {"input": 1, "output": 2},
                "gpt-4o-mini": {"input": 1, "output": 2, "cached_input": 0.25, "batch": 0.4},
            }
        )
    )
    table = PriceTable(path)
    # A custom model with no cached_input gets no discount for cached tokens; batch: half.
    assert table.cost("qwen-vl", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(1.0)
    assert table.cost("qwen-vl", 1_000_000, 1_000_000, batch=True) == pytest.approx(1.5)
    assert table.cost("gpt-4o-mini", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.25)
    assert table.cost("gpt-4o-mini", 2_000_000, 1_000_000, 1_000_000, True) == pytest.approx(
        0.4 * (1 + 0.25 + 2)
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"input": 1, "output": 2, "cached_input": -1}, "cached_input must be a number of at"),
        ({"input": 1, "output": 2, "batch": "half"}, "could not convert"),
        ({"input": 1, "output": 2, "batch": True}, "is not a number"),
        ({"input": 1, "output": 2, "cache": 0.5}, r"unknown keys \['cache'\]"),
        ({"output": 2}, "has no 'input'"),
        ([1, 2], "is not an object"),
    ],
)
def test_a_bad_price_entry_names_the_file_the_model_and_the_problem(tmp_path, entry, problem):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-model": entry}))
    with pytest.raises(ValueError, match="prices.json") as caught:
        PriceTable(path)
    assert "'my-model'" in str(caught.value)
    assert re.search(problem, str(caught.value)), str(caught.value)


def test_usage_tokens_reads_an_openai_usage_as_the_sim_sends_it(sim_factory):
    import urllib.request

    server = sim_factory(cached_share=0.5)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 400}]}
    request = urllib.request.Request(
        server.base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer t"},
    )
    with urllib.request.urlopen(request) as answer:
        usage = json.load(answer)["usage"]
    tokens_in, tokens_out, cached = usage_tokens(usage)
    assert (tokens_in, tokens_out) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert cached == tokens_in // 2 > 0
    assert usage_tokens({"prompt_tokens": 5, "completion_tokens": 2}) == (5, 2, 0)
    assert usage_tokens(None) == (0, 0, 0)
