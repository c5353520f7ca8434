"""Pick the evolution operator of an attempt: random by the method's weights, yet reproducible."""

from __future__ import annotations

import random

from langgraph.runtime import Runtime

from mmevol.graph.context import RunContext, context_of
from mmevol.graph.state import OPERATORS, Operator, SampleState

WEIGHTS: dict[Operator, float] = {"perceptual": 0.5, "reasoning": 0.25, "interactive": 0.25}


async def select_operator(state: SampleState, runtime: Runtime[RunContext]) -> dict:
    """Choose the operator for this round and attempt, and clear the attempt's leftovers."""
    seed = context_of(runtime).settings.seed
    return {
        "operator": pick_operator(seed, state.hash_id, state.round, state.attempt),
        "calls": [],
        "candidates": [],
        "verdicts": [],
    }


def pick_operator(seed: int, hash_id: str, round_: int, attempt: int) -> Operator:
    """Return the operator drawn from (seed, hash_id, round, attempt) alone.

    ``random.Random`` seeded with a string hashes it with SHA-512, so the draw is the
    same in every process and on every machine, whatever ``PYTHONHASHSEED`` is.
    """
    rng = random.Random(f"{seed}|{hash_id}|{round_}|{attempt}")
    return rng.choices(OPERATORS, weights=[WEIGHTS[o] for o in OPERATORS])[0]
