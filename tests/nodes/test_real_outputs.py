"""Real GPT-4o-mini round-1 answers (evolution and judge) through the parsers and the checks.

The expected counts are established without ``parse_items`` / ``parse_verdicts``: the
fenced part of each answer is cut out with plain string search, decoded by ``json_repair``
and its objects counted; the count of ``"question":`` keys in that part must agree.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import json_repair
import pytest

from mmevol.graph.items import QAItem
from mmevol.nodes.checks import screen
from mmevol.nodes.parsing import parse_items, parse_verdicts
from mmevol.run.seed import prepare

DEMO = Path(__file__).parents[2].parent / "shared" / "mmevol-demo"
RAW = DEMO / "round1_raw_outputs"
SEED = DEMO / "seed_1612.jsonl"

pytestmark = pytest.mark.skipif(not (RAW / "evolution").is_dir(), reason=f"{RAW} is not available")

NAMES = sorted(p.stem for p in (RAW / "evolution").glob("*.txt")) if RAW.is_dir() else []
# A 4-number bracket, the only way these answers write a box.
BOX = re.compile(r"\[\s*(\d*\.?\d+)\s*,\s*(\d*\.?\d+)\s*,\s*(\d*\.?\d+)\s*,\s*(\d*\.?\d+)\s*\]")


def fenced(text: str) -> str:
    """Cut out the body of the first fence (or the whole text when there is none)."""
    opening = text.find("```")
    if opening < 0:
        return text
    body_start = text.index("\n", opening) + 1
    closing = text.find("```", body_start)
    return text[body_start : closing if closing >= 0 else len(text)]


def objects_with(text: str, key: str) -> list[dict]:
    """Decode the fenced JSON independently and return the objects that have ``key``."""
    value = json_repair.loads(fenced(text))
    entries = value if isinstance(value, list) else [value]
    return [e for e in entries if isinstance(e, dict) and key in e]


def answer_text(answer: str | list) -> str:
    return "\n".join(answer).strip() if isinstance(answer, list) else answer.strip()


def read(kind: str, name: str) -> str:
    return (RAW / kind / f"{name}.txt").read_text(encoding="utf-8")


@cache
def seed_rows() -> dict:
    """Prepare the seed rows that have a recorded answer, joined by hash_id."""
    wanted, rows = set(NAMES), {}
    with SEED.open(encoding="utf-8") as fh:
        for index, line in enumerate(line for line in fh if line.strip()):
            raw = json.loads(line)
            hash_id = raw.get("hash_id") or f"{index}_{raw['image'].replace('/', '_')}"
            if hash_id in wanted:
                row = prepare(index, raw)
                assert row.hash_id == hash_id and row.sample is not None, row.error
                rows[hash_id] = row.sample
    return rows


def test_the_recorded_set_is_complete():
    assert len(NAMES) == 50
    assert sorted(p.stem for p in (RAW / "scoring").glob("*.txt")) == NAMES
    operators = json.loads((RAW / "operators.json").read_text())
    assert sorted(operators) == NAMES
    assert set(operators.values()) == {"bf_in_breath", "df_cot", "df_format"}


@pytest.mark.parametrize("name", NAMES)
def test_every_evolution_answer_recovers_every_item(name):
    text = read("evolution", name)
    expected = objects_with(text, "question")
    # A second, cruder count: "question" keys in the fenced text (no item nests another).
    assert len(re.findall(r'"question"\s*:', fenced(text))) == len(expected) > 0
    parsed = parse_items(text)
    assert parsed.rejected == []
    assert [i.question for i in parsed.items] == [e["question"].strip() for e in expected]
    # Two recorded answers are lists of sentences: they are joined line by line.
    assert [i.answer for i in parsed.items] == [answer_text(e["answer"]) for e in expected]
    for item, raw in zip(parsed.items, expected, strict=True):
        assert len(item.steps) == len(raw.get("steps", []))
        assert item.objects == raw.get("objects", [])


@pytest.mark.parametrize("name", NAMES)
def test_every_judge_answer_gives_one_integer_verdict_per_entry(name):
    text = read("scoring", name)
    expected = objects_with(text, "improved")
    verdicts = parse_verdicts(text)
    assert len(verdicts) == len(expected) > 0
    assert all(v is not None for v in verdicts)
    for verdict, raw in zip(verdicts, expected, strict=True):
        assert isinstance(verdict.score, int) and 0 <= verdict.score <= 10
        assert verdict.score == int(raw["score"])
        assert verdict.improved is (str(raw["improved"]).strip().lower() == "yes")
    # Where the judge answered one verdict per item (all 50 recorded answers, as it
    # happens), the parsed counts agree too.
    items = objects_with(read("evolution", name), "question")
    if len(expected) == len(items):
        assert len(verdicts) == len(parse_items(read("evolution", name)).items)


def test_verdict_counts_against_item_counts():
    matches = [
        len(parse_verdicts(read("scoring", n))) == len(parse_items(read("evolution", n)).items)
        for n in NAMES
    ]
    # METHOD.md warns that the judge sometimes returns another count; these 50 never do.
    assert (matches.count(True), matches.count(False)) == (50, 0)


def test_checks_on_real_items():
    rows = seed_rows()
    assert sorted(rows) == NAMES
    total, reasons, boxed = 0, Counter(), 0
    for name in NAMES:
        sample = rows[name]
        items = parse_items(read("evolution", name)).items
        boxes = [b.bbox for b in sample.boxes]
        # Independently: every box these answers write is a copy of one of the sample's boxes.
        for item in items:
            texts = [item.question, item.answer] + [s.description for s in item.steps]
            for match in BOX.finditer(" ".join(texts)):
                boxed += 1
                written = [float(g) for g in match.groups()]
                assert any(
                    all(abs(a - b) < 0.0055 for a, b in zip(written, box, strict=True))
                    for box in boxes
                ), (name, written)
        kept, dropped = screen(items, boxes, sample.seed_items)
        assert len(kept) + len(dropped) == len(items)
        assert all(isinstance(k, QAItem) for k in kept)
        total += len(items)
        reasons.update(reason.split(":")[0] for _, reason in dropped)
    assert total == 228 and boxed > 0
    # No recorded item writes an invented box or asks for coordinates without boxes.
    assert not any("coordinates" in r or "localisation" in r for r in reasons)
    # A guard against an over-eager check, not a figure to match: GPT-4o-mini's items
    # are nearly all within the rules (none was dropped when this test was written).
    assert sum(reasons.values()) <= 0.05 * total, reasons
