import json
import os

import pytest

from mmevol.outputs.authors import export_json
from mmevol.run import runner, seed
from mmevol.run.seed import SeedRow, count_rows, hash_id_for, read_seed, row_key, turns_to_items

GOOD = {
    "id": "42",
    "image": "coco/train2017/0001.jpg",
    "conversations_v0": [{"question": "What is this?", "answer": "A cat."}],
    "caption": [
        {"from": "human", "value": "<image>\nDescribe."},
        {"from": "gpt", "value": "A cat on a mat."},
    ],
    "det": [{"label": "cat", "bbox": [0.1, 0.2, 0.3, 0.4], "confidence": 0.9}],
}


def test_jsonl_rows_computed_hash_id_caption_and_boxes(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps({**GOOD, "hash_id": "custom"}) + "\n")
    rows = list(read_seed(path))
    assert [r.hash_id for r in rows] == ["0_coco_train2017_0001.jpg", "custom"]
    sample = rows[0].sample
    assert sample.caption == "A cat on a mat."
    assert sample.boxes[0].bbox == [0.1, 0.2, 0.3, 0.4]
    assert sample.seed_items[0].format == "Norm"
    assert rows[0].raw == GOOD  # kept whole for the export
    assert count_rows(path) == 2


def test_json_list_is_streamed(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "image": "b.png"}], indent=2))
    rows = list(read_seed(path))
    assert [r.hash_id for r in rows] == [hash_id_for(0, GOOD["image"]), "1_b.png"]
    assert count_rows(path) is None


def test_folder_of_json_files(tmp_path):
    for n in range(3):
        (tmp_path / f"{n:03d}.json").write_text(json.dumps({**GOOD, "image": f"{n}.jpg"}))
    assert [r.hash_id for r in read_seed(tmp_path)] == ["0_0.jpg", "1_1.jpg", "2_2.jpg"]


def test_llava_turns_become_items(tmp_path):
    turns = [
        {"from": "human", "value": "<image>\nWhat colour?"},
        {"from": "gpt", "value": "Blue."},
        {"from": "human", "value": "How many?"},
        {"from": "gpt", "value": "Two."},
    ]
    assert turns_to_items(turns) == [
        {"question": "What colour?", "answer": "Blue."},
        {"question": "How many?", "answer": "Two."},
    ]
    with pytest.raises(ValueError, match="no answer"):
        turns_to_items(turns[:1])


def test_malformed_rows_fail_alone_with_position_and_id(tmp_path):
    path = tmp_path / "seed.jsonl"
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({"id": "7", "image": 5}),
        json.dumps({**GOOD, "det": [{"label": "x", "bbox": [0.1, 0.2]}]}),
        json.dumps({**GOOD, "conversations_v0": []}),
        json.dumps([1, 2]),
        json.dumps(GOOD),
    ]
    path.write_text("\n".join(lines) + "\n")
    rows = list(read_seed(path))
    assert [r.error is None for r in rows] == [True, False, False, True, False, False, True]
    assert rows[1].error.startswith("row 1: invalid JSON")
    assert rows[2].error.startswith("row 2 (id 7): invalid sample:")
    assert "conversations_v0" in rows[2].error and "image" in rows[2].error
    assert "4 numbers" in rows[3].skipped_items[0][1]  # a bad box is left out, not the row
    assert "holds no Q&A item" in rows[4].error
    assert rows[5].error == "row 5: not a JSON object"
    assert rows[6].hash_id == "6_coco_train2017_0001.jpg"


