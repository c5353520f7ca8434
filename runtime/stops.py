"""Why a run stops: the reason made where the stop happens, carried unchanged to the report.

A ``StopReason`` is made where a stop happens (a signal, a budget, the failure breaker, a
worker) and travels unchanged to the ``RunReport``; ``StopReason.exit_code`` is the one
place that turns it into the exit status of ``mmevol run``. The model client makes the
budget and breaker stops, so the reasons live with the runtime.
"""

from __future__ import annotations

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
