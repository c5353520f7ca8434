"""Status, trace, replay and estimate of a run; may import graph, nodes, runtime, store, run."""
