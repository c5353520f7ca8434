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
        # Models sometimes write a step as a bare sentence.
        if isinstance(data, str):
            return {"manipulation": "None", "description": data}
        if isinstance(data, dict) and data.get("manipulation") is None:
            return {**data, "manipulation": "None"}
        return data


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
            name = str(key).strip().lower().replace(" ", "_")
            name = _KEY_ALIASES.get(name, name)
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
    if isinstance(value, list):
        return "\n".join(str(_flatten_text(v)) for v in value)
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_flatten_text(v)}" for k, v in value.items())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


_YES = {"yes", "y", "true", "improved", "1"}
_NO = {"no", "n", "false", "not improved", "0"}


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
            for alias in ("index", "id", "item_number", "number"):
                if alias in data and "item" not in data:
                    data["item"] = data[alias]
            if "improve" in data and "improved" not in data:
                data["improved"] = data["improve"]
        return data

    @field_validator("improved", mode="before")
    @classmethod
    def _yes_no(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        text = str(value).strip().strip(".").lower()
        if text in _YES:
            return True
        if text in _NO:
            return False
        raise ValueError(f"expected yes or no, got {value!r}")

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, str):
            match = re.match(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?", value)
            if not match:
                raise ValueError(f"expected a number, got {value!r}")
            value = float(match.group(1))
        if isinstance(value, float):
            if math.isnan(value):
                raise ValueError("expected a number")
            value = round(value)
        return min(10, max(0, int(value)))

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


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:no|')t|i cannot|i'm unable|i am unable|as an ai)",
    re.IGNORECASE,
)


def extract_json(text: str | None) -> tuple[Any, bool]:
    """Find the JSON value in a model answer.

    Returns:
        The decoded value and whether it needed repairing (anything beyond removing a
        fence or surrounding prose).

    Raises:
        UnusableAnswer: the answer is empty, a refusal, an HTML page or has no JSON.
    """
    if text is None or not text.strip():
        raise UnusableAnswer("the answer was empty")
    stripped = text.strip()
    if stripped.lower().startswith(("<!doctype html", "<html")):
        raise UnusableAnswer("the answer was an HTML page, not JSON")
    fenced = _FENCE.search(stripped)
    body = fenced.group(1).strip() if fenced else stripped
    start = min((i for i in (body.find("["), body.find("{")) if i >= 0), default=-1)
    if start < 0:
        if _REFUSAL.match(stripped):
            raise UnusableAnswer("the answer was a refusal")
        raise UnusableAnswer("the answer held no JSON")
    body = body[start:]
    try:
        return json.loads(body), False
    except json.JSONDecodeError:
        pass
    # Cut prose that follows the JSON before asking json_repair, which would
    # otherwise try to fold the trailing sentence into the value.
    end = max(body.rfind("]"), body.rfind("}"))
    candidate = body[: end + 1] if end > 0 else body
    try:
        return json.loads(candidate), False
    except json.JSONDecodeError:
        pass
    repaired = json_repair.loads(candidate)
    if repaired in ("", None, [], {}):
        if _REFUSAL.match(stripped):
            raise UnusableAnswer("the answer was a refusal")
        raise UnusableAnswer("the answer held no readable JSON")
    return repaired, True


def _as_entries(value: Any, key_hint: str) -> list[Any]:
    """Unwrap a list that the model put inside an object, or a lone object."""
    if isinstance(value, list):
        # A list of one list happens when a model wraps its list twice.
        if len(value) == 1 and isinstance(value[0], list):
            return value[0]
        return value
    if isinstance(value, dict):
        if key_hint in {str(k).lower() for k in value}:
            return [value]
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
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
    entries = _as_entries(value, "question")
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
    entries = _as_entries(value, "improved")
    verdicts: list[Verdict | None] = []
    for entry in entries:
        try:
            verdicts.append(Verdict.model_validate(entry))
        except ValidationError:
            verdicts.append(None)
    if not any(verdicts):
        raise UnusableAnswer("no entry was a valid verdict")
    return verdicts


def _short_json(entry: Any, limit: int = 2000) -> str:
    text = entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False)
    return text[:limit]
