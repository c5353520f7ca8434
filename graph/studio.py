"""The compiled graph for LangGraph Studio (``langgraph dev`` reads it via langgraph.json).

Studio brings its own checkpointer and cannot pass the run context, so the nodes build
one from the environment (see ``graph.context.context_of``).
"""

from mmevol.graph.build import build_graph

graph = build_graph().compile()
