"""Merging shard runs (`mmevol merge`): attach a shard's results.db and copy its samples."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmevol.store.database import ORDER, StoreBase

# The tables of one sample's results, copied by ``mmevol merge`` (``calls`` apart: new ids).
_SAMPLE_TABLES = ("samples", "rounds", "items", "dropped", "gates")


class Merging(StoreBase):
    """Reads of attached shard databases, and the copies that merge them here (``merged``).

    A shard's results.db is attached under an alias and only read. Checks run on an
    in-memory Store (``Store(None)``) so that a refused merge writes nothing. Used by
    ``run/merge.py``.
    """

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
        if table not in ORDER:
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
                if not names:  # a shard of a version without the table
                    continue
                conn.execute(
                    f"insert into main.{table} ({names}) select {names} from {alias}.{table}"
                    f" {where} order by {ORDER[table]}"
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
