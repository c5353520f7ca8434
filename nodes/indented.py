"""Indented JSON for prompts: the text of ``json.dumps(value, indent=1, ensure_ascii=False)``.

Every evolution and judge prompt shows items as indented JSON, and the prompt text is part
of each call's recorded request, so it must stay byte for byte what it has always been.
``json.dumps`` with an indent runs the standard library's pure-Python encoder, a
generator per nesting level; on the overhead benchmark that was 3-4% of a run's CPU. Here
strings are escaped by the same C function the standard encoder uses and the structure is
joined directly. Anything outside plain JSON types (NaN, non-string keys, other objects)
is handed back to ``json.dumps``, so the output is the same in every case.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring
from typing import Any


class _Unusual(Exception):
    """A value this writer leaves to ``json.dumps``."""


def dumps_indented(value: Any) -> str:
    """Return ``json.dumps(value, indent=1, ensure_ascii=False)``."""
    try:
        return _write(value, "\n")
    except (_Unusual, RecursionError):
        return json.dumps(value, indent=1, ensure_ascii=False)


def _write(value: Any, newline: str) -> str:
    # ``newline`` is the line break and indent of the enclosing level.
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is dict:
        if not value:
            return "{}"
        inner = newline + " "
        parts = []
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            parts.append(encode_basestring(key) + ": " + _write(item, inner))
        return "{" + inner + ("," + inner).join(parts) + newline + "}"
    if kind is list or kind is tuple:
        if not value:
            return "[]"
        inner = newline + " "
        return "[" + inner + ("," + inner).join([_write(v, inner) for v in value]) + newline + "]"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    raise _Unusual
