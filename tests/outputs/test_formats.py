"""Training exports (llava, llava-next, sharegpt) of a real run against the simulated endpoint,
read back by a strict LLaVA checker, by `datasets` (which LLaMA-Factory loads them with), and by
the rules of the trainers' own loading code (LLaVA-1.5 and LLaVA-NeXT's LazySupervisedDataset,
LLaMA-Factory's sharegpt converter and placeholder count), written here from reading it."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sqlite3
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


# -- the trainers' rules -----------------------------------------------------------------


def llava15_load(data_path: Path) -> list[dict]:
    """LLaVA-1.5's LazySupervisedDataset reads --data_path with json.load, whatever its suffix."""
    with open(data_path) as fh:
        return json.load(fh)


def llava_next_load(data_path: Path) -> list[dict]:
    """LLaVA-NeXT: a .yaml lists `datasets` of json_path (.jsonl read line by line, .json with
    json.load) and sampling_strategy; any other --data_path is read with json.load."""
    import yaml

    if not str(data_path).endswith(".yaml"):
        return llava15_load(data_path)
    records = []
    for dataset in yaml.safe_load(Path(data_path).read_text())["datasets"]:
        json_path = dataset["json_path"]  # opened from the trainer's working folder
        assert dataset.get("sampling_strategy", "all") == "all"
        if json_path.endswith(".jsonl"):
            with open(json_path) as fh:
                records.extend(json.loads(line.strip()) for line in fh)
        elif json_path.endswith(".json"):
            records.extend(llava15_load(Path(json_path)))
        else:
            raise ValueError(f"Unsupported file type: {json_path}")
    return records


def llava_getitem(record: dict, image_folder: Path) -> list[dict]:
    """What LazySupervisedDataset.__getitem__ does with a record, up to tokenising.

    The image opens at os.path.join(image_folder, image); preprocess_multimodal moves the
    <image> of a turn to its front, followed by a newline; preprocess_v1 drops a first turn
    that is not human's, then needs human/gpt to alternate; tokenizer_image_token splits the
    prompt on <image>, one image token per image: exactly one for the record's one image.
    """
    from PIL import Image

    with Image.open(os.path.join(image_folder, record["image"])) as img:
        img.convert("RGB")
    turns = copy.deepcopy(record["conversations"])
    for turn in turns:
        if "<image>" in turn["value"]:
            turn["value"] = ("<image>\n" + turn["value"].replace("<image>", "").strip()).strip()
    if turns[0]["from"] != "human":
        turns = turns[1:]
    for n, turn in enumerate(turns):
        assert turn["from"] == ("human", "gpt")[n % 2]
    prompt = "".join(t["value"] for t in turns)
    assert len(prompt.split("<image>")) - 1 == 1
    return turns


LLAMAFACTORY_PLACEHOLDERS = ("<image>", "<video>", "<audio>")


