"""The results database of a run (sqlite-utils): samples, kept and dropped items, model calls."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("mmevol")


@migrations()
def m001_initial(db: Database) -> None:
    """Create the first schema."""
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["samples"].create(
        {
            "hash_id": str,
            "idx": int,
            "source_id": str,
            "status": str,
            "reason": str,
            "rounds_done": int,
            "branch": str,
            "seed": str,
            "updated_at": float,
        },
        pk="hash_id",
    )
    db["samples"].create_index(["idx"])
    db["samples"].create_index(["status"])
    db["rounds"].create(
        {
            "hash_id": str,
            "branch": str,
            "round": int,
            "operator": str,
            "attempts": int,
            "candidates": int,
            "kept": int,
            "dropped": int,
            "reason": str,
        },
        pk=("hash_id", "branch", "round"),
    )
    db["items"].create(
        {
            "hash_id": str,
            "branch": str,
            "round": int,
            "position": int,
            "score": int,
            "item": str,
        },
        pk=("hash_id", "branch", "round", "position"),
    )
    db["dropped"].create(
        {
            "id": int,
            "hash_id": str,
            "branch": str,
            "round": int,
            "stage": str,
            "kind": str,
            "reason": str,
            "item": str,
        },
        pk="id",
    )
    db["dropped"].create_index(["hash_id", "branch", "round"])
    db["calls"].create(
        {
            "id": int,
            "key": str,
            "hash_id": str,
            "branch": str,
            "round": int,
            "node": str,
            "attempt": int,
            "chunk": int,
            "model": str,
            "input_tokens": int,
            "output_tokens": int,
            "latency_ms": float,
            "finish_reason": str,
            "error": str,
            "parse": str,
            "response": str,
            "created_at": float,
        },
        pk="id",
    )
    db["calls"].create_index(["key"])
    db["calls"].create_index(["hash_id"])


@migrations()
def m002_rejected_row_keys(db: Database) -> None:
    """Give rows that 0.1.0 rejected the key rejected rows have now (``#row-N``).

    0.1.0 keyed a row it rejected before it started (no usable hash_id, or a duplicate)
    ``row-N``, a key a real hash_id can take; today's is ``#row-N`` (see
    ``run.seed.row_key``). Only failed rows whose key names their own index are renamed.
    """
    db.execute(
        "UPDATE samples SET hash_id = '#' || hash_id WHERE status = 'failed' "
        "AND hash_id GLOB 'row-[0-9]*' AND hash_id = 'row-' || idx "
        "AND NOT EXISTS (SELECT 1 FROM samples AS s WHERE s.hash_id = '#' || samples.hash_id)"
    )


@migrations()
def m003_judge_reason(db: Database) -> None:
    """Keep the judge's reason and score of every verdict (kept and judged-out items).

    A run made before this migration gets the columns with NULL: its kept items had no
    reason stored, and its judged-out items keep theirs inside ``dropped.reason`` only.
    """
    for table, column, kind in (
        ("items", "judge_reason", str),
        ("dropped", "score", int),
        ("dropped", "judge_reason", str),
    ):
        # A development build named this migration m002; its runs have the columns.
        if column not in db[table].columns_dict:
            db[table].add_column(column, kind)


@migrations()
def m004_cached_and_batch_prices(db: Database) -> None:
    """Record per call the prompt tokens the endpoint's prompt cache answered, and batch mode.

    ``calls.cached_tokens`` (part of ``input_tokens``, priced at the cached-input price) and
    ``calls.batch`` (1: answered by the Batch API at its price; 0 or NULL: online). Calls
    recorded before this migration read as online with no cached tokens.
    """
    for column in ("cached_tokens", "batch"):
        if column not in db["calls"].columns_dict:
            db["calls"].add_column(column, int)


@migrations()
def m005_call_endpoint(db: Database) -> None:
    """Record which endpoint each call went to (the base URL, without credentials or query).

    A run made before this migration gets the column with NULL: it had one endpoint.
    """
    if "endpoint" not in db["calls"].columns_dict:
        db["calls"].add_column("endpoint", str)


@migrations()
def m006_batches(db: Database) -> None:
    """Add the shards of batch mode and the requests each one carries (``--batch``)."""
    if "batch_shards" not in db.table_names():
        db["batch_shards"].create(
            {
                "id": int,
                "name": str,
                "mode": str,
                "state": str,
                "path": str,
                "file_id": str,
                "batch_id": str,
                "status": str,
                "requests": int,
                "bytes": int,
                "completed": int,
                "failed": int,
                "estimate": float,
                "cost": float,
                "fallback": int,
                "error": str,
                "created_at": float,
                "submitted_at": float,
                "finished_at": float,
            },
            pk="id",
        )
    if "batch_requests" not in db.table_names():
        db["batch_requests"].create(
            {
                "key": str,
                "shard": int,
                "hash_id": str,
                "branch": str,
                "round": int,
                "node": str,
                "attempt": int,
                "chunk": int,
                "model": str,
                "state": str,
                "status": int,
                "error": str,
                "failures": int,
                "estimate": float,
                "updated_at": float,
            },
            pk="key",
        )
        db["batch_requests"].create_index(["hash_id", "state"])
        db["batch_requests"].create_index(["shard", "state"])


@migrations()
def m007_shards(db: Database) -> None:
    """Add ``merged``: which shard run folder each sample of a merged run came from.

    ``origin`` is the shard folder's run id (meta ``run_id``); ``updated_at``, ``calls`` and
    ``last_call`` are the sample's progress in that folder when it was merged (its
    ``updated_at``, its call count and its highest call id there), so that merging again
    copies only the samples that progressed. Empty in a run made by ``mmevol run``.
    """
    if "merged" not in db.table_names():
        db["merged"].create(
            {
                "hash_id": str,
                "origin": str,
                "shard": str,
                "updated_at": float,
                "calls": int,
                "last_call": int,
            },
            pk="hash_id",
        )


def reason_kind(reason: str) -> str:
    """Return the category of a drop reason: its text before any colon, without the score."""
    return re.sub(r"\s*\(score \d+\)", "", reason.split(":", 1)[0]).strip()


class StoreProblem(ValueError):
    """A results database that cannot be opened: damaged, unreadable, or not SQLite."""


def open_db(path: Path | str | None) -> Database:
    """Open (creating when needed) and migrate a results database; None opens one in memory.

    Raises:
        StoreProblem: the file is not a usable SQLite database (the message says what to do).
    """
    if path is None:
        db = Database(memory=True)
        migrations.apply(db)
        return db
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        db = Database(path)
        # WAL lets `mmevol status` read while a run writes; NORMAL sync keeps commits cheap
        # and still never corrupts the file on a crash.
        # Worker processes of one run write to the same file: wait for a turn rather than
        # fail (a write holds the lock for a few milliseconds).
        db.execute("PRAGMA busy_timeout=60000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        migrations.apply(db)
    except sqlite3.DatabaseError as err:
        raise StoreProblem(
            f"cannot open {path} ({err}): if it is damaged, restore it from a backup or move "
            "the run folder away to start the run over"
        ) from err
    return db


# How each table's rows are listed: the order a reader expects.
_ORDER = {
    "meta": "key",
    "samples": "idx, hash_id",
    "rounds": "hash_id, branch, round",
    "items": "hash_id, branch, round, position",
    "dropped": "id",
    "calls": "id",
    "batch_shards": "id",
    "batch_requests": "shard, key",
    "merged": "hash_id",
}

# The tables of one sample's results, copied by ``mmevol merge`` (``calls`` apart: new ids).
_SAMPLE_TABLES = ("samples", "rounds", "items", "dropped")


class Store:
    """Typed reads and writes of the results database; the only code that writes its SQL.

    Use it as a context manager, which closes the connection::

        with Store(settings.results_db) as store:
            summary = store.summary()
    """

    def __init__(self, path: Path | str | None):
        """Open the database at ``path`` (None for in-memory)."""
        self.db = open_db(path)

    def close(self) -> None:
        """Close the connection (``with Store(...)`` does it for you)."""
        self.db.close()

    def __enter__(self) -> Store:
        """Return the open store."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the connection."""
        self.close()

    # -- the schema and whole tables (for status tools, tests and benchmarks) -----------

    def tables(self) -> dict[str, dict[str, type]]:
        """Return each table's columns and their Python types."""
        return {t: self.db[t].columns_dict for t in self.db.table_names()}

    def count(self, table: str, **match: Any) -> int:
        """Return how many rows of ``table`` have the given column values."""
        where, params = self._where(table, match)
        return self.db.conn.execute(f"select count(*) from {table}{where}", params).fetchone()[0]

    def rows(self, table: str, **match: Any) -> list[dict]:
        """Return the rows of ``table`` with the given column values, in the table's order.

        ``branch`` matches rows written before branches existed (null) as "main".
        """
        where, params = self._where(table, match)
        return [
            dict(r)
            for r in self.db.query(f"select * from {table}{where} order by {_ORDER[table]}", params)
        ]

    def _where(self, table: str, match: dict[str, Any]) -> tuple[str, list]:
        if table not in _ORDER:
            raise ValueError(f"no table {table!r} in the results database")
        columns = self.db[table].columns_dict
        terms, params = [], []
        for name, value in match.items():
            if name not in columns:
                raise ValueError(f"no column {name!r} in table {table!r}")
            if value is None:
                terms.append(f"{name} is null")
                continue
            terms.append("coalesce(branch, 'main') = ?" if name == "branch" else f"{name} = ?")
            params.append(value)
        return (" where " + " and ".join(terms) if terms else ""), params

    # -- run metadata -------------------------------------------------------------------

    def set_meta(self, key: str, value: Any) -> None:
        """Store one JSON value under a key."""
        self.db["meta"].upsert({"key": key, "value": json.dumps(value)}, pk="key")

    def get_meta(self, key: str) -> Any:
        """Return the JSON value stored under a key, or None."""
        rows = list(self.db.query("select value from meta where key = ?", [key]))
        return json.loads(rows[0]["value"]) if rows else None

    # -- samples ------------------------------------------------------------------------

    def status_counts(self) -> dict[str, int]:
        """Return how many samples have each status."""
        return {
            r["status"]: r["n"]
            for r in self.db.query("select status, count(*) as n from samples group by status")
        }

    def failed_before(self, since: float, limit: int | None = None) -> int:
        """Count failed samples last touched before ``since`` (rows below ``limit`` only)."""
        return self.db.execute(
            "select count(*) from samples where status = 'failed' and updated_at < ?"
            " and (? is null or idx < ?)",
            [since, limit, limit],
        ).fetchone()[0]

    def statuses(self) -> dict[str, str]:
        """Return every sample's status, by hash_id."""
        return {
            r["hash_id"]: r["status"] for r in self.db.query("select hash_id, status from samples")
        }

    def start_sample(self, hash_id: str, idx: int, source_id: str | None, seed: dict) -> None:
        """Record that a sample entered the graph (keeping its seed record for export)."""
        row = {
            "hash_id": hash_id,
            "idx": idx,
            "source_id": source_id,
            "status": "running",
            "reason": None,
            "branch": "main",
            "seed": json.dumps(seed, ensure_ascii=False),
            "updated_at": time.time(),
        }
        with self.db.conn:
            self._upsert("samples", row, ("hash_id",))

    def finish_sample(self, hash_id: str, rounds_done: int) -> None:
        """Mark a sample done."""
        with self.db.conn:
            self.db.conn.execute(
                "update samples set status = 'done', reason = null, rounds_done = ?,"
                " updated_at = ? where hash_id = ?",
                [rounds_done, time.time(), hash_id],
            )

    def record_seed_drops(self, hash_id: str, drops: list[tuple[dict, str]]) -> None:
        """Record seed items left out of a sample's evolution (round 0, stage "seed")."""
        with self.db.atomic():
            self.db.execute(
                "delete from dropped where hash_id = ? and round = 0 and stage = 'seed'", [hash_id]
            )
            self.db["dropped"].insert_all(
                {
                    "hash_id": hash_id,
                    "branch": "main",
                    "round": 0,
                    "stage": "seed",
                    "kind": "seed item left out",
                    "reason": reason,
                    "item": json.dumps(item, ensure_ascii=False),
                }
                for item, reason in drops
            )

    def interrupt_sample(self, hash_id: str) -> None:
        """Mark a sample stopped mid-way; the next run resumes it from its checkpoint."""
        self.db["samples"].update(hash_id, {"status": "interrupted", "updated_at": time.time()})

    def fail_sample(
        self, hash_id: str, reason: str, *, idx: int | None = None, source_id: str | None = None
    ) -> None:
        """Mark a sample failed with a reason (creating its row when it never started)."""
        row = {"hash_id": hash_id, "status": "failed", "reason": reason, "updated_at": time.time()}
        if idx is not None:
            row["idx"] = idx
        if source_id is not None:
            row["source_id"] = source_id
        self.db["samples"].upsert(row, pk="hash_id")

    def adopt(self, hash_id: str, branch: str) -> None:
        """Make ``branch`` the one the export uses for a sample."""
        self.db["samples"].update(hash_id, {"branch": branch, "updated_at": time.time()})

    def sample(self, hash_id: str) -> dict | None:
        """Return a sample's row, or None."""
        return self._one("select * from samples where hash_id = ?", [hash_id])

    def _one(self, sql: str, params: list) -> dict | None:
        # Plain cursor: a hot path, where sqlite-utils' query generator costs more.
        cursor = self.db.conn.execute(sql, params)
        row = cursor.fetchone()
        return dict(zip([d[0] for d in cursor.description], row, strict=True)) if row else None

    # -- rounds -------------------------------------------------------------------------

    def save_round(
        self,
        hash_id: str,
        record: dict,
        kept: list[dict],
        dropped: list[dict],
        branch: str = "main",
        reasons: list[str | None] | None = None,
    ) -> None:
        """Write one finished round atomically; writing the same round again replaces it.

        ``reasons`` holds the judge's reason for each kept item (in order); a dropped
        entry may carry the judge's ``score`` and ``judge_reason`` when it was judged out.
        """
        reasons = reasons or [None] * len(kept)
        rnd = record["round"]
        key = [hash_id, branch, rnd]
        where = "hash_id = ? and branch = ? and round = ?"
        with self.db.conn:
            self._upsert(
                "rounds",
                {"hash_id": hash_id, "branch": branch, **record},
                ("hash_id", "branch", "round"),
            )
            self.db.conn.execute(f"delete from items where {where}", key)
            self.db.conn.execute(f"delete from dropped where {where}", key)
            self.db.conn.executemany(
                "insert into items (hash_id, branch, round, position, score, item, judge_reason)"
                " values (?, ?, ?, ?, ?, ?, ?)",
                [
                    [*key, n, item["score"], json.dumps(item, ensure_ascii=False), reason]
                    for n, (item, reason) in enumerate(zip(kept, reasons, strict=True))
                ],
            )
            self.db.conn.executemany(
                "insert into dropped (hash_id, branch, round, stage, kind, reason, item,"
                " score, judge_reason) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [*key, d["stage"], reason_kind(d["reason"]), d["reason"],
                     json.dumps(d["item"], ensure_ascii=False), d.get("score"),
                     d.get("judge_reason")]
                    for d in dropped
                ],
            )  # fmt: skip

    def _upsert(self, table: str, row: dict, pk: tuple[str, ...]) -> None:
        # Plain SQL: this runs a few times per sample, and sqlite-utils' upsert inspects
        # the table on every call.
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in row if c not in pk)
        self.db.conn.execute(
            f"insert into {table} ({names}) values ({marks})"
            f" on conflict ({', '.join(pk)}) do update set {updates}",
            list(row.values()),
        )

    def copy_rounds(self, hash_id: str, source: str, target: str, before_round: int) -> None:
        """Copy a sample's round results before ``before_round`` from one branch to another."""
        with self.db.atomic():
            for table in ("rounds", "items", "dropped"):
                columns = [c for c in self.db[table].columns_dict if c not in ("branch", "id")]
                names = ", ".join(columns)
                self.db.execute(
                    f"insert or replace into {table} (branch, {names})"
                    f" select ?, {names} from {table}"
                    " where hash_id = ? and branch = ? and round < ?",
                    [target, hash_id, source, before_round],
                )

    def branches(self, hash_id: str) -> set[str]:
        """Return every branch a sample has calls or round results on.

        Calls written before branches existed (branch null) count as "main".
        """
        return {
            r["branch"] or "main"
            for r in self.db.query(
                "select distinct branch from calls where hash_id = ?"
                " union select distinct branch from rounds where hash_id = ?",
                [hash_id, hash_id],
            )
        }

    def finished_branches(self, hash_id: str, rounds: int) -> set[str]:
        """Return the branches of a sample with every round recorded."""
        return {
            r["branch"]
            for r in self.db.query(
                "select branch from rounds where hash_id = ? group by branch having count(*) >= ?",
                [hash_id, rounds],
            )
        }

    def delete_branch(self, hash_id: str, branch: str) -> None:
        """Delete a fork's round results (its calls stay: they were made and paid for)."""
        if branch == "main":
            raise ValueError("the main branch is never deleted")
        with self.db.atomic():
            for table in ("rounds", "items", "dropped"):
                self.db.execute(
                    f"delete from {table} where hash_id = ? and branch = ?", [hash_id, branch]
                )

    # -- calls --------------------------------------------------------------------------

    def find_call(self, key: str) -> dict | None:
        """Return the latest successful call recorded under a key, or None."""
        rows = list(
            self.db.query(
                "select * from calls where key = ? and error is null order by id desc limit 1",
                [key],
            )
        )
        return rows[0] if rows else None

    # The three methods below run several times per sample; plain SQL on the connection
    # spares sqlite-utils' per-call table introspection, a measurable share of a run's CPU.

    def get_call(self, call_id: int) -> dict:
        """Return one call row by id."""
        row = self._one("select * from calls where id = ?", [call_id])
        if row is None:
            raise KeyError(f"no call {call_id}")
        return row

    def log_call(self, row: dict) -> int:
        """Record one model call and return its id."""
        row = {**row, "created_at": time.time()}
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.db.conn:
            cursor = self.db.conn.execute(
                f"insert into calls ({names}) values ({marks})", list(row.values())
            )
        return cursor.lastrowid

    # The token sums that price calls: per model and mode (batch 1, online 0), since the
    # price depends on both. Calls before m004 have NULL cached_tokens and batch: 0.
    _TOKENS = (
        "coalesce(batch, 0) as batch, coalesce(sum(input_tokens), 0) as input_tokens,"
        " coalesce(sum(cached_tokens), 0) as cached_tokens,"
        " coalesce(sum(output_tokens), 0) as output_tokens"
    )

    def spent(self) -> dict:
        """Return the calls made so far and their tokens (for budgets across resumes).

        ``{"calls": n, "by_model": [{"model", "batch", "input_tokens", "cached_tokens",
        "output_tokens"}, ...]}``: one entry per model and mode (``batch`` 0 or 1), each
        priced by ``PriceTable.row_cost``.
        """
        calls = next(self.db.query("select count(*) as n from calls"))["n"]
        by_model = [
            dict(r)
            for r in self.db.query(
                f"select model, {self._TOKENS} from calls group by model, coalesce(batch, 0)"
                " order by model, 2"
            )
        ]
        return {"calls": calls, "by_model": by_model}

    def answered_calls(self) -> dict[str, int]:
        """Count the calls recorded with an answer (any answer, usable or not).

        ``answered`` rows, over ``keys`` distinct call keys: a key answered more than once
        on record was paid twice by a run that should have found the first answer.
        """
        row = next(
            self.db.query(
                "select count(*) as answered, count(distinct key) as keys"
                " from calls where error is null"
            )
        )
        return {"answered": row["answered"], "keys": row["keys"]}

    def endpoint_counts(self) -> list[dict]:
        """Per endpoint: calls made, calls that failed, calls answered (runs before m005: none)."""
        return [
            dict(r)
            for r in self.db.query(
                "select endpoint, count(*) as calls, sum(error is not null) as errors,"
                " sum(error is null) as answered, round(avg(latency_ms), 1) as mean_latency_ms"
                " from calls where endpoint is not null group by endpoint order by min(id)"
            )
        ]

    def call_errors(self, limit: int = 50) -> list[dict]:
        """Per node, endpoint and error text: the calls that failed, commonest first."""
        return [
            dict(r)
            for r in self.db.query(
                "select node, endpoint, error, count(*) as calls from calls"
                " where error is not null group by node, endpoint, error"
                " order by calls desc, min(id) limit ?",
                [limit],
            )
        ]

    def set_parse(self, call_id: int, status: str) -> None:
        """Record how a call's answer parsed (ok, repaired, unusable: ...)."""
        with self.db.conn:
            self.db.conn.execute("update calls set parse = ? where id = ?", [status, call_id])

    # -- batch mode (--batch): shards, their requests, parked samples --------------------

    def park_sample(self, hash_id: str) -> None:
        """Mark a sample waiting for batch answers; it resumes once they are recorded."""
        with self.db.conn:
            self.db.conn.execute(
                "update samples set status = 'parked', updated_at = ? where hash_id = ?",
                [time.time(), hash_id],
            )

    def waiting(self, hash_id: str) -> bool:
        """Whether a sample has batch requests still out (queued in a shard or submitted)."""
        return (
            self._one(
                "select 1 as x from batch_requests where hash_id = ?"
                " and state in ('queued', 'submitted') limit 1",
                [hash_id],
            )
            is not None
        )

    def ready_parked(self) -> list[str]:
        """Return the parked samples none of whose batch requests are still out, in seed order."""
        return [
            r[0]
            for r in self.db.conn.execute(
                "select hash_id from samples where status = 'parked'"
                " and not exists (select 1 from batch_requests as r where r.hash_id ="
                " samples.hash_id and r.state in ('queued', 'submitted')) order by idx"
            )
        ]

    def new_shard(self, name: str, mode: str, path: str) -> int:
        """Record a new shard being filled and return its id."""
        with self.db.conn:
            cursor = self.db.conn.execute(
                "insert into batch_shards (name, mode, state, path, requests, bytes, estimate,"
                " cost, fallback, created_at) values (?, ?, 'filling', ?, 0, 0, 0, 0, 0, ?)",
                [name, mode, path, time.time()],
            )
        return cursor.lastrowid

    def update_shard(self, shard: int, **fields: Any) -> None:
        """Set some fields of a shard."""
        names = ", ".join(f"{name} = ?" for name in fields)
        with self.db.conn:
            self.db.conn.execute(
                f"update batch_shards set {names} where id = ?", [*fields.values(), shard]
            )

    def shard(self, shard: int) -> dict | None:
        """Return one shard's row."""
        return self._one("select * from batch_shards where id = ?", [shard])

    def shards(self, *states: str) -> list[dict]:
        """Return the shards in the given states (all when none is given), oldest first."""
        if not states:
            return self.rows("batch_shards")
        marks = ", ".join("?" for _ in states)
        return [
            dict(r)
            for r in self.db.query(
                f"select * from batch_shards where state in ({marks}) order by id", list(states)
            )
        ]

    def add_request(self, row: dict) -> None:
        """Record a request queued in a shard (replacing the key's earlier request)."""
        row = {"state": "queued", "updated_at": time.time(), **row}
        with self.db.conn:
            self._upsert("batch_requests", row, ("key",))

    def request(self, key: str) -> dict | None:
        """Return the batch request recorded under a call key, or None."""
        return self._one("select * from batch_requests where key = ?", [key])

    def set_request(self, key: str, **fields: Any) -> None:
        """Set some fields of one request."""
        names = ", ".join(f"{name} = ?" for name in fields)
        with self.db.conn:
            self.db.conn.execute(
                f"update batch_requests set {names}, updated_at = ? where key = ?",
                [*fields.values(), time.time(), key],
            )

    def shard_requests(self, shard: int, *states: str) -> list[dict]:
        """Return a shard's requests in the given states (all when none is given)."""
        marks = ", ".join("?" for _ in states)
        where = f" and state in ({marks})" if states else ""
        return [
            dict(r)
            for r in self.db.query(
                f"select * from batch_requests where shard = ?{where} order by key",
                [shard, *states],
            )
        ]

    def move_requests(self, shard: int, from_state: str, to_state: str) -> int:
        """Move a shard's requests from one state to another; return how many moved."""
        with self.db.conn:
            cursor = self.db.conn.execute(
                "update batch_requests set state = ?, updated_at = ? where shard = ? and state = ?",
                [to_state, time.time(), shard, from_state],
            )
        return cursor.rowcount

    def drop_queued(self, shard: int) -> int:
        """Forget the requests of a shard that was never submitted; return how many."""
        with self.db.conn:
            cursor = self.db.conn.execute(
                "delete from batch_requests where shard = ? and state = 'queued'", [shard]
            )
        return cursor.rowcount

    def outstanding_estimate(self) -> float:
        """Return the estimated dollars of requests submitted and not answered yet."""
        row = self._one(
            "select coalesce(sum(estimate), 0) as dollars from batch_requests"
            " where state = 'submitted'",
            [],
        )
        return row["dollars"] if row else 0.0

    def batch_summary(self) -> dict:
        """Return the shards (for `mmevol status`) and how many samples are parked."""
        parked = self.count("samples", status="parked")
        waiting = self._one(
            "select count(distinct hash_id) as n from batch_requests"
            " where state in ('queued', 'submitted')",
            [],
        )
        return {
            "shards": self.rows("batch_shards") if "batch_shards" in self.db.table_names() else [],
            "parked": parked,
            "waiting": waiting["n"] if waiting else 0,
        }

    # -- reading back -------------------------------------------------------------------

    def summary(self, live: bool = True) -> dict:
        """Return counts for `mmevol status`, on the branch the export uses for each sample.

        Per round: ``candidates`` are the items that passed parsing and the checks and went
        to the judge, so ``candidates = kept + judged_out``; ``dropped_parse`` and
        ``dropped_check`` are the items dropped before judging (over every attempt). The
        "dropped" list counts the same drops by stage and reason (plus "seed" items left
        out before round 1). With ``live`` False (no process holds the run any more),
        samples still marked "running" are counted as "interrupted".
        """
        db = self.db
        by_status = self.status_counts()
        if not live and "running" in by_status:
            by_status["interrupted"] = by_status.get("interrupted", 0) + by_status.pop("running")
        adopted = (
            " join samples using (hash_id) where {t}.branch = coalesce(samples.branch, 'main')"
        )
        stages = {
            (r["round"], r["stage"]): r["n"]
            for r in db.query(
                "select round, stage, count(*) as n from dropped"
                + adopted.format(t="dropped")
                + " group by round, stage"
            )
        }
        rounds = []
        for r in db.query(
            "select round, count(*) as samples, sum(candidates) as candidates,"
            " sum(kept) as kept, sum(case when kept = 0 then 1 else 0 end) as empty,"
            " round(avg(nullif(kept, 0)), 2) as kept_per_sample"
            " from rounds" + adopted.format(t="rounds") + " group by round order by round"
        ):
            n = r["round"]
            rounds.append(
                {
                    "round": n,
                    "samples": r["samples"],
                    "candidates": r["candidates"],
                    "kept": r["kept"],
                    "judged_out": stages.get((n, "judge"), 0),
                    "dropped_parse": stages.get((n, "parse"), 0),
                    "dropped_check": stages.get((n, "check"), 0),
                    "empty": r["empty"],
                    "kept_per_sample": r["kept_per_sample"],
                    "mean_score": next(
                        db.query(
                            "select round(avg(score), 2) as s from items"
                            + adopted.format(t="items")
                            + " and round = ?",
                            [n],
                        )
                    )["s"],
                }
            )
        calls = [
            dict(r)
            for r in db.query(
                "select node, count(*) as calls, sum(error is not null) as errors,"
                " coalesce(sum(input_tokens), 0) as input_tokens,"
                " coalesce(sum(output_tokens), 0) as output_tokens,"
                " round(avg(latency_ms), 1) as mean_latency_ms"
                " from calls group by node order by node"
            )
        ]
        answers = [
            dict(r)
            for r in db.query(
                "select node, case when error is not null then 'http error'"
                " when parse is null then 'not parsed (run stopped)'"
                " else parse end as outcome,"
                " count(*) as calls from calls group by 1, 2 order by 1, 3 desc"
            )
        ]
        models = [
            dict(r)
            for r in db.query(
                f"select model, count(*) as calls, {self._TOKENS} from calls"
                " group by model, coalesce(batch, 0) order by model, 3"
            )
        ]
        drops = [
            dict(r)
            for r in db.query(
                "select stage, kind as reason, count(*) as items from dropped"
                + adopted.format(t="dropped")
                + " group by stage, kind order by items desc limit 20"
            )
        ]
        failures = [
            dict(r)
            for r in db.query(
                "select reason, count(*) as n from samples where status = 'failed'"
                " group by reason order by n desc limit 10"
            )
        ]
        return {
            "samples": by_status,
            "rounds": rounds,
            "calls": calls,
            "endpoints": self.endpoint_counts(),
            "answers": answers,
            "models": models,
            "dropped": drops,
            "failures": failures,
        }

    # -- statistics (mmevol stats, mmevol report) ---------------------------------------
    # Round figures cover finished samples on the branch the export uses; calls cover the
    # whole run (every call was paid for). Each query aggregates in SQLite, so memory does
    # not grow with the run.

    _DONE = (
        " join samples using (hash_id) where samples.status = 'done'"
        " and {t}.branch = coalesce(samples.branch, 'main')"
    )

    def round_operator_counts(self) -> list[dict]:
        """Per round and operator: samples, candidates judged, kept items, empty rounds."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, operator, count(*) as samples,"
                " coalesce(sum(candidates), 0) as candidates, coalesce(sum(kept), 0) as kept,"
                " sum(case when kept = 0 then 1 else 0 end) as empty"
                " from rounds" + self._DONE.format(t="rounds") + " group by round, operator"
                " order by round, operator"
            )
        ]

    def empty_round_reasons(self) -> list[dict]:
        """Per round and reason: how many rounds kept no item."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, coalesce(rounds.reason, 'unknown') as reason, count(*) as n"
                " from rounds" + self._DONE.format(t="rounds") + " and kept = 0"
                " group by round, rounds.reason order by round"
            )
        ]

    def kept_score_counts(self) -> list[dict]:
        """Per round and score: how many kept items have it."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, score, count(*) as n from items"
                + self._DONE.format(t="items")
                + " group by round, score order by round, score"
            )
        ]

    def judged_out_score_counts(self) -> list[dict]:
        """Per round and score: items judged out (runs before the judge_reason migration: none)."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, dropped.score as score, count(*) as n from dropped"
                + self._DONE.format(t="dropped")
                + " and stage = 'judge' and dropped.score is not null"
                " group by round, dropped.score order by round, dropped.score"
            )
        ]

    def drop_counts(self) -> list[dict]:
        """Per round, stage and kind: dropped items (round 0 is seed items left out)."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, stage, kind, count(*) as n from dropped"
                + self._DONE.format(t="dropped")
                + " group by round, stage, kind order by round, stage, n desc"
            )
        ]

    def call_counts(self) -> list[dict]:
        """Per model, node and mode (batch 0 or 1): calls, errors and tokens of the whole run."""
        return [
            dict(r)
            for r in self.db.query(
                "select model, node, count(*) as calls, sum(error is not null) as errors,"
                f" {self._TOKENS} from calls group by model, node, coalesce(batch, 0)"
                " order by model, node, 5"
            )
        ]

    def failure_reasons(self, limit: int = 20) -> list[dict]:
        """The commonest reasons samples failed, with how many."""
        return [
            dict(r)
            for r in self.db.query(
                "select reason, count(*) as n from samples where status = 'failed'"
                " group by reason order by n desc limit ?",
                [limit],
            )
        ]

    def finished_samples(self) -> Iterator[dict]:
        """Yield finished samples in seed order: seed record, rounds and kept items.

        Each sample comes with ``rounds`` (round, operator, candidates, kept, reason) and
        ``items`` (round, position, score, item, judge_reason) on its adopted branch; one
        indexed query per sample keeps memory flat.
        """
        for row in self.db.query(
            "select hash_id, idx, branch, seed from samples where status = 'done' order by idx"
        ):
            yield self._sample_detail(dict(row))

    def sample_detail(self, hash_id: str) -> dict | None:
        """Return one sample with its rounds, kept items and dropped items (any status)."""
        row = self._one(
            "select hash_id, idx, branch, seed, status, reason from samples where hash_id = ?",
            [hash_id],
        )
        if row is None:
            return None
        detail = self._sample_detail(row)
        key = [hash_id, row["branch"] or "main"]
        detail["dropped"] = [
            dict(r)
            for r in self.db.query(
                "select round, stage, kind, reason, item, score, judge_reason from dropped"
                " where hash_id = ? and branch = ? order by round, id",
                key,
            )
        ]
        return detail

    def _sample_detail(self, row: dict) -> dict:
        key = [row["hash_id"], row["branch"] or "main"]
        row["rounds"] = [
            dict(r)
            for r in self.db.query(
                "select round, operator, attempts, candidates, kept, reason from rounds"
                " where hash_id = ? and branch = ? order by round",
                key,
            )
        ]
        row["items"] = [
            dict(r)
            for r in self.db.query(
                "select round, position, score, item, judge_reason from items"
                " where hash_id = ? and branch = ? order by round, position",
                key,
            )
        ]
        return row

    def gallery_keys(self) -> Iterator[dict]:
        """Yield every sample's key, status and per-round operator and kept count, in seed order.

        One row per sample: ``operators`` and ``kept`` are comma-joined in round order.
        """
        rounds = (
            "(select group_concat({c}, ',') from (select {c} from rounds"
            " where rounds.hash_id = samples.hash_id"
            " and rounds.branch = coalesce(samples.branch, 'main') order by round))"
        )
        for r in self.db.query(
            "select hash_id, idx, status, "
            + rounds.format(c="operator")
            + " as operators, "
            + rounds.format(c="kept")
            + " as kept from samples order by idx"
        ):
            yield dict(r)

    def finish_times(self) -> list[float]:
        """Return when each finished sample finished (``time.time()``), for benchmarks."""
        return [
            r[0]
            for r in self.db.conn.execute("select updated_at from samples where status = 'done'")
        ]

    def export_rows(self, rounds: int) -> Iterator[dict]:
        """Yield finished samples in seed order, in the authors' output format."""
        for row in self.db.query(
            "select hash_id, branch, seed from samples where status = 'done' order by idx"
        ):
            sample = json.loads(row["seed"])
            sample["hash_id"] = row["hash_id"]
            for rnd in range(1, rounds + 1):
                sample[f"conversations_v{rnd}"] = []
            # One indexed query per sample keeps memory flat on a 163k-sample export.
            for item in self.db.query(
                "select round, item from items where hash_id = ? and branch = ?"
                " order by round, position",
                [row["hash_id"], row["branch"] or "main"],
            ):
                sample.setdefault(f"conversations_v{item['round']}", []).append(
                    json.loads(item["item"])
                )
            sample.setdefault("topic_name", [])
            yield sample

    # -- merging shard runs (mmevol merge, run/merge.py) ------------------------------
    # A shard's results.db is attached under an alias and only read. Checks run on an
    # in-memory Store (``Store(None)``) so that a refused merge writes nothing.

    @contextlib.contextmanager
    def attached(self, path: Path | str, alias: str) -> Iterator[str]:
        """Attach another results database (which must exist) as ``alias`` while in the block."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", alias):
            raise ValueError(f"bad alias {alias!r}")
        self.db.conn.execute(f"attach database ? as {alias}", [str(path)])
        try:
            yield alias
        finally:
            self.db.conn.execute(f"detach database {alias}")

    def attached_meta(self, alias: str) -> dict[str, Any] | None:
        """Return every meta value of an attached database, or None when it has no meta table."""
        tables = {
            r[0]
            for r in self.db.conn.execute(
                f"select name from {alias}.sqlite_master where type = 'table'"
            )
        }
        if not {"meta", "samples", "calls"} <= tables:
            return None
        return {
            key: json.loads(value)
            for key, value in self.db.conn.execute(f"select key, value from {alias}.meta")
        }

    def attached_count(self, alias: str, table: str) -> int:
        """Return how many rows a table of an attached database holds."""
        if table not in _ORDER:
            raise ValueError(f"no table {table!r} in the results database")
        return self.db.conn.execute(f"select count(*) from {alias}.{table}").fetchone()[0]

    def claim_samples(self, alias: str, source: int) -> tuple[str, int] | None:
        """Note that source number ``source`` holds the samples of ``alias``.

        Returns a sample another source noted already, and that source, else None (then
        this source's samples are noted). The notes live in a temporary table.
        """
        conn = self.db.conn
        conn.execute(
            "create temp table if not exists claimed (hash_id text primary key, source int)"
        )
        clash = conn.execute(
            f"select s.hash_id, c.source from {alias}.samples as s"
            " join temp.claimed as c using (hash_id) order by s.idx limit 1"
        ).fetchone()
        if clash is not None:
            return clash[0], clash[1]
        with conn:
            conn.execute(
                f"insert into temp.claimed select hash_id, ? from {alias}.samples", [source]
            )
        return None

    def held_by_another(
        self, alias: str, target: str, origin: str
    ) -> tuple[str, str | None] | None:
        """Return a sample of ``alias`` that ``target`` holds from elsewhere, and from where.

        ``target`` is a merged run attached too; a sample it merged from the same origin
        (run id) is not a clash but an update. The second value is the other origin (None:
        the target ran the sample itself).
        """
        return self.db.conn.execute(
            f"select s.hash_id, m.origin from {alias}.samples as s"
            f" join {target}.samples as t using (hash_id)"
            f" left join {target}.merged as m using (hash_id)"
            " where m.origin is null or m.origin != ? order by s.idx limit 1",
            [origin],
        ).fetchone()

    def pick_progressed(self, alias: str) -> tuple[list[str], int]:
        """Choose the samples of ``alias`` to copy here: new ones, and those that progressed.

        A sample progressed when its ``updated_at``, its number of calls or its highest call
        id differ from what ``merged`` noted. Fills the temporary tables ``pick`` (the
        samples) and ``idmap`` (each of their calls' id there, and its id here: after every
        id here, in the order of the shard's ids). Returns the picked keys and how many of
        them this database holds already.
        """
        conn = self.db.conn
        with conn:
            conn.execute("drop table if exists temp.pick")
            conn.execute("drop table if exists temp.idmap")
            conn.execute(
                "create temp table pick (hash_id text primary key, updated_at real,"
                " calls int, last_call int)"
            )
            conn.execute(
                "insert into temp.pick select s.hash_id, s.updated_at, count(c.id), max(c.id)"
                f" from {alias}.samples as s left join {alias}.calls as c using (hash_id)"
                " group by s.hash_id"
            )
            conn.execute(
                "delete from temp.pick where exists (select 1 from main.merged as m"
                " where m.hash_id = pick.hash_id and m.updated_at is pick.updated_at"
                " and m.calls = pick.calls and m.last_call is pick.last_call)"
            )
            base = conn.execute("select coalesce(max(id), 0) from main.calls").fetchone()[0]
            conn.execute("create temp table idmap (old integer primary key, new int, hash_id text)")
            conn.execute(
                "insert into temp.idmap select id, ? + row_number() over (order by id), hash_id"
                f" from {alias}.calls where hash_id in (select hash_id from temp.pick)",
                [base],
            )
        picked = [r[0] for r in conn.execute("select hash_id from temp.pick order by hash_id")]
        known = conn.execute(
            "select count(*) from temp.pick join main.samples using (hash_id)"
        ).fetchone()[0]
        return picked, known

    def picked_call_ids(self, hash_id: str) -> dict[int, int]:
        """Return a picked sample's call ids in the shard, each with its id here."""
        return dict(
            self.db.conn.execute(
                "select old, new from temp.idmap where hash_id = ?", [hash_id]
            ).fetchall()
        )

    def copy_picked(self, alias: str, origin: str, shard: str) -> None:
        """Replace the picked samples' rows here with those of ``alias``, in one transaction.

        Samples, rounds and items are copied as they are (``idx`` stays the seed's);
        dropped items get new ids in their order there; calls get the ids ``idmap`` gave
        them. Columns one side lacks (runs of another version) are left out.
        """
        conn = self.db.conn
        where = "where hash_id in (select hash_id from temp.pick)"
        with conn:
            for table in (*_SAMPLE_TABLES, "calls", "merged"):
                conn.execute(f"delete from main.{table} {where}")
            for table in _SAMPLE_TABLES:
                names = ", ".join(self._shared_columns(alias, table, skip=("id",)))
                conn.execute(
                    f"insert into main.{table} ({names}) select {names} from {alias}.{table}"
                    f" {where} order by {_ORDER[table]}"
                )
            columns = self._shared_columns(alias, "calls", skip=("id",))
            names = ", ".join(columns)
            picked = ", ".join(f"c.{c}" for c in columns)
            conn.execute(
                f"insert into main.calls (id, {names}) select m.new, {picked}"
                f" from {alias}.calls as c join temp.idmap as m on m.old = c.id order by m.new"
            )
            conn.execute(
                "insert into main.merged (hash_id, origin, shard, updated_at, calls, last_call)"
                " select hash_id, ?, ?, updated_at, calls, last_call from temp.pick",
                [origin, shard],
            )

    def _shared_columns(self, alias: str, table: str, skip: Sequence[str] = ()) -> list[str]:
        theirs = {
            r[1] for r in self.db.conn.execute(f"pragma {alias}.table_info({table})").fetchall()
        }
        return [c for c in self.db[table].columns_dict if c in theirs and c not in skip]

    def merged_origins(self) -> dict[str, int]:
        """Return how many samples this merged run holds from each origin (run id)."""
        return dict(
            self.db.conn.execute("select origin, count(*) from merged group by origin").fetchall()
        )


class CheckpointRows:
    """The raw rows of a LangGraph checkpoint database (``graph.sqlite``), for merging.

    Rows are read and written as they are stored (``SqliteSaver``'s tables); the caller
    decodes and re-encodes the values it changes. The tables must exist (the checkpointer's
    ``setup`` creates them).
    """

    def __init__(self, path: Path | str):
        """Open the checkpoint database at ``path``."""
        self.conn = sqlite3.connect(str(path), timeout=60)
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> CheckpointRows:
        """Return the open database."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the connection."""
        self.close()

    def threads(self) -> set[str]:
        """Return the ids of the threads (samples) that have checkpoints."""
        tables = {r[0] for r in self.conn.execute("select name from sqlite_master")}
        if "checkpoints" not in tables:
            return set()
        return {r[0] for r in self.conn.execute("select distinct thread_id from checkpoints")}

    def thread(self, thread_id: str) -> tuple[list[dict], list[dict]]:
        """Return a thread's checkpoint rows and its pending-write rows."""
        return tuple(  # type: ignore[return-value]
            [
                dict(r)
                for r in self.conn.execute(
                    f"select * from {table} where thread_id = ? order by rowid", [thread_id]
                )
            ]
            for table in ("checkpoints", "writes")
        )

    def replace_threads(self, threads: dict[str, tuple[list[dict], list[dict]]]) -> None:
        """Replace threads' rows with the given ones (no rows: the thread is deleted)."""
        with self.conn:
            for thread_id, tables in threads.items():
                for table, rows in zip(("checkpoints", "writes"), tables, strict=True):
                    self.conn.execute(f"delete from {table} where thread_id = ?", [thread_id])
                    for row in rows:
                        names = ", ".join(row)
                        marks = ", ".join("?" for _ in row)
                        self.conn.execute(
                            f"insert into {table} ({names}) values ({marks})", list(row.values())
                        )
