"""Ask the judge (text only) whether each candidate improved, and match verdicts safely."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from langgraph.runtime import Runtime
from langgraph.types import Command

from mmevol.graph.context import RunContext, context_of
from mmevol.graph.items import QAItem, Verdict
from mmevol.graph.state import SampleState
from mmevol.nodes import prompts
from mmevol.nodes.evolve import chunked, items_json
from mmevol.nodes.parsing import UnusableAnswer, parse_verdicts
from mmevol.nodes.router import AfterScore, after_score
from mmevol.runtime.llm import CallKey, answer_problem


async def score(state: SampleState, runtime: Runtime[RunContext]) -> Command[AfterScore]:
    """Score the candidates, one judge call per evolution chunk that produced any."""
    groups = judge_groups(state, context_of(runtime).settings.chunk_size)
    results = await asyncio.gather(
        *(
            _judge_group(
                state, context_of(runtime), chunk, given, [state.candidates[p] for p in positions]
            )
            for chunk, given, positions in groups
        )
    )
    verdicts: list[Verdict | None] = [None] * len(state.candidates)
    problems = []
    for (_, _, positions), (group_verdicts, problem) in zip(groups, results, strict=True):
        for position, verdict in zip(positions, group_verdicts, strict=True):
            verdicts[position] = verdict
        if problem:
            problems.append(problem)
    update = {"verdicts": verdicts, "problem": "; ".join(problems) or None}
    return Command(update=update, goto=after_score(context_of(runtime).settings))


def judge_groups(state: SampleState, chunk_size: int) -> list[tuple[int, list[QAItem], list[int]]]:
    """Group candidates by the chunk they were evolved from.

    Returns:
        (chunk number, the chunk's given items, positions of its candidates) per group.
    """
    given_chunks = chunked(state.current_items(), chunk_size)
    positions: dict[int, list[int]] = {}
    for position, origin in enumerate(state.origins):
        positions.setdefault(origin, []).append(position)
    return [
        (chunk, given_chunks[chunk] if chunk < len(given_chunks) else [], members)
        for chunk, members in positions.items()
    ]


async def _judge_group(
    state: SampleState,
    ctx: RunContext,
    chunk: int,
    given: Sequence[QAItem],
    candidates: Sequence[QAItem],
) -> tuple[list[Verdict | None], str | None]:
    """Ask until the verdicts can be matched; return them and what went wrong, if anything.

    An unusable answer is asked again up to ``max_attempts`` times. A wrong count of
    verdicts is asked again once, saying how many are needed; if the count is still
    wrong, only verdicts that name their item are kept, the rest stay unscored.
    """
    feedback = None
    recount_asked = False
    last_problem = None
    for ask in range(1, ctx.settings.max_attempts + 2):
        prompt = render_score_prompt(given, candidates, feedback)
        answer = await ctx.client.ask(
            CallKey(state.hash_id, state.round, "score", ask, chunk, state.branch),
            prompt,
            schema=prompts.VERDICTS_SCHEMA,
        )
        try:
            if problem := answer_problem(answer.finish_reason):
                raise UnusableAnswer(problem)
            parsed = parse_verdicts(answer.text)
        except UnusableAnswer as err:
            ctx.store.set_parse(answer.call_id, f"unusable: {err}")
            last_problem = f"judge answer unusable: {err}"
            if ask >= ctx.settings.max_attempts:
                break
            feedback = prompts.FEEDBACK.format(problem=str(err))
            continue
        matched, exact = match_verdicts(parsed, len(candidates))
        ctx.store.set_parse(
            answer.call_id, "ok" if exact else f"{len(parsed)} verdicts for {len(candidates)} items"
        )
        if exact or recount_asked:
            problem = (
                None
                if exact
                else (
                    f"judge gave {len(parsed)} verdicts for {len(candidates)} items twice; "
                    "only verdicts naming their item were used"
                )
            )
            return matched, problem
        recount_asked = True
        feedback = prompts.FEEDBACK.format(
            problem=f"it had {len(parsed)} verdicts, but there are exactly {len(candidates)} "
            f'rewritten items: give one verdict per item, with its number in "item"'
        )
    return [None] * len(candidates), last_problem


def match_verdicts(
    verdicts: Sequence[Verdict | None], count: int
) -> tuple[list[Verdict | None], bool]:
    """Match verdicts to ``count`` items without ever shifting one onto the wrong item.

    Returns:
        The verdict per item (None where no verdict can be matched with certainty), and
        whether every item got exactly one verdict.
    """
    numbered = [v for v in verdicts if v is not None and v.item is not None]
    in_place = all(v is None or v.item is None or v.item == n for n, v in enumerate(verdicts, 1))
    if len(verdicts) == count and in_place:
        # Every number the judge wrote agrees with the position: position is safe.
        return list(verdicts), all(v is not None for v in verdicts)
    # Otherwise only a number names an item with certainty; a number given twice is
    # ambiguous and matches nothing, and an unnumbered verdict cannot be placed.
    by_item: dict[int, list[Verdict]] = {}
    for v in numbered:
        by_item.setdefault(v.item, []).append(v)
    matched = [by_item[n][0] if len(by_item.get(n, [])) == 1 else None for n in range(1, count + 1)]
    exact = len(verdicts) == count and len(numbered) == count
    return matched, exact and all(m is not None for m in matched)


def render_score_prompt(
    given: Sequence[QAItem], candidates: Sequence[QAItem], feedback: str | None = None
) -> str:
    """Render the judge prompt for one group of candidates."""
    return prompts.SCORE_PROMPT.format(
        given_items=items_json(given),
        rewritten_items=items_json(candidates),
        count=len(candidates),
        feedback=feedback or "",
    )
