"""The raw rows of a LangGraph checkpoint database (graph.sqlite), read and written to merge."""

from __future__ import annotations

import sqlite3
from pathlib import Path


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
