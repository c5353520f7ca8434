import json

import pytest

from mmevol.graph.seed import count_rows, hash_id_for, read_seed, turns_to_items

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
    assert [r.error is None for r in rows] == [True, False, False, False, False, False, True]
    assert rows[1].error.startswith("row 1: invalid JSON")
    assert rows[2].error.startswith("row 2 (id 7): invalid sample:")
    assert "conversations_v0" in rows[2].error and "image" in rows[2].error
    assert "4 numbers" in rows[3].error
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
