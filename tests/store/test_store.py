import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mmevol.store.results import Store, migrations

V010 = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0_1_0" / "checkpoints" / "v010"

EXPECTED_TABLES = {
    "meta", "samples", "rounds", "items", "dropped", "calls", "batch_shards", "batch_requests",
    "merged", "gates", "_sqlite_migrations",
}  # fmt: skip


def test_migrate_blank():
    with Store(None) as store:
        assert set(store.tables()) == EXPECTED_TABLES
        assert store.tables()["calls"]["response"] is str
        # The migration bookkeeping is sqlite-utils' own: asked of it directly.
        assert not migrations.pending(store.db)


def test_reopen_applies_nothing_twice(tmp_path):
    path = tmp_path / "results.db"
    with Store(path):
        pass
    with Store(path) as store:
        assert [m.name for m in migrations.applied(store.db)] == [
            "m001_initial",
            "m002_rejected_row_keys",
            "m003_judge_reason",
            "m004_cached_and_batch_prices",
            "m005_call_endpoint",
            "m006_batches",
            "m007_shards",
            "m008_gates",
        ]


def test_rows_rejected_by_0_1_0_get_todays_key(tmp_path):
    # 0.1.0 keyed a rejected row "row-N", which a real hash_id can be; now it is "#row-N".
    from sqlite_utils import Database

    path = tmp_path / "results.db"
    db = Database(path)
    migrations.apply(db, stop_before="m002_rejected_row_keys")
    for key, idx, status in [
        ("row-8", 8, "failed"),  # rejected by 0.1.0: renamed
        ("row-3", 5, "failed"),  # a real hash_id at another index: kept
        ("row-6", 6, "done"),  # a real, finished sample: kept
    ]:
        db["samples"].insert({"hash_id": key, "idx": idx, "status": status})
    db.close()
    with Store(path) as store:
        assert set(store.statuses()) == {"#row-8", "row-3", "row-6"}


def test_the_store_closes_its_connection_when_the_block_ends(tmp_path):
    with Store(tmp_path / "results.db") as store:
        assert store.count("samples") == 0
    with pytest.raises(Exception, match="closed"):
        store.count("samples")


def test_rows_match_columns_and_read_a_null_branch_as_main():
    with Store(None) as store:
        store.log_call({"key": "a", "hash_id": "h", "round": 1, "node": "evolve"})
        store.log_call({"key": "b", "hash_id": "h", "round": 1, "node": "score", "branch": "f1"})
        store.log_call({"key": "c", "hash_id": "h", "round": 2, "node": "evolve", "error": "x"})
        assert [r["key"] for r in store.rows("calls", branch="main")] == ["a", "c"]
        assert [r["key"] for r in store.rows("calls", hash_id="h", round=1)] == ["a", "b"]
        assert [r["key"] for r in store.rows("calls", error=None)] == ["a", "b"]
        assert store.count("calls", node="evolve") == 2
        assert store.branches("h") == {"main", "f1"}
        with pytest.raises(ValueError, match="no column 'nope'"):
            store.rows("calls", nope=1)
        with pytest.raises(ValueError, match="no table"):
            store.rows("calls; drop table calls")


def test_round_rewrite_replaces_and_export_orders_by_seed():
    store = Store(None)
    store.start_sample("b", 1, "x", {"id": "x", "image": "b.jpg", "extra": 1})
    store.start_sample("a", 0, "y", {"id": "y", "image": "a.jpg"})
    record = {
        "round": 1,
        "operator": "reasoning",
        "attempts": 1,
        "candidates": 2,
        "kept": 1,
        "dropped": 1,
        "reason": None,
    }
    kept = [{"question": "Q", "answer": "A", "score": 7}]
    dropped = [{"item": {"question": "Q2"}, "reason": "judged not improved", "stage": "judge"}]
    store.save_round("b", record, kept, dropped)
    store.save_round("b", record, kept, dropped)  # a re-run step must not duplicate rows
    assert store.count("items") == 1 and store.count("dropped") == 1
    store.finish_sample("b", 1)
    store.finish_sample("a", 1)
    rows = list(store.export_rows(rounds=2))
    assert [r["hash_id"] for r in rows] == ["a", "b"]
    assert rows[1]["conversations_v1"] == kept and rows[1]["conversations_v2"] == []
    assert rows[1]["extra"] == 1 and rows[1]["topic_name"] == []


def test_calls_are_found_by_key_only_when_successful():
    store = Store(None)
    store.log_call({"key": "k", "error": "APIConnectionError: boom"})
    assert store.find_call("k") is None
    call_id = store.log_call({"key": "k", "response": "[]", "finish_reason": "stop"})
    assert store.find_call("k")["id"] == call_id


def test_failed_rows_without_a_start_keep_position():
    store = Store(None)
    store.fail_sample("row-3", "row 3: invalid JSON", idx=3)
    assert store.statuses() == {"row-3": "failed"}
    assert store.summary()["failures"] == [{"reason": "row 3: invalid JSON", "n": 1}]


