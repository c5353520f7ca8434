"""Training exports (llava, sharegpt) of a real run against the simulated endpoint, read back
by a strict LLaVA checker and by `datasets`, the library LLaMA-Factory loads them with."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.outputs.authors import export_json
from mmevol.outputs.formats import (
    ExportOptions,
    Record,
    _pairs,
    llava_record,
    parse_rounds,
    write_json_records,
)
from mmevol.outputs.training import export_training


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def authors(demo_run, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("authors") / "evolved.json"
    export_json(demo_run.results_db, out)
    return json.loads(out.read_text())


def kept_rounds(authors, rounds=(1, 2, 3), min_score=None) -> list[tuple[str, int]]:
    """(hash_id, round) of every record the export should make, from the authors' export."""
    expected = []
    for sample in authors:
        for rnd in rounds:
            items = sample.get(f"conversations_v{rnd}") or []
            if min_score is not None:
                items = [i for i in items if i["score"] >= min_score]
            if items:
                expected.append((sample["hash_id"], rnd))
    return expected


def check_llava(records: list[dict], image_root: Path, steps_field: bool = False) -> None:
    """A strict check of the LLaVA(-NeXT) training format."""
    assert isinstance(records, list) and records
    ids = set()
    for rec in records:
        keys = {"id", "image", "conversations"} | ({"steps"} if steps_field else set())
        assert set(rec) == keys, rec.keys()
        assert isinstance(rec["id"], str) and re.fullmatch(r".+_v[0-3]", rec["id"])
        assert rec["id"] not in ids
        ids.add(rec["id"])
        image = rec["image"]
        assert isinstance(image, str) and not Path(image).is_absolute() and ".." not in image
        assert (image_root / image).is_file()
        turns = rec["conversations"]
        assert isinstance(turns, list) and len(turns) >= 2 and len(turns) % 2 == 0
        for n, turn in enumerate(turns):
            assert set(turn) == {"from", "value"}
            assert turn["from"] == ("human" if n % 2 == 0 else "gpt")
            assert isinstance(turn["value"], str) and turn["value"].strip()
        assert turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        assert turns[0]["value"][len("<image>\n") :].strip()
        if steps_field:
            assert len(rec["steps"]) == len(turns) // 2


def ids_of(expected):
    return [f"{h}_v{r}" for h, r in expected]


def test_llava_json_and_jsonl_match_the_kept_rounds(demo_run, authors, tmp_path):
    from datasets import load_dataset

    expected = kept_rounds(authors)
    assert len(expected) > 8  # several kept rounds per sample

    report = export_training(demo_run.results_db, tmp_path / "llava.json", "llava")
    records = json.loads((tmp_path / "llava.json").read_text())
    check_llava(records, demo_run.images)
    assert [r["id"] for r in records] == ids_of(expected)  # seed order, round order
    assert report.written == len(expected) and not report.skipped
    assert report.samples == 8
    by_id = {f"{s['hash_id']}_v{r}": s for s in authors for r in (1, 2, 3)}
    for rec in records:
        sample = by_id[rec["id"]]
        items = sample[f"conversations_v{rec['id'][-1]}"]
        assert len(rec["conversations"]) == 2 * len(items)
        assert rec["image"] == sample["image"]

    export_training(demo_run.results_db, tmp_path / "llava.jsonl", "llava")
    lines = [json.loads(line) for line in (tmp_path / "llava.jsonl").read_text().splitlines()]
    assert lines == records

    for name in ("llava.json", "llava.jsonl"):
        loaded = load_dataset("json", data_files=str(tmp_path / name), split="train")
        assert loaded.num_rows == len(expected)
        assert loaded[0]["conversations"][0]["from"] == "human"
    assert not list(tmp_path.glob("*.part"))


