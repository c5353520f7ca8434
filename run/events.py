"""What a run tells its listener as it goes: the rows, each sample's fate, notices, stops.

A listener is called with one event at a time: the row count first, then a sample event
for each row (started, then exactly one of done, failed, rejected, skipped or
interrupted), notices, and ``Stopping``/``Aborting`` when the run stops. Events are small
frozen dataclasses, so worker processes send them to their parent over a queue as they are.

Why a run stops (``StopReason``) is in ``mmevol.runtime.stops``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mmevol.runtime.stops import StopReason

SampleKind = Literal["started", "done", "failed", "rejected", "skipped", "interrupted", "parked"]
"""What happened to a row: started; finished (done), failed on the way (failed), refused
before any call as bad input (rejected), finished in an earlier run (skipped), or stopped
mid-way by the run's stop (interrupted; the next run resumes it). In batch mode a sample
also parks (parked) until its batch answers come, and is then started again."""

ENDS_A_ROW: frozenset[SampleKind] = frozenset(
    {"done", "failed", "rejected", "skipped", "interrupted"}
)
"""The sample events of which each row gets exactly one."""


@dataclass(frozen=True)
class SampleEvent:
    """Something happened to one row of the seed."""

    kind: SampleKind
    hash_id: str
    """The sample's hash_id (``row-N`` for a row whose hash_id clashes with another's)."""


@dataclass(frozen=True)
class Total:
    """The rows the run will go through (None when the seed cannot be counted cheaply)."""

    rows: int | None


@dataclass(frozen=True)
class Notice:
    """Something the user should know that changes nothing about the run's result."""

    text: str


@dataclass(frozen=True)
class Stopping:
    """The run stops cleanly: no new sample or call starts; answers on their way are kept."""

    reason: StopReason


@dataclass(frozen=True)
class Aborting:
    """The run quits at once (a second signal); what was recorded is kept."""


Event = SampleEvent | Total | Notice | Stopping | Aborting

Listener = Callable[[Event], None]
"""Called with each event of a run, in the thread that runs it."""


def ignore(event: Event) -> None:
    """Take an event and do nothing (the listener of a run nobody watches)."""
