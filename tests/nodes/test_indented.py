"""The prompts' indented JSON is the text json.dumps(indent=1, ensure_ascii=False) writes."""

from __future__ import annotations

import json
import random

import pytest

from mmevol.graph.items import QAItem
from mmevol.nodes.evolve import items_json
from mmevol.nodes.indented import dumps_indented

ODD_TEXT = ["", "plain", 'quote " and \\ back', "line\nbreak\ttab", "\x00\x1f\x7f", "é 中文 😀",
            "\ud800 lone surrogate", "</script>", "\u2028\u2029"]  # fmt: skip


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "none", "bool"] + (["list", "dict"] * 2 if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(ODD_TEXT) + str(rng.random())
    if kind == "int":
        return rng.choice([0, -1, 7, 2**70, -(2**63)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 1.5, 1e-7, 1e300, 0.1 + 0.2, -3.25])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(ODD_TEXT) + str(n): _random_value(rng, depth + 1)
        for n in range(rng.randint(0, 4))
    }


def test_random_json_values_are_written_as_json_dumps_writes_them():
    rng = random.Random(7)
    for _ in range(2000):
        value = _random_value(rng)
        assert dumps_indented(value) == json.dumps(value, indent=1, ensure_ascii=False)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        [float("inf"), {"x": float("-inf")}],
        {1: "int key", "b": [None]},
        {"t": (1, (2, 3))},
        [True, 1, 1.0, False, 0],
        {"nested": {"deeper": {"deepest": []}, "empty": {}}},
    ],
)
def test_values_outside_plain_json_come_out_as_json_dumps_writes_them(value):
    assert dumps_indented(value) == json.dumps(value, indent=1, ensure_ascii=False)


def test_items_are_shown_in_prompts_as_before():
    items = [
        QAItem.model_validate(
            {
                "question": 'What does the "sign" say?\nLook left.',
                "answer": "STOP — 停",
                "steps": [{"manipulation": "grounding", "description": "find the sign"}],
                "objects": ["sign"],
                "skills": ["OCR"],
            }
        ),
        QAItem.model_validate({"question": "How many?", "answer": "3"}),
    ]
    expected = json.dumps([i.model_dump() for i in items], ensure_ascii=False, indent=1)
    assert items_json(items) == expected
    assert items_json([]) == "[]"
