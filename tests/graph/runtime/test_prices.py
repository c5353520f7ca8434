import json

import pytest

from mmevol.graph.runtime.prices import PriceTable


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
