"""Exports, training formats, stats, plots, report; may import graph, runtime, store, run."""
