"""Open the LangGraph checkpoint database of a run, deserialising only this project's types.

The runner drives every sample from one asyncio event loop, so all checkpoint reads and
writes come from a single thread. ``AsyncSqliteSaver`` would send each of them through
aiosqlite's worker thread and back; measured on a run, those hand-offs cost about half of
the orchestrator's CPU per sample, far more than the writes themselves (tens of
microseconds each in WAL mode). ``LoopSqliteSaver`` therefore runs langgraph-checkpoint-
sqlite's own ``SqliteSaver`` directly on the loop's thread behind the async interface.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from mmevol.graph.items import QAItem, ScoredItem, Step, Verdict
from mmevol.graph.state import Box, Dropped, InputState, RoundRecord, SampleState

# Every type the graph state holds. Anything else found in a checkpoint is refused rather
# than imported, which is what LANGGRAPH_STRICT_MSGPACK asks for, made explicit here.
STATE_TYPES = [
    (cls.__module__, cls.__name__)
    for cls in (
        Box,
        Dropped,
        RoundRecord,
        InputState,
        SampleState,
        Step,
        QAItem,
        ScoredItem,
        Verdict,
    )
]

# Where mmevol 0.1.0 (installed as the top-level modules graph, nodes, sim and cli) kept
# the state types. Its checkpoints name them so; they are read as today's types, and the
# old names are never imported (a folder called graph or nodes may be anyone's).
LEGACY_TYPES = {
    ("graph.state", "Box"): "mmevol.graph.state",
    ("graph.state", "Dropped"): "mmevol.graph.state",
    ("graph.state", "RoundRecord"): "mmevol.graph.state",
    ("graph.state", "InputState"): "mmevol.graph.state",
    ("graph.state", "SampleState"): "mmevol.graph.state",
    ("nodes.parsing", "Step"): "mmevol.graph.items",
    ("nodes.parsing", "QAItem"): "mmevol.graph.items",
    ("nodes.parsing", "ScoredItem"): "mmevol.graph.items",
    ("nodes.parsing", "Verdict"): "mmevol.graph.items",
}

_OLD_NAMES = re.compile(rb"(?<!mmevol\.)(?:graph\.state|nodes\.parsing)")

# The msgpack extension codes whose payload is (module, name, ...): LangGraph's
# constructor and pydantic codes (see langgraph.checkpoint.serde.jsonplus).
_NAMED_EXT_CODES = frozenset({0, 1, 2, 4, 5})


def _renamed(code: int, data: bytes) -> bytes:
    """Return an extension payload with 0.1.0 module names replaced, at every depth."""
    if code not in _NAMED_EXT_CODES:
        return data
    payload = ormsgpack.unpackb(
        data,
        ext_hook=lambda inner, raw: ormsgpack.Ext(inner, _renamed(inner, raw)),
        option=ormsgpack.OPT_NON_STR_KEYS,
    )
    if isinstance(payload, list) and len(payload) >= 2:
        module = LEGACY_TYPES.get((payload[0], payload[1]))
        if module is not None:
            payload[0] = module
    return ormsgpack.packb(payload, option=ormsgpack.OPT_NON_STR_KEYS)


def make_serde() -> JsonPlusSerializer:
    """Return the serializer of a run's checkpoints: state types only, old names mapped."""
    strict = JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)
    hook = strict._unpack_ext_hook

    def unpack_ext(code: int, data: bytes) -> object:
        # Only a payload that names an old module is rewritten: today's pass untouched.
        if code in _NAMED_EXT_CODES and _OLD_NAMES.search(data):
            data = _renamed(code, data)
        return hook(code, data)

    return JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES, __unpack_ext_hook__=unpack_ext)


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

    def delete_checkpoints(self, thread_id: str, checkpoint_ids: Sequence[str]) -> None:
        """Delete some checkpoints of a thread and their writes (a failed replay's fork)."""
        with self.cursor() as cur:
            for checkpoint_id in checkpoint_ids:
                for table in ("checkpoints", "writes"):
                    cur.execute(
                        f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_id = ?",
                        (thread_id, checkpoint_id),
                    )


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
        yield LoopSqliteSaver(conn, serde=make_serde())
