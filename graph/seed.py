"""Stream seed samples (JSON list, JSONL, or a folder of JSON files) and validate them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from mmevol.graph.items import QAItem, render_errors
from mmevol.graph.state import Box, InputState


class SeedSample(BaseModel):
    """One seed record as the method defines it; unknown fields are kept for the export."""

    model_config = ConfigDict(extra="allow")

    id: str | int | None = None
    image: str
    conversations_v0: list[dict[str, Any]]
    """The Q&A items as given; each is validated on its own in ``prepare``."""
    caption: str = ""
    det: list[Box] = []
    hash_id: str | None = None

    @field_validator("image")
    @classmethod
    def _image_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("conversations_v0", mode="before")
    @classmethod
    def _turns_to_items(cls, value: Any) -> Any:
        if (
            isinstance(value, list)
            and value
            and all(isinstance(t, dict) and "from" in t and "value" in t for t in value)
        ):
            return turns_to_items(value)
        return value

    @field_validator("conversations_v0")
    @classmethod
    def _some_items(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not value:
            raise ValueError("holds no Q&A item")
        return value

    @field_validator("caption", mode="before")
    @classmethod
    def _caption_text(cls, value: Any) -> Any:
        if value is None or value == []:
            return ""
        if isinstance(value, list):
            # The two-turn form: the caption is the answer turn.
            turns = [t for t in value if isinstance(t, dict) and t.get("from") == "gpt"]
            if not turns:
                raise ValueError("a caption list needs a 'gpt' turn")
            return str(turns[-1].get("value", ""))
        return value

    @field_validator("det", mode="before")
    @classmethod
    def _boxes(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _box_shapes(self) -> SeedSample:
        for n, box in enumerate(self.det):
            if len(box.bbox) != 4:
                raise ValueError(f"det[{n}] bbox must have 4 numbers, has {len(box.bbox)}")
        return self


def turns_to_items(turns: list[dict]) -> list[dict]:
    """Convert LLaVA human/gpt turns into Q&A items, dropping the ``<image>`` token."""
    items = []
    pending: str | None = None
    for n, turn in enumerate(turns):
        role, text = turn["from"], str(turn["value"])
        if role == "human":
            if pending is not None:
                raise ValueError(f"turn {n} is a second human turn in a row")
            pending = text.replace("<image>", "").strip()
        elif role == "gpt":
            if pending is None:
                raise ValueError(f"turn {n} is a gpt turn with no question before it")
            items.append({"question": pending, "answer": text})
            pending = None
        else:
            raise ValueError(f"turn {n} has unknown role {role!r}")
    if pending is not None:
        raise ValueError("the last human turn has no answer")
    return items


@dataclass
class SeedRow:
    """One row of a seed file: a valid sample, or the reason it is not."""

    index: int
    hash_id: str
    """The sample's key; ``row-<index>`` for a row too broken to have one."""
    source_id: str | None
    raw: dict | None
    sample: InputState | None = None
    error: str | None = None
    skipped_items: list[tuple[dict, str]] = field(default_factory=list)
    """Seed items left out of the evolution (item, reason); the sample runs without them."""


def hash_id_for(index: int, image: str) -> str:
    """Return the method's unique key of a sample."""
    return f"{index}_{image.replace('/', '_')}"


def prepare(index: int, raw: Any) -> SeedRow:
    """Validate one raw row and turn it into the graph's input."""
    if not isinstance(raw, dict):
        return SeedRow(index, f"row-{index}", None, None, error=f"row {index}: not a JSON object")
    source_id = None if raw.get("id") is None else str(raw.get("id"))
    try:
        seed = SeedSample.model_validate(raw)
    except ValidationError as err:
        key = raw.get("hash_id") if isinstance(raw.get("hash_id"), str) else f"row-{index}"
        return SeedRow(
            index,
            key,
            source_id,
            raw,
            error=f"row {index} (id {source_id}): invalid sample: {render_errors(err)}",
        )
    hash_id = seed.hash_id or hash_id_for(index, seed.image)
    # One bad item (the authors' seed has a few with an empty question) should not cost
    # the sample its other items: it is left out of the evolution and recorded.
    items: list[QAItem] = []
    skipped: list[tuple[dict, str]] = []
    for n, entry in enumerate(seed.conversations_v0):
        try:
            items.append(QAItem.model_validate(entry))
        except ValidationError as err:
            skipped.append((entry, f"seed item {n} left out: {render_errors(err)}"))
    if not items:
        return SeedRow(
            index, hash_id, source_id, raw,
            error=f"row {index} (id {source_id}): no usable Q&A item ({skipped[0][1]})",
        )  # fmt: skip
    sample = InputState(
        hash_id=hash_id,
        image=seed.image,
        caption=seed.caption,
        boxes=seed.det,
        seed_items=items,
    )
    return SeedRow(index, hash_id, source_id, raw, sample=sample, skipped_items=skipped)


def row_key(index: int, raw: Any) -> str:
    """Return the key a row will be known by, from the parsed row alone (no validation).

    It is the row's ``hash_id`` when it gives one, else the method's computed one, else
    ``row-<index>`` for a row without a usable image: the same key ``prepare`` settles on.
    """
    if isinstance(raw, dict):
        if isinstance(raw.get("hash_id"), str) and raw["hash_id"]:
            return raw["hash_id"]
        if isinstance(raw.get("image"), str) and raw["image"].strip():
            return hash_id_for(index, raw["image"])
    return f"row-{index}"


def read_seed(path: Path) -> Iterator[SeedRow]:
    """Yield every row of a seed, streamed so that a 449 MB seed never sits in memory."""
    for index, raw, error in raw_rows(Path(path)):
        yield seed_row(index, raw, error)


def seed_row(index: int, raw: Any, error: str | None) -> SeedRow:
    """Turn one row as read (or the reason it could not be read) into a ``SeedRow``."""
    if error is not None:
        return SeedRow(index, f"row-{index}", None, None, error=f"row {index}: {error}")
    return prepare(index, raw)


def count_rows(path: Path) -> int | None:
    """Count a seed's rows cheaply when the format allows it (JSONL, folder), else None."""
    path = Path(path)
    if path.is_dir():
        return sum(1 for _ in path.glob("*.json"))
    if _first_char(path) == "[":
        return None
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _first_char(path: Path) -> str:
    with path.open("r", encoding="utf-8") as fh:
        while chunk := fh.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""


def raw_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (index, parsed row, None), or (index, None, why it cannot be read), streamed."""
    if not path.exists():
        raise FileNotFoundError(f"seed {str(path)!r} does not exist")
    if path.is_dir():
        for index, file in enumerate(sorted(path.glob("*.json"))):
            try:
                yield index, json.loads(file.read_text(encoding="utf-8")), None
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                yield index, None, f"{file.name} is not valid JSON ({err})"
        return
    if _first_char(path) == "[":
        index = 0
        with path.open("rb") as fh:
            try:
                for raw in ijson.items(fh, "item", use_float=True):
                    yield index, raw, None
                    index += 1
            except ijson.JSONError as err:
                # A JSON list cannot be read past a syntax error; say where it stopped.
                yield index, None, f"the JSON list is broken here, no further rows read ({err})"
        return
    with path.open("r", encoding="utf-8") as fh:
        index = 0
        for line in fh:
            if not line.strip():
                continue
            try:
                yield index, json.loads(line), None
            except json.JSONDecodeError as err:
                yield index, None, f"invalid JSON ({err})"
            index += 1
