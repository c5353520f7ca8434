"""Routing after each decision point: score, retry, give the round up, next round or finish.

The routers are async only so that LangGraph calls them on the event loop instead of
handing each decision to a worker thread.
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END
from langgraph.runtime import Runtime

from mmevol.graph.context import RunContext, context_of
from mmevol.graph.state import SampleState


async def route_after_validate(
    state: SampleState, runtime: Runtime[RunContext]
) -> Literal["score", "select_operator", "eliminate"]:
    """Score usable candidates, retry an unusable answer, or end the round empty."""
    if state.candidates:
        return "score"
    if state.attempt <= context_of(runtime).settings.max_attempts:
        return "select_operator"
    return "eliminate"


async def route_after_score(
    state: SampleState, runtime: Runtime[RunContext]
) -> Literal["gates", "eliminate"]:
    """Pass the judged round through the quality gates when the run has any (``--gates``)."""
    return "gates" if context_of(runtime).settings.gate_set else "eliminate"


async def route_after_eliminate(
    state: SampleState, runtime: Runtime[RunContext]
) -> Literal["select_operator", "__end__"]:
    """Start the next round, or finish after the last one."""
    if state.round <= context_of(runtime).settings.rounds:
        return "select_operator"
    return END
