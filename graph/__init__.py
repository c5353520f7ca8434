"""The LangGraph graph (state, context, wiring, checkpointer); may import nodes, runtime, store."""
