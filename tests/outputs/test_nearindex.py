"""The filters' scratch-file indexes: removed after the export, batched, first indexed wins."""

from __future__ import annotations

import json
import sqlite3
import tempfile

import pytest

from mmevol.outputs import authors
from mmevol.outputs.authors import export_json
from mmevol.outputs.filters import FilterOptions, normal_text
from mmevol.outputs.nearindex import CHUNK, HashCache, HashIndex, KeySet, QuestionIndex, Scratch

CAR = normal_text("What colour is the large car parked on the left side of the street?")
CAR_AGAIN = normal_text(
    "What colour is the large car parked on the left side of the street, please?"
)
BENCH = normal_text("How many people are sitting on the wooden bench near the fountain?")


def _scratch_folders(folder):
    return sorted(folder.glob("mmevol-filters-*"))


@pytest.fixture
def temp_folder(tmp_path, monkeypatch):
    """Point the temp folder (where the filters make their scratch file) at a test folder."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_the_scratch_file_is_removed_after_an_export_even_when_the_write_fails(
    demo_run, tmp_path, temp_folder, monkeypatch
):
    during = []

    def write_one_then_fail(rows, fh, lines=False):
        fh.write(json.dumps(next(iter(rows))))
        during.extend((p / "index.db").is_file() for p in _scratch_folders(temp_folder))
        raise OSError(28, "No space left on device")

    options = FilterOptions(dedup=True)
    export_json(demo_run.results_db, tmp_path / "whole.json", options)
    assert _scratch_folders(temp_folder) == []
    monkeypatch.setattr(authors, "_write", write_one_then_fail)
    with pytest.raises(OSError, match="No space left") as failed:
        export_json(demo_run.results_db, tmp_path / "broken.json", options)
    assert during == [True]  # the file was there mid-export ...
    # ... and is gone as the export fails, not later when its traceback is collected.
    assert _scratch_folders(temp_folder) == []
    assert failed.value.errno == 28


def test_the_scratch_file_is_removed_when_a_training_export_fails(
    demo_run, tmp_path, temp_folder, monkeypatch
):
    from mmevol.outputs import formats

    def full_disk(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats.JsonWriter, "add", full_disk)
    options = formats.ExportOptions(filters=FilterOptions(dedup=True))
    with pytest.raises(OSError, match="No space left") as failed:
        formats.export_records(demo_run.results_db, tmp_path / "llava.json", "llava", options)
    assert _scratch_folders(temp_folder) == []
    assert failed.value.errno == 28


def test_a_bad_benchmark_file_leaves_no_scratch_file(demo_run, tmp_path, temp_folder):
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"question": "What is shown?"}\n{"question": \n')
    options = FilterOptions(dedup=True, decontaminate=(bench,))
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        export_json(demo_run.results_db, tmp_path / "out.json", options)
    assert _scratch_folders(temp_folder) == []


def test_scratch_removes_its_folder_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError), Scratch(tmp_path) as scratch:
        path = scratch.path
        assert path.is_file()
        raise RuntimeError("stop")
    assert not path.parent.exists()
    assert scratch.db is None


def test_a_near_duplicate_is_found_across_commit_boundaries(tmp_path):
    with Scratch(tmp_path, batch=4) as scratch:
        questions = QuestionIndex(0.8, scratch)
        images = HashIndex(4, scratch)
        questions.add(CAR, "s1 v1 item 1")
        images.add(0b1011 << 40, "s1")
        for n in range(20):  # many commits of 4 rows
            questions.add(
                normal_text(f"Question {n}: where is the {n}th red balloon tied?"), f"q{n}"
            )
            images.add((n + 1) * 0x9E3779B97F4A7C15 % (1 << 64), f"s{n + 2}")
        # What another connection reads was committed, not held back in a transaction.
        with sqlite3.connect(scratch.path) as other:
            names = other.execute(f"select count(*) from {questions._item_table}").fetchone()[0]
        assert names >= 20
        questions.add(BENCH, "last")  # still pending in the open transaction
        assert questions.find(CAR_AGAIN) == "s1 v1 item 1"
        assert questions.find(normal_text(BENCH + " ?")) == "last"
        assert images.find((0b1011 << 40) ^ 0b1111) == "s1"
        assert images.find((0b1011 << 40) ^ 0b11111) is None


def test_lookups_return_the_first_indexed_not_the_first_by_name():
    questions = QuestionIndex(0.5)
    questions.add(CAR_AGAIN, "s10 v1 item 1")
    questions.add(CAR, "s2 v1 item 1")  # the same text, indexed second
    assert questions.find(CAR) == "s10 v1 item 1"
    images = HashIndex(4)
    images.add(0xF0F0 << 20, "z")
    images.add((0xF0F0 << 20) ^ 1, "a")  # an exact match for the lookup below, but second
    assert images.find((0xF0F0 << 20) ^ 1) == "z"


def test_find_or_add_indexes_only_what_it_did_not_find():
    questions = QuestionIndex(0.8)
    assert questions.find_or_add(CAR, "first") is None
    assert questions.find_or_add(CAR_AGAIN, "second") == "first"
    assert questions.find_or_add(BENCH, "third") is None
    assert len(questions) == 2
    images = HashIndex(0)  # distance 0: one 64-bit block, the top bit set
    assert images.find_or_add(1 << 63 | 5, "a") is None
    assert images.find_or_add(1 << 63 | 5, "b") == "a"
    assert images.find((1 << 63) | 4) is None
    assert len(images) == 1


def test_similarity_one_matches_the_same_text_only():
    questions = QuestionIndex(1.0)
    assert questions.signature(CAR) is None  # no MinHash needed
    questions.add(CAR, "a")
    assert questions.find(CAR) == "a"
    assert questions.find(CAR_AGAIN) is None


def test_key_set_answers_lookups_longer_than_one_query():
    grams = KeySet()
    assert not grams.intersects([1, 2, 3])
    grams.update([-5, 7, 2**63 - 1])
    assert grams.intersects(list(range(10, 10 + 2 * CHUNK)) + [2**63 - 1])
    assert not grams.intersects(list(range(10, 10 + 2 * CHUNK)))


def test_hash_cache_hashes_each_image_once_unreadable_ones_too():
    cache = HashCache()
    calls = []

    def compute(value):
        return lambda: calls.append(value) or value

    assert cache.get("a.png", compute(2**64 - 1)) == 2**64 - 1
    assert cache.get("a.png", compute(0)) == 2**64 - 1
    assert cache.get("broken.png", compute(None)) is None
    assert cache.get("broken.png", compute(3)) is None
    assert calls == [2**64 - 1, None]


def test_the_scratch_file_is_removed_when_an_hf_export_fails(
    demo_run, tmp_path, temp_folder, monkeypatch
):
    pytest.importorskip("datasets")
    from mmevol.outputs import formats, hfexport

    def full_disk(self, row, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hfexport.ShardWriter, "add", full_disk)
    options = formats.ExportOptions(filters=FilterOptions(dedup=True))
    with pytest.raises(OSError, match="No space left") as failed:  # its traceback kept alive
        hfexport.export_hf(demo_run.results_db, tmp_path / "hf", options)
    assert _scratch_folders(temp_folder) == []
    assert failed.value.errno == 28
