"""Turn raw model text into validated Q&A items and judge verdicts.

Real endpoints answer with fenced JSON, prose around it, trailing commas, raw newlines
inside strings, a single object instead of a list, synonyms for keys and values of the
wrong type. ``json_repair`` fixes the syntax; the pydantic models below fix the shapes.
What cannot be recovered raises ``UnusableAnswer`` with a sentence that is both stored as
the failure reason and fed back to the model on the retry.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import json_repair
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class UnusableAnswer(ValueError):
    """Raised when a model answer holds nothing usable; the message says why."""


class Step(BaseModel):
    """One solving step: an optional manipulation and what the step does."""

    model_config = ConfigDict(extra="ignore")

    manipulation: str = "None"
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_loose(cls, data: Any) -> Any:
        # Models sometimes write a step as a bare sentence, or as [manipulation, description].
        if isinstance(data, (list, tuple)):
            if len(data) == 2 and all(isinstance(d, str) for d in data):
                return {"manipulation": data[0], "description": data[1]}
            return {"description": _flatten_text(list(data))}
        if isinstance(data, (str, int, float)):
            return {"manipulation": "None", "description": str(data)}
        return data

    @field_validator("manipulation", "description", mode="before")
    @classmethod
    def _step_text(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value == "":
            return "None" if info.field_name == "manipulation" else ""
        return str(_flatten_text(value))


_KEY_ALIASES = {
    "answers": "answer",
    "response": "answer",
    "solution": "answer",
    "solving_steps": "steps",
    "step": "steps",
    "object": "objects",
    "skill": "skills",
    "instruction": "question",
    "prompt": "question",
    "query": "question",
    "question_format": "format",
}


def _key_name(key: Any) -> str:
    """Return the item field a key of a model's item stands for."""
    name = str(key).strip().lower().replace(" ", "_").replace("-", "_")
    return _KEY_ALIASES.get(name, name)


class QAItem(BaseModel):
    """A question, its answer and its solving steps (one "Q&A&S" item of the method)."""

    model_config = ConfigDict(extra="ignore")

    image_position: str = "single"
    objects: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)
    format: str = "Norm"
    question: str
    steps: list[Step] = Field(default_factory=list)
    answer: str

    @model_validator(mode="before")
    @classmethod
    def _rename_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = _key_name(key)
            # A real key wins over an alias of it.
            if name not in out or str(key).strip().lower() == name:
                out[name] = value
        return out

    @field_validator("objects", "skills", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [part.strip() for part in re.split(r"[,;]", value) if part.strip()]
        if isinstance(value, list):
            return [v if isinstance(v, str) else json.dumps(v) for v in value]
        return value

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, (str, dict)):
            return [value]
        if isinstance(value, list):
            return [v for v in value if v is not None and v != ""]
        return value

    @field_validator("image_position", "format", mode="before")
    @classmethod
    def _default_when_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value == "":
            return "single" if info.field_name == "image_position" else "Norm"
        return str(_flatten_text(value))

    @field_validator("question", "answer", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return _flatten_text(value)

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class ScoredItem(QAItem):
    """An item the judge kept, with its integer difficulty score."""

    score: int


def _flatten_text(value: Any) -> Any:
    """Join an answer given as a list or object into one string."""
    if isinstance(value, bool):
        # A yes/no question answered with a JSON boolean.
        return "Yes" if value else "No"
    if isinstance(value, list):
        return "\n".join(str(_flatten_text(v)) for v in value)
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_flatten_text(v)}" for k, v in value.items())
    if isinstance(value, (int, float)):
        return str(value)
    return value


_YES = {"yes", "y", "true", "improved", "1"}
_NO = {"no", "n", "false", "not improved", "0"}
_ITEM_KEYS = ("item", "index", "id", "item_number", "number")
_SCORE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)


def _yes_no_value(value: Any) -> bool | None:
    """Read a yes/no verdict ("Yes", "NO.", true, "yes, it adds detail"); None if unclear."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().strip(".!").lower()
    if text in _YES:
        return True
    if text in _NO:
        return False
    first = re.match(r"(yes|no|true|false)\b", text)
    if first:
        return first.group(1) in ("yes", "true")
    return None


class Verdict(BaseModel):
    """The judge's verdict on one rewritten item."""

    model_config = ConfigDict(extra="ignore")

    improved: bool
    score: int
    reason: str = ""
    item: int | None = None
    """1-based number of the item this verdict is about, when the judge wrote it."""

    @model_validator(mode="before")
    @classmethod
    def _rename_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {str(k).strip().lower(): v for k, v in data.items()}
            for alias in _ITEM_KEYS[1:]:
                if alias in data and "item" not in data:
                    data["item"] = data[alias]
            if "improve" in data and "improved" not in data:
                data["improved"] = data["improve"]
            # A "no" needs no score: the item is dropped whatever it would be.
            if data.get("score") in (None, "") and _yes_no_value(data.get("improved")) is False:
                data["score"] = 0
        return data

    @field_validator("improved", mode="before")
    @classmethod
    def _yes_no(cls, value: Any) -> Any:
        verdict = _yes_no_value(value)
        if verdict is None:
            raise ValueError(f"expected yes or no, got {value!r}")
        return verdict

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, str):
            # "7", "7/10", "Score: 7", "8 out of 10", "4/5" (scaled to 8).
            match = _SCORE.search(value)
            if not match:
                raise ValueError(f"expected a number, got {value!r}")
            value = float(match.group(1))
            scale = float(match.group(2)) if match.group(2) else 10.0
            if scale > 0 and scale != 10:
                value = value * 10 / scale
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("expected a number")
            value = math.floor(value + 0.5)  # half up: 6.5 -> 7, as a reader expects
        if not isinstance(value, int):
            raise ValueError(f"expected a number, got {value!r}")
        return min(10, max(0, value))

    @field_validator("item", mode="before")
    @classmethod
    def _item_number(cls, value: Any) -> Any:
        if value is None or isinstance(value, int):
            return value
        match = re.search(r"\d+", str(value))
        return int(match.group()) if match else None

    @field_validator("reason", mode="before")
    @classmethod
    def _reason_text(cls, value: Any) -> Any:
        return "" if value is None else str(_flatten_text(value))


def render_errors(error: ValidationError) -> str:
    """Render a pydantic error as short "location: message" text."""
    parts = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "item"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


_FENCE = re.compile(r"```([a-zA-Z0-9_-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_HTML = ("<!doctype html", "<html", "<head", "<body", "<?xml")
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:no|')t|i cannot|i'm unable|i am unable|as an ai)",
    re.IGNORECASE,
)
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
        end = _closing(stripped, at)
        if decoded is not None and _holds_objects(decoded[0]):
            return decoded
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
        if not fences and _REFUSAL.match(stripped):
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
        if _REFUSAL.match(stripped):
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
        names = {_key_name(k) for k in value}
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
                v if any(str(k).strip().lower() in _ITEM_KEYS for k in v) else {**v, "item": key}
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
