"""The per-sample graph state: small, serialisable, no image bytes and no prompts."""

from __future__ import annotations

from operator import add
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from mmevol.graph.items import QAItem, ScoredItem, Verdict

Operator = Literal["perceptual", "reasoning", "interactive"]
OPERATORS: tuple[Operator, ...] = ("perceptual", "reasoning", "interactive")


class Box(BaseModel):
    """A detection box given with the sample, normalised to 0..1."""

    label: str
    bbox: list[float]


class Dropped(BaseModel):
    """An item that did not make it into a round, and why."""

    item: dict
    """The item as parsed (or the raw entry under ``raw`` when it did not parse)."""
    reason: str
    stage: Literal["parse", "check", "judge"]
    score: int | None = None
    """The judge's score, for an item judged out."""
    judge_reason: str | None = None
    """The judge's own reason, for an item judged out (also inside ``reason``)."""


class RoundRecord(BaseModel):
    """What one finished round produced."""

    round: int
    operator: Operator
    attempts: int
    """Evolution attempts used (1 when the first answer was usable)."""
    candidates: int
    """Items that passed parsing and the constraint checks and went to the judge."""
    kept: list[ScoredItem] = Field(default_factory=list)
    dropped: int = 0
    reason: str | None = None
    """Why the round ended empty, when it did."""


class InputState(BaseModel):
    """What the runner passes in for a new sample."""

    hash_id: str
    image: str
    """Image path relative to the run's image root."""
    caption: str = ""
    boxes: list[Box] = Field(default_factory=list)
    seed_items: list[QAItem]


class SampleState(InputState):
    """The full state of one sample's trip through the rounds."""

    branch: str = "main"
    """"main", or the name of a replay fork; calls and round results are kept per branch."""
    round: int = 1
    """The round under way (1-based); past the last round once the sample is finished."""
    attempt: int = 1
    """The evolution attempt under way within the round."""
    operator: Operator | None = None
    """The operator chosen for the current attempt."""
    calls: list[int] = Field(default_factory=list)
    """Result-database ids of the evolution answers awaiting parsing (one per chunk)."""
    candidates: list[QAItem] = Field(default_factory=list)
    """Items of the current round that passed parsing and checks."""
    origins: list[int] = Field(default_factory=list)
    """For each candidate, the chunk of current items it was evolved from."""
    verdicts: list[Verdict | None] = Field(default_factory=list)
    """The judge's verdict per candidate; None where no verdict could be matched."""
    problem: str | None = None
    """Why the last evolution answer was unusable; told to the model on the retry."""
    round_drops: list[Dropped] = Field(default_factory=list)
    """Items dropped so far in the current round (replaced, not appended, by each update)."""
    rounds: Annotated[list[RoundRecord], add] = Field(default_factory=list)
    """One record per finished round; updates are appended."""

    def current_items(self) -> list[QAItem]:
        """Return the input of the next round: the latest non-empty round, else the seed."""
        for record in reversed(self.rounds):
            if record.kept:
                return [_unscored(k) for k in record.kept]
        return list(self.seed_items)


_QA_FIELDS = tuple(QAItem.model_fields)


def _unscored(item: ScoredItem) -> QAItem:
    """Return a kept item without its score: its fields as they are, already validated.

    Nodes call ``current_items`` several times a round; building the item from its
    fields skips a dump and a full validation that would give the same item.
    """
    return QAItem.model_construct(**{name: _copied(getattr(item, name)) for name in _QA_FIELDS})


def _copied(value: object) -> object:
    return list(value) if isinstance(value, list) else value
