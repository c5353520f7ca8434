"""Quality gates end to end, and each export filter leaving out exactly the planted cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmevol.graph.config import Settings
from mmevol.outputs.authors import export_json
from mmevol.outputs.filters import FilterOptions, HashIndex, QuestionIndex, normal_text
from mmevol.run import runner
from mmevol.sim.answers import answers_blind
from mmevol.sim.demo_seed import make_demo_seed
from mmevol.sim.server import SimOptions, SimServer
from mmevol.store.results import Store

SIM = SimOptions(seed=0, blind_rate=0.4)
PLANTED = "planted-duplicate"


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory) -> tuple[Settings, Path, dict]:
    """A run with both gates over 6 samples plus one planted duplicate image under another id."""
    tmp = tmp_path_factory.mktemp("gated")
    seed_path, images = make_demo_seed(tmp / "seed", n=6, seed=5)
    rows = [json.loads(line) for line in seed_path.read_text().splitlines() if line.strip()]
    original = rows[2]
    # The same picture, re-encoded smaller under another name: a near-duplicate image.
    with Image.open(images / original["image"]) as image:
        image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(images / "copy_of_2.png")
    planted = dict(original, id=PLANTED, hash_id=PLANTED, image="copy_of_2.png")
    rows.append(planted)
    seed_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with SimServer(SIM) as server:
        settings = Settings(
            run="gated", checkpoints=tmp / "ck", images=images, base_url=server.base_url,
            api_key="sim", concurrency=4, gates="judge2,blind",
        )  # fmt: skip
        report = runner.run(settings, seed_path)
        kinds = server.stats()["by_kind"]
    assert report.done == len(rows)
    plain = tmp / "plain.json"
    export_json(settings.results_db, plain)
    return settings, plain, kinds


def _items(export: list[dict]) -> list[tuple[str, int, str]]:
    return [
        (s["hash_id"], r, item["question"])
        for s in export
        for r in (1, 2, 3)
        for item in s.get(f"conversations_v{r}") or []
    ]


def test_gates_record_one_row_per_kept_item_through_recorded_calls(gated_run):
    settings, plain, kinds = gated_run
    assert settings.gates == "blind,judge2"
    assert kinds["blind"] > 0 and kinds["blind_judge"] > 0
    with Store(settings.results_db) as store:
        assert store.count("gates") == store.count("items")
        nodes = {r["node"] for r in store.db.query("select distinct node from calls")}
        assert {"blind", "score_blind", "judge2"} <= nodes
        verdicts = {r["blind_verdict"] for r in store.rows("gates")}
        agreements = [r["agreement"] for r in store.rows("gates")]
    assert verdicts == {"answerable", "needs_image"}
    assert all(a is None or 0 <= a <= 1 for a in agreements)


def test_a_run_without_gates_makes_no_gate_call(sim, make_settings, demo_seed):
    seed_path, images = demo_seed
    settings = make_settings(sim, images, limit=3)
    runner.run(settings, seed_path)
    assert set(sim.stats()["by_kind"]) == {"evolve", "score", "other"}
    with Store(settings.results_db) as store:
        assert store.count("gates") == 0


def test_require_image_leaves_out_exactly_what_the_sim_answers_blind(gated_run, tmp_path):
    settings, plain, _ = gated_run
    before = _items(json.loads(plain.read_text()))
    out = tmp_path / "filtered.json"
    result = export_json(settings.results_db, out, FilterOptions(require_image=True))
    after = _items(json.loads(out.read_text()))
    blind = [i for i in before if answers_blind(i[2], SIM)]
    assert 0 < len(blind) < len(before)
    assert after == [i for i in before if not answers_blind(i[2], SIM)]
    assert result.filtered.left_out["require-image"] == len(blind)
    assert result.filtered.checked["require-image"] == len(before)


def test_min_agreement_leaves_out_the_items_the_second_judge_disagreed_on(gated_run, tmp_path):
    settings, plain, _ = gated_run
    with Store(settings.results_db) as store:
        low = {
            (r["hash_id"], r["round"], r["position"])
            for r in store.rows("gates")
            if r["agreement"] is not None and r["agreement"] < 0.8
        }
    assert low
    out = tmp_path / "filtered.json"
    result = export_json(settings.results_db, out, FilterOptions(min_agreement=0.8))
    before, after = json.loads(plain.read_text()), json.loads(out.read_text())
    expected = [
        [
            item
            for n, item in enumerate(s.get(f"conversations_v{r}") or [])
            if (s["hash_id"], r, n) not in low
        ]
        for s in before
        for r in (1, 2, 3)
    ]
    assert [s.get(f"conversations_v{r}") or [] for s in after for r in (1, 2, 3)] == expected
    assert result.filtered.left_out["min-agreement"] == len(low)


def test_dedup_leaves_out_the_duplicated_image_under_another_id(gated_run, tmp_path):
    settings, plain, _ = gated_run
    out = tmp_path / "filtered.json"
    # Question dedup off (similarity 1.0 = identical text only) to see the image part alone.
    result = export_json(
        settings.results_db, out, FilterOptions(dedup=True, question_similarity=1.0)
    )
    before = json.loads(plain.read_text())
    after = json.loads(out.read_text())
    assert [s["hash_id"] for s in after] == [
        s["hash_id"] for s in before if s["hash_id"] != PLANTED
    ]
    assert result.filtered.samples_left_out["dedup"] == 1


def test_dedup_of_questions_keeps_the_first_in_seed_order(gated_run, tmp_path):
    settings, plain, _ = gated_run
    out = tmp_path / "filtered.json"
    export_json(settings.results_db, out, FilterOptions(dedup=True))
    after = _items(json.loads(out.read_text()))
    texts = [normal_text(q) for _, _, q in after]
    assert len(set(texts)) == len(texts)  # no two exported questions alike
    before = _items(json.loads(plain.read_text()))
    first = {}
    for item in before:
        first.setdefault(normal_text(item[2]), item)
    # Every exported question is the first of its text (the earlier copies stay).
    assert all(first[normal_text(q)] == (h, r, q) for h, r, q in after)


def _grams(text: str) -> set[str]:
    return {text[i : i + 5] for i in range(max(1, len(text) - 4))}


def _jaccard(a: str, b: str) -> float:
    x, y = _grams(a), _grams(b)
    return len(x & y) / len(x | y)


def _passages(text: str, n: int = 13) -> set[str]:
    words = text.split()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def _apart(a: str, b: str) -> bool:
    return _jaccard(a, b) < 0.5 and not _passages(a) & _passages(b)


def test_decontaminate_leaves_out_planted_benchmark_questions(gated_run, tmp_path):
    settings, plain, _ = gated_run
    before = _items(json.loads(plain.read_text()))
    texts = sorted({normal_text(q) for _, _, q in before})
    # Plant two questions with no near-duplicate among the others (exact Jaccard < 0.5, no
    # shared 13-word passage): exactly their items (and identical copies) must match.
    isolated = [t for t in texts if all(_apart(t, u) for u in texts if u != t)]
    assert len(isolated) >= 2
    hit = {isolated[0], isolated[-1]}
    questions = {normal_text(q): q for _, _, q in before}
    bench = tmp_path / "bench.jsonl"
    bench.write_text(
        json.dumps({"question": questions[isolated[0]].upper() + " ?"})
        + "\n"
        + json.dumps(
            {"conversations": [{"from": "human", "value": "<image>\n" + questions[isolated[-1]]}]}
        )
        + "\n"
        + json.dumps({"question": "What is the capital city of the country shown on the map?"})
        + "\n"
    )
    out = tmp_path / "filtered.json"
    result = export_json(settings.results_db, out, FilterOptions(decontaminate=(bench,)))
    after = _items(json.loads(out.read_text()))
    assert after == [i for i in before if normal_text(i[2]) not in hit], result.filtered.examples
    assert result.filtered.left_out["decontaminate"] == len(before) - len(after) >= 2


def test_decontaminate_images_leaves_out_samples_showing_a_benchmark_image(gated_run, tmp_path):
    settings, plain, _ = gated_run
    before = json.loads(plain.read_text())
    target = before[1]
    folder = tmp_path / "bench_images"
    folder.mkdir()
    with Image.open(settings.images / target["image"]) as image:
        image.convert("L").save(folder / "bench.png")  # greyscale copy: still the same picture
    out = tmp_path / "filtered.json"
    result = export_json(settings.results_db, out, FilterOptions(decontaminate_images=folder))
    after = json.loads(out.read_text())
    assert [s["hash_id"] for s in after] == [
        s["hash_id"] for s in before if s["image"] != target["image"]
    ]
    assert result.filtered.samples_left_out["decontaminate"] == 1


def test_llava_export_applies_the_filters_too(gated_run, tmp_path):
    from mmevol.outputs.formats import ExportOptions, export_records

    settings, plain, _ = gated_run
    before = _items(json.loads(plain.read_text()))
    out = tmp_path / "llava.json"
    report = export_records(
        settings.results_db, out, "llava", ExportOptions(filters=FilterOptions(require_image=True))
    )
    blind = [i for i in before if answers_blind(i[2], SIM)]
    assert report.filtered.left_out["require-image"] == len(blind)
    assert "require-image" in report.summary()


def test_hash_index_finds_within_the_distance_only():
    index = HashIndex(4)
    index.add(0b1011 << 40, "a")
    assert index.find((0b1011 << 40) ^ 0b1111) == "a"  # 4 bits apart
    assert index.find((0b1011 << 40) ^ 0b11111) is None  # 5 bits apart


def test_question_index_finds_near_duplicates():
    index = QuestionIndex(0.8)
    index.add(normal_text("What colour is the large car parked on the left side?"), "a")
    assert index.find(normal_text("What colour is the large car parked on the left side ?")) == "a"
    assert index.find(normal_text("How many people are sitting on the bench?")) is None


def test_bad_filter_options_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="--min-agreement"):
        FilterOptions(min_agreement=2)
    with pytest.raises(ValueError, match="no such file"):
        FilterOptions(decontaminate=(tmp_path / "missing.json",))
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_stats_quality_section_counts_each_gate(gated_run):
    from mmevol.outputs.stats import compute_stats, tables

    settings, plain, _ = gated_run
    stats = compute_stats(settings.results_db)
    quality = stats["quality"]
    assert quality["gates"] == ["blind", "judge2"]
    with Store(settings.results_db) as store:
        rows = store.rows("gates")
    answerable = sum(r["blind_verdict"] == "answerable" for r in rows)
    assert quality["blind"]["flagged"] == answerable
    assert quality["blind"]["checked"] == sum(r["blind_verdict"] is not None for r in rows)
    assert sum(r["flagged"] for r in quality["blind"]["per_round"].values()) == answerable
    assert sum(r["flagged"] for r in quality["blind"]["per_operator"].values()) == answerable
    assert quality["judge2"]["flagged"] == sum(r["judge2_improved"] == 0 for r in rows)
    assert any(title == "Quality gates" for title, _, _ in tables(stats))


def test_stats_of_a_run_without_gates_has_an_empty_quality_section(demo_run):
    from mmevol.outputs.stats import compute_stats, tables

    stats = compute_stats(demo_run.results_db)
    assert stats["quality"] == {"gates": []}
    assert all(title != "Quality gates" for title, _, _ in tables(stats))


# Reported by a trial on a fresh clone: each of these exported with "0 of N items left
# out", as though the items had been checked, when nothing was checked at all.


@pytest.mark.parametrize(
    "content", ['{"a": 1}', "[1, 2, 3]", "", '[{"answer": "no question key"}]', '["", "  "]']
)
def test_a_benchmark_file_without_questions_is_refused(gated_run, tmp_path, content):
    settings, _, _ = gated_run
    bench = tmp_path / "bench.json"
    bench.write_text(content)
    with pytest.raises(ValueError, match="bench.json': no benchmark question found"):
        export_json(
            settings.results_db, tmp_path / "out.json", FilterOptions(decontaminate=(bench,))
        )
    assert not (tmp_path / "out.json").exists()


def test_a_benchmark_folder_without_images_is_refused(gated_run, tmp_path):
    settings, _, _ = gated_run
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "notes.txt").write_text("no images here")
    options = FilterOptions(decontaminate_images=tmp_path / "bench")
    with pytest.raises(ValueError, match="no readable image found"):
        export_json(settings.results_db, tmp_path / "out.json", options)


def test_a_folder_given_as_benchmark_file_says_so(tmp_path):
    with pytest.raises(ValueError, match="a folder, not a file"):
        FilterOptions(decontaminate=(tmp_path,))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (FilterOptions(require_image=True), "--require-image needs a run made with --gates blind"),
        (FilterOptions(min_agreement=0.5), "--min-agreement needs a run made with --gates judge2"),
    ],
)
def test_gate_filters_on_a_run_without_that_gate_are_refused(demo_run, tmp_path, options, message):
    with pytest.raises(ValueError, match=f"{message}; this run has no gates"):
        export_json(demo_run.results_db, tmp_path / "out.json", options)
    assert not (tmp_path / "out.json").exists()
