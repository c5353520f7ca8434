"""Wire the per-sample graph. Returns the builder uncompiled: callers pick the checkpointer."""

from __future__ import annotations

from langgraph.graph import START, StateGraph

from mmevol.graph.context import RunContext
from mmevol.graph.state import InputState, SampleState
from mmevol.nodes.eliminate import eliminate
from mmevol.nodes.evolve import evolve
from mmevol.nodes.gates import gates
from mmevol.nodes.router import route_after_eliminate, route_after_score, route_after_validate
from mmevol.nodes.score import score
from mmevol.nodes.select_operator import select_operator
from mmevol.nodes.validate import validate


def build_graph() -> StateGraph:
    """Return the uncompiled graph of one sample's rounds."""
    builder = StateGraph(SampleState, context_schema=RunContext, input_schema=InputState)
    builder.add_node(select_operator)
    builder.add_node(evolve)
    builder.add_node(validate)
    builder.add_node(score)
    builder.add_node(gates)
    builder.add_node(eliminate)

    # Every round, and every retry within a round, starts by drawing an operator.
    builder.add_edge(START, "select_operator")
    builder.add_edge("select_operator", "evolve")
    # The answers are recorded by evolve; validate parses and checks them.
    builder.add_edge("evolve", "validate")
    # Usable items go to the judge; an unusable answer is retried or the round ends empty.
    builder.add_conditional_edges("validate", route_after_validate)
    # With --gates the kept items also pass the quality gates (scored, never dropped there).
    builder.add_conditional_edges("score", route_after_score)
    builder.add_edge("gates", "eliminate")
    # After the last round the sample is finished.
    builder.add_conditional_edges("eliminate", route_after_eliminate)
    return builder
