"""The batch tables (batch_shards, batch_requests): batch mode's shards and their requests."""

from __future__ import annotations

import time
from typing import Any

from mmevol.store.database import StoreBase


class Batches(StoreBase):
    """Writes and reads of ``batch_shards`` and ``batch_requests`` (``--batch``)."""

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
