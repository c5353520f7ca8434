"""Parse the evolution answers and check each item against the method's constraints."""

from __future__ import annotations

from langgraph.runtime import Runtime
from langgraph.types import Command

from mmevol.graph.context import RunContext, context_of
from mmevol.graph.items import QAItem
from mmevol.graph.state import Dropped, SampleState
from mmevol.nodes.checks import screen
from mmevol.nodes.parsing import UnusableAnswer, parse_items
from mmevol.nodes.router import AfterValidate, after_validate
from mmevol.runtime.llm import answer_problem


async def validate(state: SampleState, runtime: Runtime[RunContext]) -> Command[AfterValidate]:
    """Turn the recorded answers into candidate items; an unusable attempt asks for a retry."""
    ctx = context_of(runtime)
    store = ctx.store
    given = state.current_items()
    boxes = [b.bbox for b in state.boxes]
    candidates: list[QAItem] = []
    origins: list[int] = []
    drops = list(state.round_drops)
    problems: list[str] = []
    for chunk, call_id in enumerate(state.calls):
        call = store.get_call(call_id)
        try:
            if problem := answer_problem(call["finish_reason"]):
                raise UnusableAnswer(problem)
            parsed = parse_items(call["response"])
        except UnusableAnswer as err:
            problems.append(str(err))
            store.set_parse(call_id, f"unusable: {err}")
            continue
        store.set_parse(call_id, "repaired" if parsed.repaired else "ok")
        drops += [
            Dropped(item={"raw": raw}, reason=f"not a valid item: {reason}", stage="parse")
            for raw, reason in parsed.rejected
        ]
        kept, rejected = screen(parsed.items, boxes, given, earlier=candidates)
        drops += [Dropped(item=i.model_dump(), reason=r, stage="check") for i, r in rejected]
        if not kept and rejected:
            problems.append("every item broke a constraint: " + rejected[0][1])
        candidates += kept
        origins += [chunk] * len(kept)
    if candidates:
        update = {
            "candidates": candidates,
            "origins": origins,
            "round_drops": drops,
            "problem": None,
        }
        return Command(update=update, goto=after_validate(True, state.attempt, ctx.settings))
    update = {
        "candidates": [],
        "origins": [],
        "round_drops": drops,
        "problem": "; ".join(dict.fromkeys(problems)) or "no usable item",
        "attempt": state.attempt + 1,
    }
    return Command(update=update, goto=after_validate(False, state.attempt + 1, ctx.settings))