def test_broken_json_list_says_where_it_stopped(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text("[" + json.dumps(GOOD) + ", {broken")
    rows = list(read_seed(path))
    assert rows[0].error is None
    assert "JSON list is broken" in rows[1].error


def test_missing_seed(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_seed(tmp_path / "nope.jsonl"))


def test_a_bad_seed_item_is_left_out_not_the_sample(tmp_path):
    items = [
        {"question": "What is this?", "answer": "A cat."},
        {"question": "", "answer": "A long description of the picture."},
    ]
    path = tmp_path / "seed.jsonl"
    path.write_text(
        json.dumps({**GOOD, "conversations_v0": items})
        + "\n"
        + json.dumps({**GOOD, "conversations_v0": items[1:]})
        + "\n"
    )
    kept, broken = read_seed(path)
    assert [i.question for i in kept.sample.seed_items] == ["What is this?"]
    assert kept.skipped_items == [
        (items[1], "seed item 1 left out: question: Value error, must not be empty")
    ]
    assert kept.raw["conversations_v0"] == items  # the export keeps the seed as it was
    assert broken.sample is None
    assert broken.error.startswith("row 1 (id 42): no usable Q&A item (seed item 0 left out")


# -- one key per row, that no hash_id can take ----------------------------------------------


def test_a_rejected_row_has_one_key_everywhere(tmp_path):
    rows = [
        GOOD,
        "{not json",
        {"id": "2", "image": 5},  # no usable hash_id nor image
        [1, 2],
        {"hash_id": "", "image": 7},
        {"image": "a/b.jpg"},  # invalid (no Q&A) but it has an image: key 5_a_b.jpg
        {**GOOD, "hash_id": "#row-6"},  # takes the form reserved for rejected rows
    ]
    path = tmp_path / "seed.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    read = list(read_seed(path))
    assert [r.hash_id for r in read] == [
        row_key(i, None if isinstance(r, str) else r) for i, r in enumerate(rows)
    ]
    assert read[5].hash_id == "5_a_b.jpg"
    assert read[6].error is not None and "hash_id" in read[6].error
    unkeyed = [read[i].hash_id for i in (1, 2, 3, 4, 6)]
    assert unkeyed == [row_key(i, None) for i in (1, 2, 3, 4, 6)]
    for key in unkeyed:
        # No hash_id a seed may give can take an unkeyed row's key.
        assert read_seed_one(tmp_path, {**GOOD, "hash_id": key}).error is not None


def read_seed_one(tmp_path, raw) -> SeedRow:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(raw) + "\n")
    (row,) = read_seed(path)
    return row


def good_rows(demo_seed) -> list[dict]:
    seed_path, _ = demo_seed
    return [json.loads(line) for line in seed_path.read_text().splitlines()][:8]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def exported(settings, tmp_path) -> list[dict]:
    out = tmp_path / "evolved.json"
    export_json(settings.results_db, out)
    return json.loads(out.read_text(), parse_constant=no_constant)


def no_constant(name):
    raise ValueError(f"{name} is not JSON")


def test_a_hash_id_like_a_rejected_rows_key_survives_a_rerun(
    sim, demo_seed, make_settings, tmp_path
):
    good = good_rows(demo_seed)[:3]
    seed = [{**good[0], "hash_id": "row-3"}, good[1], good[2], {"id": "bad", "image": 5}]
    path = tmp_path / "seed.jsonl"
    write_jsonl(path, seed)
    settings = make_settings(sim, demo_seed[1])
    first = runner.run(settings, path)
    assert (first.done, first.failed) == (3, 1)
    again = runner.run(settings, path)
    assert again.failed == 0
    assert [e["hash_id"] for e in exported(settings, tmp_path)][0] == "row-3"


# -- JSON lists: a syntax error or a bad byte costs one row, not the rest of the file -------


def test_broken_json_list_row_fails_and_reading_goes_on(tmp_path):
    rows = [json.dumps({**GOOD, "image": f"{n}.jpg"}) for n in range(5)]
    rows[1] = '{"id": "1", "image": "1.jpg", "conversations_v0": [{"question": "q"'  # cut short
    rows[3] = rows[3].replace('"caption"', '"caption" ')[:-1] + ",}"  # trailing comma
    path = tmp_path / "seed.json"
    path.write_text("[\n  " + ",\n  ".join(rows) + "\n]\n")
    read = list(read_seed(path))
    assert [r.error is None for r in read] == [True, False, True, False, True]
    assert read[1].error.startswith("row 1: the JSON list is broken at this row (line 3): ")
    assert read[3].error.startswith("row 3: the JSON list is broken at this row (line 5): ")
    assert read[1].error.endswith("reading went on at the next row found, line 4, column 3")
    assert [r.hash_id for r in read if r.error is None] == ["0_0.jpg", "2_2.jpg", "4_4.jpg"]


@pytest.mark.parametrize("indent", [None, 2])
def test_json_list_read_in_tiny_chunks_gives_the_same_rows(tmp_path, monkeypatch, indent):
    # Chunk edges fall inside multi-byte characters, numbers, strings and literals.
    monkeypatch.setattr(seed, "_CHUNK", 3)
    rows = [
        {**GOOD, "image": f"caf\u00e9/{n}.jpg", "n": 12345678901234567890 + n, "t": [True, None]}
        for n in range(6)
    ]
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(rows, indent=indent, ensure_ascii=False), encoding="utf-8")
    assert [raw for _, raw, _ in seed.raw_rows(path)] == rows


def test_json_list_missing_comma_and_cut_short(tmp_path):
    a, b, c = (json.dumps({**GOOD, "image": f"{n}.jpg"}) for n in range(3))
    path = tmp_path / "seed.json"
    path.write_text(f"[{a}, {b} {c}]")  # no comma between b and c: c is the row that broke
    read = list(read_seed(path))
    assert [r.error is None for r in read] == [True, True, False]
    assert "row 2: the JSON list is broken" in read[2].error
    path.write_text(f"[{a}, {b}")  # cut short after a whole row
    read = list(read_seed(path))
    assert [r.error is None for r in read] == [True, True, False]
    assert "ends without" in read[2].error


