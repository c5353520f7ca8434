"""Where a sample goes after each decision: score, retry, end the round, next round or finish.

The three deciding nodes (validate, score, eliminate) return their update together with the
next node, as a LangGraph ``Command``; these functions make that choice, each typed by the
nodes it may lead to (LangGraph draws the graph's edges from the nodes' return types).
Deciding inside the node rather than in a conditional edge spares LangGraph, nine times a
sample, a traced router call and a fresh read of the whole state into ``SampleState``.
"""

from __future__ import annotations

from typing import Literal

from mmevol.graph.config import Settings

AfterValidate = Literal["score", "select_operator", "eliminate"]
AfterScore = Literal["gates", "eliminate"]
AfterEliminate = Literal["select_operator", "__end__"]


def after_validate(usable: bool, attempt: int, settings: Settings) -> AfterValidate:
    """Score usable candidates, retry an unusable answer, or end the round empty.

    ``attempt`` is the attempt the state holds after validate's update (it counts up on
    an unusable answer).
    """
    if usable:
        return "score"
    if attempt <= settings.max_attempts:
        return "select_operator"
    return "eliminate"


def after_score(settings: Settings) -> AfterScore:
    """Pass the judged round through the quality gates when the run has any (``--gates``)."""
    return "gates" if settings.gate_set else "eliminate"


def after_eliminate(next_round: int, settings: Settings) -> AfterEliminate:
    """Start the next round, or finish after the last one."""
    if next_round <= settings.rounds:
        return "select_operator"
    return "__end__"
