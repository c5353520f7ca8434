"""Open the LangGraph checkpoint database of a run, deserialising only this project's types.

The runner drives every sample from one asyncio event loop, so all checkpoint reads and
writes come from a single thread. ``AsyncSqliteSaver`` would send each of them through
aiosqlite's worker thread and back; measured on a run, those hand-offs cost about half of
the orchestrator's CPU per sample, far more than the writes themselves (tens of
microseconds each in WAL mode). ``LoopSqliteSaver`` therefore runs langgraph-checkpoint-
sqlite's own ``SqliteSaver`` directly on the loop's thread behind the async interface.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

# Every type the graph state holds. Anything else found in a checkpoint is refused rather
# than imported, which is what LANGGRAPH_STRICT_MSGPACK asks for, made explicit here.
STATE_TYPES = [
    ("graph.state", "Box"),
    ("graph.state", "Dropped"),
    ("graph.state", "RoundRecord"),
    ("graph.state", "InputState"),
    ("graph.state", "SampleState"),
    ("nodes.parsing", "Step"),
    ("nodes.parsing", "QAItem"),
    ("nodes.parsing", "ScoredItem"),
    ("nodes.parsing", "Verdict"),
]


class LoopSqliteSaver(SqliteSaver):
    """``SqliteSaver`` with its async methods run in place, for a single event loop."""

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Return the checkpoint tuple of a config (see ``SqliteSaver.get_tuple``)."""
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Yield checkpoints, newest first (see ``SqliteSaver.list``)."""
        for item in self.list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint (see ``SqliteSaver.put``)."""
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes (see ``SqliteSaver.put_writes``)."""
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread's checkpoints and writes (see ``SqliteSaver.delete_thread``)."""
        self.delete_thread(thread_id)


@asynccontextmanager
async def open_checkpointer(path: Path) -> AsyncIterator[LoopSqliteSaver]:
    """Yield a checkpointer on ``path`` whose serializer knows the state types."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # A long busy timeout: worker processes of one run take turns writing this file.
    with closing(sqlite3.connect(str(path), check_same_thread=False, timeout=60)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL never corrupts the database on a crash; a power cut may lose the last
        # checkpoints, which a resume redoes from the answers recorded in results.db.
        conn.execute("PRAGMA synchronous=NORMAL")
        yield LoopSqliteSaver(conn, serde=JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES))