def test_non_utf8_bytes_fail_their_row_only(tmp_path):
    good = [json.dumps({**GOOD, "image": f"{n}.jpg"}).encode() for n in range(3)]
    bad = (
        json.dumps({**GOOD, "caption": "caf\u00e9"}, ensure_ascii=False)
        .encode()
        .replace(b"\xc3\xa9", b"\xe9")
    )
    jsonl = tmp_path / "seed.jsonl"
    jsonl.write_bytes(b"\n".join([good[0], bad, good[1], good[2]]) + b"\n")
    read = list(read_seed(jsonl))
    assert [r.error is None for r in read] == [True, False, True, True]
    assert read[1].error.startswith("row 1: not valid UTF-8 (byte 0xe9")
    assert count_rows(jsonl) == 4

    listed = tmp_path / "seed.json"
    listed.write_bytes(b"[" + b", ".join([good[0], bad, good[1], b"\xff", good[2]]) + b"]")
    read = list(read_seed(listed))
    assert [r.error is None for r in read] == [True, False, True, False, True]
    assert read[1].error.startswith("row 1: not valid UTF-8 (byte 0xe9")
    assert "0xff" in read[3].error


def test_a_utf8_bom_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    jsonl = tmp_path / "seed.jsonl"
    jsonl.write_bytes(bom + json.dumps(GOOD).encode() + b"\n")
    listed = tmp_path / "seed.json"
    listed.write_bytes(bom + json.dumps([GOOD]).encode())
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "a.json").write_bytes(bom + json.dumps(GOOD).encode())
    for path in (jsonl, listed, folder):
        assert [r.error for r in read_seed(path)] == [None]


# -- seed folders ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_folder_skips_what_is_not_a_regular_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({**GOOD, "image": "a.jpg"}))
    (tmp_path / "b.json").mkdir()
    (tmp_path / "c.json").symlink_to(tmp_path / "gone.json")
    os.mkfifo(tmp_path / "d.json")
    (tmp_path / "e.json").write_text(json.dumps({**GOOD, "image": "e.jpg"}))
    read = list(read_seed(tmp_path))
    assert [r.error is None for r in read] == [True, False, False, False, True]
    assert read[1].error == "row 1: b.json is a folder, not a file"
    assert read[2].error == "row 2: c.json is a link to a file that does not exist"
    assert read[3].error == "row 3: d.json is not a regular file (a FIFO)"
    assert read[4].hash_id == "4_e.jpg"
    assert count_rows(tmp_path) == 5


# -- accepted shapes ------------------------------------------------------------------------


def test_plain_llava_conversations_are_accepted(tmp_path):
    llava = {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "What are the colors of the bus?\n<image>"},
            {"from": "gpt", "value": "White and red."},
        ],
    }
    row = read_seed_one(tmp_path, llava)
    assert row.error is None
    assert row.sample.seed_items[0].question == "What are the colors of the bus?"
    assert row.raw == llava  # exported as given
    # conversations_v0 wins when a row has both.
    both = read_seed_one(tmp_path, {**llava, "conversations_v0": GOOD["conversations_v0"]})
    assert both.sample.seed_items[0].question == "What is this?"


BAD_BOXES = [
    {"label": "nan", "bbox": [float("nan"), 0.1, 0.2, 0.3]},
    {"label": "inf", "bbox": [0.1, 0.1, float("inf"), 0.3]},
    {"label": "huge", "bbox": [0.1, 0.1, 1e400, 0.3]},
    {"label": "pixels", "bbox": [10, 20, 300, 400]},
    {"label": "flipped", "bbox": [0.5, 0.1, 0.2, 0.3]},
    {"label": "three", "bbox": [0.1, 0.2, 0.3]},
    {"bbox": [0.1, 0.2, 0.3, 0.4]},
]


def test_bad_boxes_are_left_out_with_a_reason(tmp_path):
    edge = {"label": "edge", "bbox": [-0.001, 0.0, 1.0005, 1.0]}  # rounding: kept
    raw = {**GOOD, "det": [GOOD["det"][0], *BAD_BOXES, edge]}
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps(raw) + "\n")  # NaN / Infinity as Python's json writes them
    (row,) = read_seed(path)
    assert row.error is None
    assert [b.label for b in row.sample.boxes] == ["cat", "edge"]
    reasons = [reason for _, reason in row.skipped_items]
    assert len(reasons) == len(BAD_BOXES)
    assert reasons[0].startswith("box det[1] left out: ")
    assert "not a finite number" in reasons[0] and "not a finite number" in reasons[2]
    assert "outside 0..1" in reasons[3]
    assert "x1 > x2" in reasons[4]
    assert "4 numbers" in reasons[5]
    assert "label" in reasons[6]
    assert [b["label"] for b in row.raw["det"]] == ["cat", "edge"]
    json.dumps(row.raw, allow_nan=False)