def columns(path: Path, table: str) -> set[str]:
    # Read past the Store on purpose: what the file holds before and after migrating.
    conn = sqlite3.connect(path)
    try:
        return {row[1] for row in conn.execute(f"pragma table_info({table})")}
    finally:
        conn.close()


def test_a_run_made_by_0_1_0_gets_the_judge_reason_columns_with_null(tmp_path):
    path = tmp_path / "results.db"
    shutil.copy(V010 / "results.db", path)
    assert "judge_reason" not in columns(path, "items")
    with Store(path) as store:
        assert "m003_judge_reason" in [m.name for m in migrations.applied(store.db)]
        kept = store.rows("items")
        judged = store.rows("dropped", stage="judge")
        assert kept and judged
        assert all(r["judge_reason"] is None for r in kept)
        assert all(r["score"] is None and r["judge_reason"] is None for r in judged)
    assert {"judge_reason"} <= columns(path, "items")
    assert {"score", "judge_reason"} <= columns(path, "dropped")


def test_save_round_keeps_the_judge_reason_of_kept_and_judged_out_items():
    store = Store(None)
    store.start_sample("a", 0, "x", {"id": "x", "image": "a.jpg"})
    item = {"question": "q", "answer": "a", "score": 7}
    record = {"round": 1, "operator": "reasoning", "attempts": 1, "candidates": 2, "kept": 1,
              "dropped": 1, "reason": None}  # fmt: skip
    drop = {"item": {"question": "q2"}, "reason": "judged not improved (score 3): too easy",
            "stage": "judge", "score": 3, "judge_reason": "too easy"}  # fmt: skip
    store.save_round("a", record, [item], [drop], reasons=["harder, uses the image"])
    detail = store.sample_detail("a")
    assert detail["items"][0]["judge_reason"] == "harder, uses the image"
    assert detail["dropped"][0]["score"] == 3
    assert detail["dropped"][0]["judge_reason"] == "too easy"


def test_answered_calls_count_recorded_answers_and_their_keys():
    store = Store(None)
    assert store.answered_calls() == {"answered": 0, "keys": 0}
    store.log_call({"key": "k", "error": "APIConnectionError: boom"})
    store.log_call({"key": "k", "response": "", "finish_reason": "stop"})  # unusable, but paid
    store.log_call({"key": "j", "response": "[]", "finish_reason": "stop"})
    assert store.answered_calls() == {"answered": 2, "keys": 2}
    store.log_call({"key": "j", "response": "[]", "finish_reason": "stop"})
    assert store.answered_calls() == {"answered": 3, "keys": 2}


def test_a_run_made_by_0_1_0_gets_the_call_endpoint_column_with_null(tmp_path):
    path = tmp_path / "results.db"
    shutil.copy(V010 / "results.db", path)
    assert "endpoint" not in columns(path, "calls")
    with Store(path) as store:
        assert "m005_call_endpoint" in [m.name for m in migrations.applied(store.db)]
        calls = store.rows("calls")
        assert calls and all(r["endpoint"] is None for r in calls)
        # One endpoint, never named: no per-endpoint counts.
        assert store.summary()["endpoints"] == []
    assert "endpoint" in columns(path, "calls")


def test_calls_are_counted_per_endpoint():
    with Store(None) as store:
        for endpoint, error in (("http://a/v1", None), ("http://b/v1", "APIConnectionError: x"),
                                ("http://b/v1", None), ("http://a/v1", None)):  # fmt: skip
            store.log_call({"key": "k", "endpoint": endpoint, "error": error, "latency_ms": 2.0})
        assert store.endpoint_counts() == [
            {"endpoint": "http://a/v1", "calls": 2, "errors": 0, "answered": 2,
             "mean_latency_ms": 2.0},
            {"endpoint": "http://b/v1", "calls": 2, "errors": 1, "answered": 1,
             "mean_latency_ms": 2.0},
        ]  # fmt: skip


def test_a_new_database_takes_its_schema_before_wal(tmp_path):
    """All migrations in WAL left a 222 kB -wal file on a new run: a small disk failed at open."""
    import os

    path = tmp_path / "results.db"
    with Store(path) as store:
        assert store.db.execute("pragma journal_mode").fetchone()[0] == "wal"
        wal = tmp_path / "results.db-wal"
        assert not wal.exists() or os.path.getsize(wal) < 50_000


def test_a_run_starts_without_importing_what_only_exports_use():
    """`mmevol run` loads no pandas, pyarrow, datasets or plotting (0.2-1 s of start-up each)."""
    code = (
        "import sys, mmevol.cli, mmevol.run.runner, sqlite_utils.db\n"
        "print(sorted(m for m in ('pandas', 'pyarrow', 'datasets', 'matplotlib', 'imagehash',"
        " 'datasketch', 'ray') if m in sys.modules))\n"
        "print(sqlite_utils.db.pd)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "None"], out.stdout + out.stderr


def test_pandas_is_still_importable_after_the_store():
    code = "import mmevol.store.results, pandas; print(pandas.DataFrame({'a': [1]}).shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1, 1)"
