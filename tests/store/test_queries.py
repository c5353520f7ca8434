"""The read-only queries (store/queries.py) leave a finished run's results.db as it was."""

import ast
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from mmevol.store import queries
from mmevol.store.queries import Queries
from mmevol.store.results import Store


def query_calls(settings) -> dict[str, list[tuple]]:
    """Every public method of Queries, with the arguments to call it with (one or more ways)."""
    with Store(settings.results_db) as store:
        statuses = store.statuses()
    done = next(h for h, s in statuses.items() if s == "done")
    failed = next(h for h, s in statuses.items() if s == "failed")
    return {
        "status_counts": [()],
        "failed_before": [(time.time(),), (time.time(), 3)],
        "endpoint_counts": [()],
        "call_errors": [(), (5,)],
        "batch_summary": [()],
        "summary": [(), (False,)],
        "round_operator_counts": [()],
        "empty_round_reasons": [()],
        "kept_score_counts": [()],
        "judged_out_score_counts": [()],
        "drop_counts": [()],
        "call_counts": [()],
        "failure_reasons": [(), (3,)],
        "finished_samples": [()],
        "sample_detail": [(done,), (failed,), ("no-such-sample",)],
        "gallery_keys": [()],
        "finish_times": [()],
        "export_rows": [(settings.rounds,)],
    }


def public_queries() -> set[str]:
    return {n for n, v in vars(Queries).items() if not n.startswith("_") and callable(v)}


def copy_run_db(settings, tmp_path: Path) -> Path:
    """Copy a finished run's results.db (and any WAL beside it) into tmp_path."""
    for part in settings.results_db.parent.glob(settings.results_db.name + "*"):
        shutil.copy2(part, tmp_path / part.name)
    return tmp_path / settings.results_db.name


def run_queries(path: Path, calls: dict[str, list[tuple]], store_class=Store):
    """Run every query; return the changes the connection made, whether the file kept its
    bytes, and what the queries returned."""
    before = path.read_bytes()
    answers = {}
    with store_class(path) as store:
        start = store.db.conn.total_changes
        for name, ways in calls.items():
            for args in ways:
                answer = getattr(store, name)(*args)
                answers[name, args] = list(answer) if isinstance(answer, Iterator) else answer
        changes = store.db.conn.total_changes - start
    return changes, path.read_bytes() == before, answers


def test_every_query_is_listed_here(demo_run):
    # A query added to Queries must be added to query_calls, so the test below runs it.
    assert set(query_calls(demo_run)) == public_queries()


def test_queries_leave_a_finished_run_unchanged(demo_run, tmp_path):
    path = copy_run_db(demo_run, tmp_path)
    calls = query_calls(demo_run)
    changes, same_bytes, answers = run_queries(path, calls)
    assert changes == 0
    assert same_bytes
    # ...and they read the run: 8 samples done and 4 bad rows failed, every done one exported.
    assert answers["summary", ()]["samples"] == {"done": 8, "failed": 4}
    assert len(answers["export_rows", (demo_run.rounds,)]) == 8
    assert answers["sample_detail", ("no-such-sample",)] is None
    assert answers["call_counts", ()]


class WritingStore(Store):
    """A probe: a query that writes, which the check above must catch."""

    def summary(self, live: bool = True) -> dict:
        self.set_meta("probe", "written by a query")
        return super().summary(live)


def test_the_check_catches_a_query_that_writes(demo_run, tmp_path):
    path = copy_run_db(demo_run, tmp_path)
    changes, same_bytes, _ = run_queries(path, query_calls(demo_run), WritingStore)
    assert changes > 0
    assert not same_bytes


WRITES = re.compile(
    r"\b(insert|update|delete|replace|upsert|create|drop|alter|attach|detach|pragma|vacuum)\b",
    re.IGNORECASE,
)


def test_the_queries_module_holds_no_write_statement():
    tree = ast.parse(Path(queries.__file__).read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and ast.get_docstring(node)
    }
    sql = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    ]
    assert sql, "no SQL found in store/queries.py"
    assert [s for s in sql if WRITES.search(s)] == []
    # ...and it calls nothing that writes (sqlite-utils' table writers, the store's setters).
    writers = re.compile(r"\.(insert|insert_all|upsert|update|delete|execute_script|set_\w+)\(")
    assert not writers.search(Path(queries.__file__).read_text())
