"""`mmevol stats` against numbers computed independently from the authors' export."""

from __future__ import annotations

import json
import statistics
from collections import Counter

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.outputs.authors import export_json
from mmevol.outputs.stats import PAPER, compute_stats, histogram_median


def cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("export") / "authors.json"
    export_json(demo_run.results_db, out)
    return json.loads(out.read_text())


def test_stats_json_agrees_with_the_authors_export(demo_run, exported):
    stats = json.loads(
        cli("stats", "--run", "demo", "--checkpoints", demo_run.checkpoints, "--json")
    )
    assert stats["schema"] == "mmevol.stats/1"
    assert stats["samples"]["by_status"]["done"] == len(exported)
    assert stats["samples"]["by_status"]["failed"] == 4  # the demo seed's four bad rows
    for rnd in stats["rounds"]:
        r = rnd["round"]
        items = [i for row in exported for i in row[f"conversations_v{r}"]]
        scores = [i["score"] for i in items]
        assert rnd["samples_entering"] == len(exported)
        assert rnd["kept"] == len(items)
        assert rnd["empty"] == sum(1 for row in exported if not row[f"conversations_v{r}"])
        assert rnd["mean_score"] == round(statistics.fmean(scores), 3)
        assert rnd["median_score"] == statistics.median(scores)
        assert {int(s): n for s, n in rnd["score_histogram"].items() if n} == Counter(scores)
        assert rnd["kept_share"] == round(rnd["kept"] / rnd["candidates"], 4)
        assert sum(o["kept"] for o in rnd["operators"].values()) == rnd["kept"]
        assert sum(o["samples"] for o in rnd["operators"].values()) == len(exported)
        assert sum(rnd["empty_reasons"].values()) == rnd["empty"]
        assert rnd["paper_kept_share"] == PAPER["kept_share"][r]
        version = stats["versions"][r]
        assert version["items"] == len(items)
        for key, field in (
            ("skills_per_item", "skills"),
            ("steps_per_item", "steps"),
            ("objects_per_item", "objects"),
        ):
            assert version[key] == round(sum(len(i[field]) for i in items) / len(items), 3)
        assert version["question_chars"] == round(
            sum(len(i["question"]) for i in items) / len(items), 3
        )
        assert version["formats"] == dict(Counter(i["format"] for i in items))
    # Items entering round 1 are the seed's usable items; later rounds start from the
    # latest non-empty round, so a round's items in are the previous kept ones where any.
    assert stats["rounds"][0]["items_in"] == stats["versions"][0]["items"]
    for row in exported:
        assert row["conversations_v0"]
    cost = stats["cost"]
    assert cost["kept_items"] == sum(r["kept"] for r in stats["rounds"])
    assert cost["calls"] == sum(n["calls"] for n in cost["by_node"].values()) > 0
    assert set(cost["by_node"]) == {"evolve", "score"}


def test_items_in_follow_the_latest_non_empty_round(demo_run, exported):
    from mmevol.run.seed import prepare

    stats = compute_stats(demo_run.results_db)
    expected = {1: 0, 2: 0, 3: 0}
    for n, row in enumerate(exported):
        current = len(prepare(n, row).sample.seed_items)
        for r in (1, 2, 3):
            expected[r] += current
            current = len(row[f"conversations_v{r}"]) or current
    assert {r["round"]: r["items_in"] for r in stats["rounds"]} == expected


def test_stats_table_shows_the_paper_beside_the_run(demo_run, monkeypatch):
    import mmevol.cli

    monkeypatch.setattr(mmevol.cli.out, "width", 200)  # no folded cells
    text = cli("stats", "--run", "demo", "--checkpoints", demo_run.checkpoints)
    for needle in ("kept share", "0.68 / 0.85 / 0.91", "skills per item", "1.03 -> 1.71"):
        assert needle in text
    assert "cost per kept item" in text


def test_histogram_median():
    assert histogram_median({}) is None
    assert histogram_median({7: 1}) == 7
    assert histogram_median({5: 1, 8: 1}) == 6.5
    assert histogram_median({1: 2, 9: 1}) == 1
    assert histogram_median({3: 2, 4: 2}) == 3.5


def test_a_missing_run_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["stats", "--run", "nope", "--checkpoints", str(tmp_path)])
    assert result.exit_code == 1
    assert "no run named 'nope'" in result.output
