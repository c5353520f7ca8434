"""Wire the per-sample graph. Returns the builder uncompiled: callers pick the checkpointer."""

from __future__ import annotations

from langgraph.graph import START, StateGraph

from mmevol.graph.context import RunContext
from mmevol.graph.state import InputState, SampleState
from mmevol.nodes.eliminate import eliminate
from mmevol.nodes.evolve import evolve
from mmevol.nodes.gates import gates
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
    # validate, score and eliminate choose where the sample goes next (see
    # mmevol.nodes.router): validate to the judge, a retry or an empty round's end; score
    # to the quality gates (--gates) or eliminate; eliminate to the next round or the end.
    # With --gates the kept items also pass the gates (scored, never dropped there).
    builder.add_edge("gates", "eliminate")
    return builder
