"""The samples table: a sample's life (start, finish, fail, park) and its seed items left out."""

from __future__ import annotations

import json
import time

from mmevol.store.database import StoreBase


class Samples(StoreBase):
    """Writes and reads of ``samples`` (and the round-0 ``dropped`` rows of seed items)."""

    def statuses(self) -> dict[str, str]:
        """Return every sample's status, by hash_id."""
        return {
            r["hash_id"]: r["status"] for r in self.db.query("select hash_id, status from samples")
        }

    def sample(self, hash_id: str) -> dict | None:
        """Return a sample's row, or None."""
        return self._one("select * from samples where hash_id = ?", [hash_id])

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

    # -- batch mode (--batch): parked samples ------------------------------------------

    def park_sample(self, hash_id: str) -> None:
        """Mark a sample waiting for batch answers; it resumes once they are recorded."""
        with self.db.conn:
            self.db.conn.execute(
                "update samples set status = 'parked', updated_at = ? where hash_id = ?",
                [time.time(), hash_id],
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
