"""The items a sample carries: Q&A&S items, their solving steps and the judge's verdicts.

Models write these loosely (synonyms for keys, a list where a string belongs, "7/10" for
a score), so each model reads leniently and stores one strict shape. They are the data of
the graph state (``mmevol.graph.state``) and what ``mmevol.nodes.parsing`` validates
answers into.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


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


def item_field(key: Any) -> str:
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
            name = item_field(key)
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
ITEM_KEYS = ("item", "index", "id", "item_number", "number")
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


SCORE_SCALE = (0, 10)
"""The judge's scores: 0 (a "no") to 10; scores on other scales are rescaled into it."""


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
            for alias in ITEM_KEYS[1:]:
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
        return min(SCORE_SCALE[1], max(SCORE_SCALE[0], value))

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
