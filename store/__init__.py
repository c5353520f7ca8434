"""The results database (results.db), one module per concern; imports nothing else of mmevol."""
