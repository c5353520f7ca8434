"""What a run tells its listener as it goes, and why it stopped.

A listener is called with one event at a time: the row count first, then a sample event
for each row (started, then exactly one of done, failed, rejected, skipped or
interrupted), notices, and ``Stopping``/``Aborting`` when the run stops. Events are small
frozen dataclasses, so worker processes send them to their parent over a queue as they are.

A ``StopReason`` is made where a stop happens (a signal, a budget, the failure breaker, a
worker) and travels unchanged to the ``RunReport``; ``StopReason.exit_code`` is the one
place that turns it into the exit status of ``mmevol run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

StopKind = Literal[
    "signal", "max_calls", "max_cost", "breaker", "worker_died", "worker_failed", "sibling"
]
"""Why a run stops: Ctrl-C or SIGTERM; --max-calls; --max-cost; the failure breaker; a worker
process killed or failing; (inside a worker) another worker or the parent stopped the run."""


@dataclass(frozen=True)
class StopReason:
    """Why a run stopped: its kind, and the sentence shown to the user."""

    kind: StopKind
    message: str

    def __str__(self) -> str:
        """Return the sentence shown to the user."""
        return self.message

    @property
    def exit_code(self) -> int:
        """Return the exit status of ``mmevol run`` stopped for this reason.

        130 for a signal, as a shell reports a command ended by Ctrl-C; 3 for every other
        stop (a budget, the breaker, a worker), which a script can tell from both.
        """
        return 130 if self.kind == "signal" else 3


SIGNAL = StopReason("signal", "interrupted by a signal")
"""The stop of Ctrl-C and SIGTERM."""

SIBLING = StopReason("sibling", "stopped with the other workers")
"""Why a worker stops when another worker (or the parent) stopped the run."""


def max_calls_reached(limit: int) -> StopReason:
    """Return the stop of a run that made its ``--max-calls`` calls."""
    return StopReason("max_calls", f"reached --max-calls {limit}")


def max_cost_reached(budget: float, spent: float) -> StopReason:
    """Return the stop of a run that spent its ``--max-cost`` budget."""
    return StopReason("max_cost", f"reached --max-cost ${budget:g} (spent ${spent:.4f})")


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