def test_sharegpt_registers_itself_for_llamafactory(demo_run, authors, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "data" / "mmevol_demo.json"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text('{"other": {"file_name": "x.json"}}')
    report = export_training(demo_run.results_db, out, "sharegpt")
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "x.json"}  # other entries kept
    entry = info["mmevol_demo"]
    assert report.files == [tmp_path / "data" / "dataset_info.json"]
    assert entry["formatting"] == "sharegpt"
    # What LLaMA-Factory's sharegpt converter reads, through the entry's mapping.
    data_file = tmp_path / "data" / entry["file_name"]
    loaded = load_dataset("json", data_files=str(data_file), split="train")
    assert loaded.num_rows == len(kept_rounds(authors))
    columns, tags = entry["columns"], entry["tags"]
    assert set(columns) == {"messages", "images"}
    for row in loaded:
        messages = row[columns["messages"]]
        images = row[columns["images"]]
        roles = [m[tags["role_tag"]] for m in messages]
        assert roles == [tags["user_tag"], tags["assistant_tag"]] * (len(messages) // 2)
        texts = [m[tags["content_tag"]] for m in messages]
        assert all(t.strip() for t in texts)
        assert sum(t.count("<image>") for t in texts) == len(images) == 1
        assert texts[0].startswith("<image>")
        assert Path(images[0]).is_absolute() and Path(images[0]).is_file()


def test_rounds_min_score_and_steps(demo_run, authors, tmp_path):
    # --rounds 0 adds one record of seed items per finished sample.
    opts = ExportOptions(rounds=parse_rounds("0-1"))
    export_training(demo_run.results_db, tmp_path / "r01.json", "llava", opts)
    records = json.loads((tmp_path / "r01.json").read_text())
    check_llava(records, demo_run.images)
    v0 = [r for r in records if r["id"].endswith("_v0")]
    assert [r["id"] for r in v0] == [f"{s['hash_id']}_v0" for s in authors]
    assert len(records) - len(v0) == len(kept_rounds(authors, rounds=(1,)))

    scores = sorted(
        {i["score"] for s in authors for r in (1, 2, 3) for i in s[f"conversations_v{r}"]}
    )
    cut = scores[len(scores) // 2]
    report = export_training(
        demo_run.results_db, tmp_path / "min.json", "llava", ExportOptions(min_score=cut)
    )
    records = json.loads((tmp_path / "min.json").read_text())
    assert [r["id"] for r in records] == ids_of(kept_rounds(authors, min_score=cut))
    assert report.below_min_score == len(kept_rounds(authors)) - len(records) > 0

    items = {f"{s['hash_id']}_v{r}": s[f"conversations_v{r}"] for s in authors for r in (1, 2, 3)}
    answers = {}
    for mode in ("inline", "none", "field"):
        out = tmp_path / f"steps-{mode}.json"
        export_training(demo_run.results_db, out, "llava", ExportOptions(steps=mode))
        records = json.loads(out.read_text())
        check_llava(records, demo_run.images, steps_field=mode == "field")
        answers[mode] = {r["id"]: [t["value"] for t in r["conversations"][1::2]] for r in records}
        if mode == "field":
            for rec in records:
                assert [[s["description"] for s in steps] for steps in rec["steps"]] == [
                    [s["description"] for s in i["steps"]] for i in items[rec["id"]]
                ]
    with_steps = 0
    for rid, plain in answers["none"].items():
        assert plain == [i["answer"] for i in items[rid]]
        assert answers["field"][rid] == plain
        for inline, item in zip(answers["inline"][rid], items[rid], strict=True):
            assert inline.endswith(item["answer"])
            if item["steps"]:
                with_steps += 1
                assert inline.startswith("Solving steps:\n1. ")
                assert item["steps"][0]["description"] in inline
    assert with_steps  # the sim writes solving steps


def test_missing_image_is_named_with_sample_and_round(demo_run, authors, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(demo_run.images, images)
    victim = authors[2]
    (images / victim["image"]).unlink()
    lost = [r for h, r in kept_rounds(authors) if h == victim["hash_id"]]
    assert lost

    result = invoke(
        "export", "--run", "demo", "--checkpoints", demo_run.checkpoints,
        "--format", "llava", "--images", images, "-o", tmp_path / "out.jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for rnd in lost:
        assert (
            f"skipped: sample {victim['hash_id']} round {rnd}: image {victim['image']!r} "
            f"not found under {str(images)!r}"
        ) in result.output
    assert f"skipped {len(lost)} records (image missing {len(lost)})" in result.output
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == len(kept_rounds(authors)) - len(lost)


def test_cli_formats_and_bad_options(demo_run, tmp_path):
    ck = demo_run.checkpoints
    result = invoke("export", "--run", "demo", "--checkpoints", ck, "-o", tmp_path / "a.json")
    assert result.exit_code == 0 and "wrote 8 samples" in result.output  # authors by default
    result = invoke(
        "export", "--run", "demo", "--checkpoints", ck, "--format", "sharegpt",
        "--rounds", "2,3", "-o", tmp_path / "s.jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"wrote \d+ sharegpt records from \d+ samples", result.output)
    assert "dataset_info.json" in result.output
    for args, message in (
        (["--format", "llava", "--rounds", "4"], "beyond the run's 3 rounds"),
        (["--format", "llava", "--rounds", "one"], "--rounds takes numbers"),
        (["--format", "llava", "--steps", "maybe"], "--steps must be one of"),
        (["--format", "csv"], "--format must be one of"),
        (["--rounds", "1"], "apply to --format llava, sharegpt or hf"),
        (["--format", "llava", "--image-max-side", "64"], "apply to --format hf only"),
    ):
        result = invoke(
            "export", "--run", "demo", "--checkpoints", ck, "-o", tmp_path / "x.json", *args
        )
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not (tmp_path / "x.json").exists()


def test_stray_image_tokens_are_removed(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    items = [
        {"question": "<image>\nWhat is red?", "answer": "The <image> car.", "score": 7},
        {"question": "And <image> blue?", "answer": "The sky.", "score": 8},
    ]
    record = Record("0_a.jpg", 1, "a.jpg", tmp_path / "a.jpg", _pairs(items, None, 1))
    turns = llava_record(record, "none")["conversations"]
    assert [t["value"] for t in turns] == [
        "<image>\nWhat is red?", "The  car.", "And  blue?", "The sky.",
    ]  # fmt: skip


def test_a_failed_write_leaves_no_output(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("old")

    def records():
        yield {"id": 1}
        raise OSError("disk full")

    from mmevol.outputs.formats import ExportReport

    with pytest.raises(OSError):
        write_json_records(out, records(), ExportReport(out, "llava"), lines=False)
    assert out.read_text() == "old"
    assert not list(tmp_path.glob("*.part"))
