"""The round tables (rounds, items, dropped): one round's results, per branch of a sample."""

from __future__ import annotations

import json
import re

from mmevol.store.database import StoreBase


def reason_kind(reason: str) -> str:
    """Return the category of a drop reason: its text before any colon, without the score."""
    return re.sub(r"\s*\(score \d+\)", "", reason.split(":", 1)[0]).strip()


class Rounds(StoreBase):
    """Writes and reads of ``rounds``, ``items`` and ``dropped``, and a sample's branches."""

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

    def copy_rounds(self, hash_id: str, source: str, target: str, before_round: int) -> None:
        """Copy a sample's round results before ``before_round`` from one branch to another."""
        with self.db.atomic():
            for table in ("rounds", "items", "dropped", "gates"):
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
            for table in ("rounds", "items", "dropped", "gates"):
                self.db.execute(
                    f"delete from {table} where hash_id = ? and branch = ?", [hash_id, branch]
                )
