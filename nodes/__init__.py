"""Graph nodes (one module each), prompts, the model client and output parsing."""
