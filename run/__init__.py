"""The run engine: seed, runner, workers, stop, merge; may import graph, nodes, runtime, store."""