def test_a_non_finite_number_outside_the_boxes_fails_the_row(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_text('{"image": "a.jpg", "score": NaN, "conversations_v0": [{"question": "q", '
                    '"answer": "a"}]}\n')  # fmt: skip
    (row,) = read_seed(path)
    assert row.error == "row 0 (id None): score is NaN, which JSON cannot hold"


def test_export_of_a_seed_with_bad_boxes_is_valid_json(sim, demo_seed, make_settings, tmp_path):
    good = good_rows(demo_seed)[:2]
    seed = [{**good[0], "det": [*good[0]["det"], *BAD_BOXES]}, good[1]]
    path = tmp_path / "seed.jsonl"
    write_jsonl(path, seed)
    settings = make_settings(sim, demo_seed[1])
    assert runner.run(settings, path).done == 2
    out = exported(settings, tmp_path)
    assert out[0]["det"] == good[0]["det"]


def test_a_broken_json_list_counts_as_failed_and_runs_the_rest(
    sim, demo_seed, make_settings, tmp_path
):
    good = [json.dumps(r).encode() for r in good_rows(demo_seed)[:3]]
    path = tmp_path / "seed.json"
    rows = [good[0], b"{broken", good[1], b'"\xff"', good[2]]
    path.write_bytes(b"[" + b",\n".join(rows) + b"]")
    settings = make_settings(sim, demo_seed[1])
    report = runner.run(settings, path)
    assert (report.done, report.failed) == (3, 2)
    assert len(exported(settings, tmp_path)) == 3


# -- shards (mmevol run --shard I/N) ----------------------------------------------------------


def test_n_shards_cover_every_key_exactly_once():
    import random

    rng = random.Random(7)
    alphabet = "abcxyz019_/.-é漢\U0001f600"
    keys = (
        {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(3000)}
        | {f"#row-{n}" for n in range(200)}
        | {hash_id_for(n, f"coco/{n}.jpg") for n in range(500)}
    )
    for count in (1, 2, 3, 5, 7, 16, 100):
        shards = [seed.shard_index(k, count) for k in keys]
        assert all(1 <= s <= count for s in shards)
        if count <= 16:  # each shard gets its share, roughly
            sizes = [shards.count(i) for i in range(1, count + 1)]
            assert min(sizes) > len(keys) / count * 0.8, sizes


def test_the_shard_of_a_key_is_fixed_on_every_machine():
    # SHA-256 of the UTF-8 key, first 8 bytes big-endian, modulo N, plus 1: pinned so that a
    # change of the function (which would split old shard runs differently) fails here.
    assert [seed.shard_index("0_shapes_000000.jpg", n) for n in (1, 2, 3, 10)] == [1, 2, 1, 10]
    assert [seed.shard_index(k, 3) for k in ("a", "b", "c", "#row-4")] == [2, 2, 3, 3]
    assert [seed.shard_index(k, 7) for k in ("a", "b", "c", "#row-4", "é漢")] == [5, 1, 4, 6, 5]


def test_shards_of_a_seed_take_every_row_good_or_bad_once(tmp_path):
    from mmevol.sim.demo_seed import make_demo_seed

    seed_path, _ = make_demo_seed(tmp_path, n=30, seed=1, bad=True)
    (tmp_path / "extra.jsonl").write_text(
        seed_path.read_text() + "not json\n" + json.dumps({**GOOD, "hash_id": "0_shapes"}) + "\n"
    )
    everything = list(seed.raw_rows(tmp_path / "extra.jsonl"))
    for count in (1, 2, 3, 4, 9):
        taken = [
            row[0]
            for i in range(1, count + 1)
            for row in seed.shard_rows(iter(everything), (i, count))
        ]
        assert sorted(taken) == list(range(len(everything))), count
    assert list(seed.shard_rows(iter(everything), None)) == everything


def test_a_seed_fingerprint_is_its_content_not_its_path(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b" / "seed.jsonl"
    b.parent.mkdir()
    a.write_text(json.dumps(GOOD) + "\n")
    b.write_text(json.dumps(GOOD) + "\n")
    assert seed.fingerprint(a) == seed.fingerprint(b)
    b.write_text(json.dumps({**GOOD, "id": "43"}) + "\n")
    assert seed.fingerprint(a) != seed.fingerprint(b)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "0.json").write_text(json.dumps(GOOD))
    first = seed.fingerprint(folder)
    os.mkfifo(folder / "1.json")  # never opened
    assert seed.fingerprint(folder) != first
