"""The gates table: the quality gates' verdicts on each kept item (`--gates`), and their counts."""

from __future__ import annotations

from collections.abc import Iterable

from mmevol.store.database import StoreBase

GATE_COLUMNS = (
    "blind_answer",
    "blind_verdict",
    "blind_reason",
    "judge2_improved",
    "judge2_score",
    "judge2_reason",
    "agreement",
)


class Gates(StoreBase):
    """Writes and reads of ``gates``: one row per kept item of a gated round."""

    def save_gates(self, hash_id: str, branch: str, rnd: int, rows: Iterable[dict]) -> None:
        """Write one round's gate verdicts (``position`` and gate columns), replacing any."""
        key = [hash_id, branch, rnd]
        names = ", ".join(GATE_COLUMNS)
        marks = ", ".join("?" for _ in GATE_COLUMNS)
        with self.db.conn:
            self.db.conn.execute(
                "delete from gates where hash_id = ? and branch = ? and round = ?", key
            )
            self.db.conn.executemany(
                f"insert into gates (hash_id, branch, round, position, {names})"
                f" values (?, ?, ?, ?, {marks})",
                [[*key, row["position"], *(row.get(c) for c in GATE_COLUMNS)] for row in rows],
            )

    def gates_of(self, hash_id: str, branch: str = "main") -> dict[tuple[int, int], dict]:
        """Return a sample's gate rows by (round, position)."""
        return {
            (r["round"], r["position"]): r
            for r in self.db.query(
                "select * from gates where hash_id = ? and coalesce(branch, 'main') = ?",
                [hash_id, branch],
            )
        }

    def gate_counts(self) -> list[dict]:
        """Return per round and operator: items checked and flagged by each gate (main branch).

        Only finished rounds of the samples' current branch count.
        """
        return list(
            self.db.query(
                "select g.round as round, r.operator as operator,"
                " sum(g.blind_verdict is not null) as blind_checked,"
                " sum(g.blind_verdict = 'answerable') as blind_flagged,"
                " sum(g.agreement is not null) as judge2_checked,"
                " sum(g.judge2_improved = 0) as judge2_flagged,"
                " avg(g.agreement) as agreement"
                " from gates g join samples s on s.hash_id = g.hash_id"
                " and coalesce(s.branch, 'main') = coalesce(g.branch, 'main')"
                " join rounds r on r.hash_id = g.hash_id and r.branch = g.branch"
                " and r.round = g.round group by g.round, r.operator order by g.round, r.operator"
            )
        )