def llamafactory_row(row: dict, entry: dict, media_dir: Path) -> dict:
    """LLaMA-Factory's SharegptDatasetConverter and mm_plugin._validate_messages on one row.

    Roles are mapped through the entry's tags and must alternate user/assistant with an
    even count; each image path is joined to media_dir when the file is there (else kept
    as it is); then the count of each placeholder in the text must equal the record's
    images, videos and audios (none of the last two), or preprocessing stops.
    """
    columns, tags = entry["columns"], entry["tags"]
    messages = row[columns["messages"]]
    roles = [m[tags["role_tag"]] for m in messages]
    assert roles == [tags["user_tag"], tags["assistant_tag"]] * (len(messages) // 2)
    assert len(messages) % 2 == 0
    images = []
    for path in row[columns["images"]]:
        joined = os.path.join(media_dir, path)
        images.append(joined if os.path.isfile(joined) else path)
    assert all(os.path.isfile(p) for p in images)
    texts = [m[tags["content_tag"]] for m in messages]
    counts = [sum(t.count(token) for t in texts) for token in LLAMAFACTORY_PLACEHOLDERS]
    if counts != [len(images), 0, 0]:
        raise ValueError(f"placeholders {counts} for {len(images)} images, 0 videos, 0 audios")
    return {"messages": messages, "images": images}


def copy_run(demo_run, tmp_path: Path) -> Path:
    """A writable copy of the demo run's checkpoints folder."""
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(demo_run.checkpoints, checkpoints)
    return checkpoints


def cli_export(checkpoints: Path, *args):
    return invoke("export", "--run", "demo", "--checkpoints", checkpoints, *args)


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

    assert llava15_load(tmp_path / "llava.json") == records
    for rec in records:
        llava_getitem(rec, demo_run.images)

    report = export_training(demo_run.results_db, tmp_path / "llava.jsonl", "llava")
    lines = [json.loads(line) for line in (tmp_path / "llava.jsonl").read_text().splitlines()]
    assert lines == records
    # LLaVA-1.5 cannot read JSON lines, and the export says so.
    with pytest.raises(json.JSONDecodeError):
        llava15_load(tmp_path / "llava.jsonl")
    assert any("LLaVA-1.5 reads --data_path with json.load" in n for n in report.notes)

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
        converted = llamafactory_row(row, entry, media_dir=tmp_path / "data")
        texts = [m[tags["content_tag"]] for m in converted["messages"]]
        assert all(t.strip() for t in texts)
        assert texts[0].startswith("<image>") and len(converted["images"]) == 1
        assert Path(row["images"][0]).is_absolute() and Path(row["images"][0]).is_file()


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
        (["--rounds", "1"], "apply to --format llava, llava-next, sharegpt or hf"),
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


def test_llava_next_gets_the_yaml_it_reads(demo_run, authors, tmp_path):
    expected = ids_of(kept_rounds(authors))
    for name in ("next.jsonl", "next.json"):
        result = cli_export(demo_run.checkpoints, "--format", "llava-next", "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        data_yaml = (tmp_path / name).with_suffix(".yaml")
        assert f"wrote {data_yaml}" in result.output
        assert "--data_path set to the .yaml" in result.output
        other = tmp_path / "elsewhere"  # the trainer runs from another folder
        other.mkdir(exist_ok=True)
        cwd = os.getcwd()
        os.chdir(other)
        try:
            records = llava_next_load(data_yaml)
        finally:
            os.chdir(cwd)
        assert [r["id"] for r in records] == expected
        check_llava(records, demo_run.images)
        for rec in records:
            llava_getitem(rec, demo_run.images)


def test_every_format_honours_the_suffix_or_refuses_it(demo_run, tmp_path):
    ck = demo_run.checkpoints
    # authors: .jsonl is JSON lines, .json (and anything else) the list it always was.
    assert cli_export(ck, "-o", tmp_path / "a.json").exit_code == 0
    assert cli_export(ck, "-o", tmp_path / "a.jsonl").exit_code == 0
    listed = json.loads((tmp_path / "a.json").read_text())
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == listed and len(lines) == 8
    for fmt, name, message in (
        ("llava", "x.txt", "writes .json (a JSON list) or .jsonl (JSON lines)"),
        ("sharegpt", "x.parquet", "writes .json (a JSON list) or .jsonl (JSON lines)"),
        ("llava-next", "x.yaml", "writes .json (a JSON list) or .jsonl (JSON lines)"),
        ("hf", "x.jsonl", "--format hf writes a folder"),
    ):
        result = cli_export(ck, "--format", fmt, "-o", tmp_path / name)
        assert result.exit_code == 1 and message in result.output, (fmt, result.output)
        assert not (tmp_path / name).exists()


def test_trainer_placeholders_in_text_are_removed_and_counted(demo_run, authors, tmp_path):
    # A question mentioning <video> made LLaMA-Factory's _validate_messages raise.
    checkpoints = copy_run(demo_run, tmp_path)
    db = checkpoints / "demo" / "results.db"
    victim = authors[1]["hash_id"]
    with sqlite3.connect(db) as conn:
        conn.execute(
            "update items set item = json_set(item, '$.question',"
            " 'Is this frame from a <video> or a photo? <|image_pad|>',"
            " '$.answer', 'A photo; no <audio> either.')"
            " where hash_id = ? and round = 1 and position = 0",
            [victim],
        )
        assert conn.total_changes == 1
    out = tmp_path / "data" / "mmevol.json"
    result = cli_export(checkpoints, "--format", "sharegpt", "-o", out)
    assert result.exit_code == 0, result.output
    assert (
        "removed trainer placeholders from the text (<video> 1, <|image_pad|> 1, <audio> 1)"
    ) in result.output
    entry = json.loads((tmp_path / "data" / "dataset_info.json").read_text())["mmevol"]
    rows = json.loads(out.read_text())
    for row in rows:
        llamafactory_row(row, entry, media_dir=tmp_path / "data")
    (row,) = [r for r in rows if r["id"] == f"{victim}_v1"]
    assert row["messages"][0]["content"].startswith("<image>Is this frame from a  or a photo?")
    assert row["messages"][1]["content"].endswith("A photo; no  either.")


def test_relative_to_makes_a_set_that_moves(demo_run, authors, tmp_path):
    media = tmp_path / "media"
    shutil.copytree(demo_run.images, media / "imgs")
    llava = tmp_path / "train" / "llava.json"
    share = tmp_path / "train" / "share.jsonl"
    for fmt, out in (("llava", llava), ("sharegpt", share)):
        result = cli_export(
            demo_run.checkpoints, "--format", fmt, "--images", media / "imgs",
            "--relative-to", media, "-o", out,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert "set media_dir to that folder" in result.output
    # Another machine: the images and the data in other folders.
    moved = tmp_path / "elsewhere" / "media"
    moved.parent.mkdir()
    shutil.move(media, moved)
    records = llava15_load(llava)
    assert [r["id"] for r in records] == ids_of(kept_rounds(authors))
    assert [r["image"] for r in records] == [f"imgs/{a}" for a in images_of(records, authors)]
    for rec in records:
        llava_getitem(rec, moved)
    entry = json.loads((share.parent / "dataset_info.json").read_text())["share"]
    rows = [json.loads(line) for line in share.read_text().splitlines()]
    for row in rows:
        assert not Path(row["images"][0]).is_absolute()
        converted = llamafactory_row(row, entry, media_dir=moved)
        assert Path(converted["images"][0]).is_file()

    result = cli_export(
        demo_run.checkpoints, "--format", "llava", "--relative-to", tmp_path / "nowhere",
        "-o", tmp_path / "x.json",
    )  # fmt: skip
    assert result.exit_code == 1 and "is not inside it" in result.output
    result = cli_export(
        demo_run.checkpoints, "--format", "hf", "--relative-to", tmp_path, "-o", tmp_path / "h"
    )
    assert result.exit_code == 1 and "--relative-to applies to" in result.output


def images_of(records, authors):
    by_hash = {s["hash_id"]: s["image"] for s in authors}
    return [by_hash[r["id"].rsplit("_v", 1)[0]] for r in records]


BOX = re.compile(r"\[([-\d., ]+)\]")


def boxes_in(records) -> list[list[float]]:
    found = []
    for rec in records:
        for turn in rec["conversations"]:
            for match in BOX.finditer(turn["value"]):
                values = [float(v) for v in match[1].split(",")]
                if len(values) == 4:
                    found.append(values)
    return found


def test_boxes_become_0_1000_or_pixels(demo_run, authors, tmp_path):
    from PIL import Image

    exported = {}
    for mode in ("unit", "1000", "pixels"):
        out = tmp_path / f"{mode}.json"
        report = export_training(
            demo_run.results_db, out, "llava", ExportOptions(boxes=mode, steps="inline")
        )
        exported[mode] = json.loads(out.read_text())
        if mode == "unit":
            assert not report.boxes  # the default writes the text as it is
        else:
            assert report.boxes["converted"] == len(boxes_in(exported["unit"])) > 0
    unit = exported["unit"]
    sizes = {}
    for rec in unit:
        with Image.open(demo_run.images / rec["image"]) as img:
            sizes[rec["id"]] = img.size
    for mode in ("1000", "pixels"):
        assert [r["id"] for r in exported[mode]] == [r["id"] for r in unit]
        for before, after in zip(unit, exported[mode], strict=True):
            width, height = (1000, 1000) if mode == "1000" else sizes[before["id"]]
            scale = [width, height, width, height]
            old, new = boxes_in([before]), boxes_in([after])
            assert len(old) == len(new)
            for box, converted in zip(old, new, strict=True):
                assert all(v == int(v) for v in converted)
                assert converted == [round(v * s) for v, s in zip(box, scale, strict=True)]
            # Nothing else in the text changed.
            strip = [BOX.sub("[]", t["value"]) for t in before["conversations"]]
            assert strip == [BOX.sub("[]", t["value"]) for t in after["conversations"]]
    result = cli_export(demo_run.checkpoints, "--format", "llava", "--boxes", "cm",
                        "-o", tmp_path / "x.json")  # fmt: skip
    assert result.exit_code == 1 and "--boxes must be one of unit, 1000, pixels" in result.output


def test_split_is_decided_by_hash_id(demo_run, authors, tmp_path):
    from mmevol.outputs.formats import parse_split, split_of

    whole = tmp_path / "whole.json"
    export_training(demo_run.results_db, whole, "sharegpt")
    result = cli_export(
        demo_run.checkpoints, "--format", "sharegpt", "--split", "val=0.4",
        "-o", tmp_path / "data" / "mm.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "data" / "mm_train.json").read_text())
    val = json.loads((tmp_path / "data" / "mm_val.json").read_text())
    assert train and val  # 8 samples at 0.4: both splits have some
    assert f"splits train {len(train)}, val {len(val)}" in result.output
    assert not (tmp_path / "data" / "mm.json").exists()
    rows = json.loads(whole.read_text())
    # Every record once, and all of a sample's records in the same split, in seed order.
    assert sorted(r["id"] for r in train + val) == sorted(r["id"] for r in rows)
    for name, part in (("train", train), ("val", val)):
        assert [r["id"] for r in part] == [
            r["id"] for r in rows if split_of(r["id"].rsplit("_v", 1)[0], ("val", 0.4)) == name
        ]
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    assert info["mm_train"]["file_name"] == "mm_train.json"
    assert info["mm_val"]["file_name"] == "mm_val.json"
    # The same samples go to val in a re-export (and in a shard's export: by hash_id alone).
    again = tmp_path / "again.json"
    export_training(
        demo_run.results_db, again, "llava", ExportOptions(split=parse_split("val=0.4"))
    )
    assert [r["id"] for r in json.loads((tmp_path / "again_val.json").read_text())] == [
        r["id"] for r in val
    ]
    for bad in ("val", "train=0.1", "val=1.5", "val=x", "v-al=0.1"):
        with pytest.raises(ValueError, match="--split takes NAME=FRACTION"):
            parse_split(bad)
