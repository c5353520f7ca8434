"""Turn raw model text into validated Q&A items and judge verdicts.

Real endpoints answer with fenced JSON, prose around it, trailing commas, raw newlines
inside strings, a single object instead of a list, synonyms for keys and values of the
wrong type. ``json_repair`` fixes the syntax; the pydantic models of ``mmevol.graph.items``
fix the shapes.
What cannot be recovered raises ``UnusableAnswer`` with a sentence that is both stored as
the failure reason and fed back to the model on the retry.
"""

from __future__ import annotations

import json
import re
from typing import Any

import json_repair
from pydantic import BaseModel, Field, ValidationError

from mmevol.graph.items import ITEM_KEYS, QAItem, Verdict, item_field, render_errors
from mmevol.nodes.refusals import ANSWER_REFUSAL


class UnusableAnswer(ValueError):
    """Raised when a model answer holds nothing usable; the message says why."""


_FENCE = re.compile(r"```([a-zA-Z0-9_-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_HTML = ("<!doctype html", "<html", "<head", "<body", "<?xml")
_STRICT = json.JSONDecoder()
_LENIENT = json.JSONDecoder(strict=False)  # also takes raw newlines and tabs inside strings
_KEYED = re.compile(r"[\"\u201c\u201d']\s*:")
# How broken JSON starts: a bracket, then a nested bracket, a quote or a // comment.
_JSONISH = re.compile(r"[\[{]\s*[\[{\"\u201c'/]")
_MAX_SPANS = 200


def _closing(text: str, at: int) -> int | None:
    """Return the index just past the bracket that closes ``text[at]``, or None if unclosed.

    Brackets inside double-quoted strings do not count; the JSON may be invalid otherwise.
    """
    depth, in_string, escaped = 0, False, False
    for i in range(at, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _decode(text: str, at: int) -> tuple[Any, bool] | None:
    """Decode the JSON value at ``text[at]``, ignoring what follows; (value, was lenient)."""
    for decoder, lenient in ((_STRICT, False), (_LENIENT, True)):
        try:
            return decoder.raw_decode(text, at)[0], lenient
        except json.JSONDecodeError:
            continue
    return None


def _first_bracket(text: str, start: int, stop: int) -> int:
    hits = [i for i in (text.find("[", start, stop), text.find("{", start, stop)) if i >= 0]
    return min(hits, default=-1)


def _holds_objects(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
    )


def extract_json(text: str | None) -> tuple[Any, bool]:
    """Find the JSON value in a model answer.

    The bracketed spans of the answer are tried in order: the first that decodes to
    objects wins, whatever prose or fences follow it. A span that does not decode but has
    ``"key":`` pairs is taken as broken JSON and repaired; other spans (prose such as
    "[2 items]" or "[see below") are skipped.

    Returns:
        The decoded value and whether it needed repairing (anything beyond removing a
        fence, a reasoning block or surrounding prose).

    Raises:
        UnusableAnswer: the answer is empty, a refusal, an HTML page or has no JSON.
    """
    if text is None or not text.strip():
        raise UnusableAnswer("the answer was empty")
    # Reasoning models served by vLLM or SGLang may put their thinking before the answer.
    stripped = _THINK.sub("", text).strip()
    if not stripped:
        raise UnusableAnswer("the answer was empty")
    if stripped.lower().startswith(_HTML):
        raise UnusableAnswer("the answer was an HTML page, not JSON")
    # The JSON sits in the first fence labelled json, else in the first fence holding a
    # bracket, else anywhere in the text.
    fences = [m for m in _FENCE.finditer(stripped) if "[" in m.group(2) or "{" in m.group(2)]
    fences.sort(key=lambda m: m.group(1).lower() != "json")
    start, stop = fences[0].span(2) if fences else (0, len(stripped))
    plain: tuple[Any, bool] | None = None
    broken: tuple[int, int] | None = None
    pos = start
    for _ in range(_MAX_SPANS):
        at = _first_bracket(stripped, pos, stop)
        if at < 0:
            break
        # Decoding may run past the fence: a fence written inside a JSON string must not
        # cut the value short.
        decoded = _decode(stripped, at)
        if decoded is not None and _holds_objects(decoded[0]):
            return decoded
        # Only a span that is not the answer needs its end found, character by character.
        end = _closing(stripped, at)
        if decoded is not None:
            plain = plain or decoded
        elif _JSONISH.match(stripped, at) and _KEYED.search(
            stripped, at, end if end is not None else stop
        ):
            broken = (at, end if end is not None else stop)
            break
        # An unclosed bracket in prose ("[see below") must not hide the JSON after it.
        pos = end if end is not None else at + 1
    if broken is None:
        if not fences and ANSWER_REFUSAL.match(stripped):
            raise UnusableAnswer("the answer was a refusal")
        if plain is not None:
            return plain
        first = _first_bracket(stripped, start, stop)
        if first < 0:
            raise UnusableAnswer("the answer held no JSON")
        broken = (first, stop)
    candidate = stripped[broken[0] : broken[1]]
    # Cut prose that follows the JSON before asking json_repair, which would
    # otherwise try to fold the trailing sentence into the value.
    last = max(candidate.rfind("]"), candidate.rfind("}"))
    candidate = candidate[: last + 1] if last > 0 else candidate
    repaired = json_repair.loads(candidate)
    if repaired in ("", None, [], {}):
        if ANSWER_REFUSAL.match(stripped):
            raise UnusableAnswer("the answer was a refusal")
        raise UnusableAnswer("the answer held no readable JSON")
    return repaired, True


_ITEM_MARKERS = (frozenset({"question"}), frozenset({"answer"}))
_VERDICT_MARKERS = (frozenset({"improved", "improve"}), frozenset({"score"}))


def _as_entries(value: Any, markers: tuple[frozenset[str], frozenset[str]]) -> list[Any]:
    """Unwrap a list that the model put inside an object, or a lone object.

    ``markers`` are two sets of key names (after aliasing): an object with a key of the
    first set is a lone entry; one with a key of the second set is a lone entry unless it
    wraps the only list of objects (as ``{"response": [...]}`` does).
    """
    if isinstance(value, list):
        # A list of one list happens when a model wraps its list twice.
        if len(value) == 1 and isinstance(value[0], list):
            return value[0]
        return value
    if isinstance(value, dict):
        names = {item_field(k) for k in value}
        if names & markers[0]:
            return [value]
        lists = [v for v in value.values() if isinstance(v, list)]
        with_objects = [v for v in lists if any(isinstance(e, dict) for e in v)]
        if len(with_objects) == 1:
            return with_objects[0]
        if names & markers[1]:
            return [value]
        if len(lists) == 1:
            return lists[0]
        if value and all(isinstance(v, dict) for v in value.values()):
            # {"1": {...}, "2": {...}}: entries keyed by their number.
            return [
                v if any(str(k).strip().lower() in ITEM_KEYS for k in v) else {**v, "item": key}
                for key, v in value.items()
            ]
        return [value]
    raise UnusableAnswer(f"expected a JSON list, got {type(value).__name__}")


class Parsed(BaseModel):
    """Items recovered from one answer, and entries that could not be used."""

    items: list[QAItem]
    rejected: list[tuple[str, str]] = Field(default_factory=list)
    """(entry as text, reason) for each entry that was not a valid item."""
    repaired: bool = False


def parse_items(text: str | None) -> Parsed:
    """Parse an evolution answer into items; invalid entries are kept as rejects."""
    value, repaired = extract_json(text)
    entries = _as_entries(value, _ITEM_MARKERS)
    items: list[QAItem] = []
    rejected: list[tuple[str, str]] = []
    for n, entry in enumerate(entries, 1):
        try:
            items.append(QAItem.model_validate(entry))
        except ValidationError as err:
            rejected.append((_short_json(entry), f"entry {n}: {render_errors(err)}"))
    if not items:
        if rejected:
            raise UnusableAnswer(
                "no entry was a valid item (" + "; ".join(r for _, r in rejected[:3]) + ")"
            )
        raise UnusableAnswer("the answer held an empty list")
    return Parsed(items=items, rejected=rejected, repaired=repaired)


def parse_verdicts(text: str | None) -> list[Verdict | None]:
    """Parse a judge answer into verdicts; an unreadable entry becomes None."""
    value, _ = extract_json(text)
    entries = _as_entries(value, _VERDICT_MARKERS)
    verdicts: list[Verdict | None] = []
    for entry in entries:
        try:
            verdicts.append(Verdict.model_validate(entry))
        except ValidationError:
            verdicts.append(None)
    if not any(verdicts):
        raise UnusableAnswer("no entry was a valid verdict")
    numbers = [v.item for v in verdicts if v is not None]
    if 0 in numbers and None not in numbers and len(set(numbers)) == len(numbers):
        # Numbered from 0: item 0 cannot be a 1-based number, so every number is 0-based.
        verdicts = [v.model_copy(update={"item": v.item + 1}) if v else v for v in verdicts]
    return verdicts


def _short_json(entry: Any, limit: int = 2000) -> str:
    text = entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False)
    return text[:limit]
