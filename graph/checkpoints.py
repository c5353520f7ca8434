"""Open the LangGraph checkpoint database of a run, deserialising only this project's types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

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


@asynccontextmanager
async def open_checkpointer(path: Path) -> AsyncIterator[AsyncSqliteSaver]:
    """Yield an AsyncSqliteSaver on ``path`` whose serializer knows the state types."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(str(path)) as conn:
        yield AsyncSqliteSaver(conn, serde=JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES))
