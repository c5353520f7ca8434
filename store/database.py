"""Opening results.db (WAL, migrations) and what every table's class shares: rows, meta."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Self

from sqlite_utils import Database

from mmevol.store.migrations import migrations


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
        new = not Path(path).exists()
        db = Database(path)
        if new:
            # A new file takes its schema before WAL starts: in WAL every migration's commit
            # would stay in the -wal file (over 200 kB for all of them) until a checkpoint.
            migrations.apply(db)
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
ORDER = {
    "meta": "key",
    "samples": "idx, hash_id",
    "rounds": "hash_id, branch, round",
    "items": "hash_id, branch, round, position",
    "dropped": "id",
    "calls": "id",
    "batch_shards": "id",
    "batch_requests": "shard, key",
    "merged": "hash_id",
    "gates": "hash_id, branch, round, position",
}


class StoreBase:
    """One open connection to a results database (``self.db``) and the reads every table shares.

    The classes of ``samples``, ``rounds``, ``calls``, ``batches``, ``queries`` and
    ``merging`` extend it; ``Store`` (``results.py``) combines them over one connection.
    """

    def __init__(self, path: Path | str | None):
        """Open the database at ``path`` (None for in-memory)."""
        self.db = open_db(path)

    def close(self) -> None:
        """Close the connection (``with Store(...)`` does it for you)."""
        self.db.close()

    def __enter__(self) -> Self:
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
            for r in self.db.query(f"select * from {table}{where} order by {ORDER[table]}", params)
        ]

    def _where(self, table: str, match: dict[str, Any]) -> tuple[str, list]:
        if table not in ORDER:
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

    # -- helpers of the table classes ---------------------------------------------------

    def _one(self, sql: str, params: list) -> dict | None:
        # Plain cursor: a hot path, where sqlite-utils' query generator costs more.
        cursor = self.db.conn.execute(sql, params)
        row = cursor.fetchone()
        return dict(zip([d[0] for d in cursor.description], row, strict=True)) if row else None

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
