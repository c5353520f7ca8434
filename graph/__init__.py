"""Graph state, wiring, the batch runner and persistence."""
