"""The simulated endpoint and the demo; may import graph, nodes, runtime, store, run, outputs."""
