"""The calls table: every model call, its answer, tokens and how its answer parsed."""

from __future__ import annotations

import time

from mmevol.store.database import StoreBase

# The token sums that price calls: per model and mode (batch 1, online 0), since the
# price depends on both. Calls before m004 have NULL cached_tokens and batch: 0.
TOKENS = (
    "coalesce(batch, 0) as batch, coalesce(sum(input_tokens), 0) as input_tokens,"
    " coalesce(sum(cached_tokens), 0) as cached_tokens,"
    " coalesce(sum(output_tokens), 0) as output_tokens"
)


class Calls(StoreBase):
    """Writes and reads of ``calls`` (the run's record of what it asked and paid for)."""

    def find_call(self, key: str) -> dict | None:
        """Return the latest successful call recorded under a key, or None."""
        return self._one(
            "select * from calls where key = ? and error is null order by id desc limit 1", [key]
        )

    # The methods here run several times per sample; plain SQL on the connection
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

    def set_parse(self, call_id: int, status: str) -> None:
        """Record how a call's answer parsed (ok, repaired, unusable: ...)."""
        with self.db.conn:
            self.db.conn.execute("update calls set parse = ? where id = ?", [status, call_id])

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
                f"select model, {TOKENS} from calls group by model, coalesce(batch, 0)"
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
