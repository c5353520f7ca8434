"""The results database (results.db), one module per concern; imports nothing else of mmevol."""

import sys

# sqlite-utils imports pandas whenever it is installed (it is, for the hf export) only to
# recognise pandas values in inserts, which this project never makes; that import is
# 0.2 s of every command's start. sqlite-utils is therefore first imported with pandas
# hidden, and goes without it; pandas stays importable for whatever needs it later.
if "sqlite_utils" not in sys.modules and "pandas" not in sys.modules:
    sys.modules["pandas"] = None  # type: ignore[assignment]  # makes `import pandas` fail
    try:
        import sqlite_utils  # noqa: F401
    finally:
        del sys.modules["pandas"]
