"""Keep the candidates the judge found improved, record the round, and move to the next."""

from __future__ import annotations

from langgraph.runtime import Runtime
from langgraph.types import Command

from mmevol.graph.context import RunContext, context_of
from mmevol.graph.items import ScoredItem
from mmevol.graph.state import Dropped, RoundRecord, SampleState
from mmevol.nodes.router import AfterEliminate, after_eliminate


async def eliminate(state: SampleState, runtime: Runtime[RunContext]) -> Command[AfterEliminate]:
    """Write the round's kept and dropped items, then reset the per-round fields."""
    kept: list[ScoredItem] = []
    reasons: list[str | None] = []
    drops = list(state.round_drops)
    unscored = state.problem or "the judge gave no verdict that could be matched to this item"
    for item, verdict in zip(
        state.candidates, state.verdicts or [None] * len(state.candidates), strict=True
    ):
        if verdict is None:
            drops.append(
                Dropped(item=item.model_dump(), reason=f"unscored: {unscored}", stage="judge")
            )
        elif verdict.improved:
            kept.append(ScoredItem(**item.model_dump(), score=verdict.score))
            reasons.append(verdict.reason or None)
        else:
            reason = f"judged not improved (score {verdict.score})"
            if verdict.reason:
                reason += f": {verdict.reason}"
            drops.append(
                Dropped(
                    item=item.model_dump(),
                    reason=reason,
                    stage="judge",
                    score=verdict.score,
                    judge_reason=verdict.reason or None,
                )
            )
    if not state.candidates:
        reason = f"no usable evolution after {state.attempt - 1} attempts: {state.problem}"
    elif not any(state.verdicts):
        reason = f"no item could be scored: {unscored}"
    elif not kept:
        reason = "no item was judged improved"
    else:
        reason = None
    record = RoundRecord(
        round=state.round,
        operator=state.operator or "perceptual",
        attempts=state.attempt if state.candidates else state.attempt - 1,
        candidates=len(state.candidates),
        kept=kept,
        dropped=len(drops),
        reason=reason,
    )
    ctx = context_of(runtime)
    ctx.store.save_round(
        state.hash_id,
        record.model_dump(exclude={"kept"}) | {"kept": len(kept)},
        [k.model_dump() for k in kept],
        [d.model_dump() for d in drops],
        branch=state.branch,
        reasons=reasons,
    )
    update = {
        "rounds": [record],
        "round": state.round + 1,
        "attempt": 1,
        "operator": None,
        "calls": [],
        "candidates": [],
        "origins": [],
        "verdicts": [],
        "round_drops": [],
        "problem": None,
    }
    return Command(update=update, goto=after_eliminate(state.round + 1, ctx.settings))
