"""The quality gates after the judge (`--gates`): ask kept items blind, and a second judge.

Gates score, they never delete: the round keeps what the judge kept, and each kept item's
gate verdicts go to the ``gates`` table, where the export filters (``--require-image``,
``--min-agreement``) read them. Every gate call is an ordinary keyed call of the model
client (node ``blind``, ``score_blind`` and ``judge2``), so it is recorded, priced,
budgeted and reused on resume like the judge's.

The blind gate asks the kept items' questions without the image (the blind model, text
only), then asks the judge to compare each blind answer with the item's own answer. A
blind answer that refuses or says it cannot see the image counts as "needs_image"
without asking the judge.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from langgraph.runtime import Runtime

from mmevol.graph.context import RunContext, context_of
from mmevol.graph.items import QAItem, Verdict
from mmevol.graph.state import SampleState
from mmevol.nodes import gateprompts, prompts
from mmevol.nodes.evolve import chunked
from mmevol.nodes.indented import dumps_indented
from mmevol.nodes.parsing import UnusableAnswer, extract_json, parse_verdicts
from mmevol.nodes.score import judge_groups, match_verdicts, render_score_prompt
from mmevol.runtime.llm import CallKey, answer_problem

BLIND_REFUSAL = re.compile(
    r"\b(?:can ?not|can't|unable to|not able to|impossible to|no way to)\s+"
    r"(?:\w+\s+){0,3}?(?:see|view|tell|answer|determine|know|say|identify|read|count)\b"
    r"|\bwithout (?:seeing |looking at |access to |viewing )?(?:the |an |this )?"
    r"(?:image|picture|photo)"
    r"|\b(?:no|not given|not provided|don't have|do not have)\b.{0,20}\b(?:image|picture|photo)\b"
    r"|^\s*(?:i'?m sorry|sorry|unknown|n/?a|i don'?t know)\b",
    re.IGNORECASE,
)
"""A blind answer that refuses or says it lacks the image: it counts as needs_image."""


def kept_positions(state: SampleState) -> list[int]:
    """Return the candidates the judge kept, in the order the round stores them."""
    return [
        n
        for n, verdict in enumerate(state.verdicts or [])
        if verdict is not None and verdict.improved
    ]


async def gates(state: SampleState, runtime: Runtime[RunContext]) -> dict:
    """Run the run's gates on the items the judge kept and record one row per kept item."""
    ctx = context_of(runtime)
    kept = kept_positions(state)
    if not kept:
        return {}
    rows: list[dict[str, Any]] = [{"position": n} for n in range(len(kept))]
    jobs = []
    if "blind" in ctx.settings.gate_set:
        jobs.append(_blind_gate(state, ctx, kept, rows))
    if "judge2" in ctx.settings.gate_set:
        jobs.append(_second_judge(state, ctx, kept, rows))
    await asyncio.gather(*jobs)
    ctx.store.save_gates(state.hash_id, state.branch, state.round, rows)
    return {}


async def _blind_gate(
    state: SampleState, ctx: RunContext, kept: list[int], rows: list[dict]
) -> None:
    items = [state.candidates[p] for p in kept]
    size = ctx.settings.chunk_size
    await asyncio.gather(
        *(
            _blind_chunk(state, ctx, chunk, part, rows[chunk * size : chunk * size + len(part)])
            for chunk, part in enumerate(chunked(items, size))
        )
    )


async def _blind_chunk(
    state: SampleState, ctx: RunContext, chunk: int, items: list[QAItem], rows: list[dict]
) -> None:
    questions = dumps_indented(
        [{"item": n, "question": item.question} for n, item in enumerate(items, 1)],
    )
    answers, problem = await _ask_list(
        ctx,
        state,
        "blind",
        chunk,
        lambda feedback: gateprompts.BLIND_PROMPT.format(
            questions=questions, count=len(items), feedback=feedback
        ),
        gateprompts.BLIND_SCHEMA,
        lambda entry: _text(entry, "answer", "response", "text"),
        len(items),
    )
    to_judge = []
    for n, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        row["blind_answer"] = answer
        if answer is None:
            row["blind_reason"] = f"no blind answer: {problem or 'none matched this item'}"
        elif not answer.strip() or BLIND_REFUSAL.search(answer):
            row["blind_verdict"] = "needs_image"
            row["blind_reason"] = "the blind answer refused or said it needs the image"
        else:
            to_judge.append(n)
    if not to_judge:
        return
    listed = dumps_indented(
        [
            {
                "item": k,
                "question": items[n].question,
                "reference_answer": items[n].answer,
                "blind_answer": answers[n],
            }
            for k, n in enumerate(to_judge, 1)
        ],
    )
    verdicts, problem = await _ask_list(
        ctx,
        state,
        "score_blind",
        chunk,
        lambda feedback: gateprompts.BLIND_JUDGE_PROMPT.format(
            items=listed, count=len(to_judge), feedback=feedback
        ),
        gateprompts.BLIND_JUDGE_SCHEMA,
        _blind_verdict,
        len(to_judge),
    )
    for n, verdict in zip(to_judge, verdicts, strict=True):
        if verdict is None:
            rows[n]["blind_reason"] = f"no comparison verdict: {problem or 'none matched'}"
        else:
            rows[n]["blind_verdict"], rows[n]["blind_reason"] = verdict


def _text(entry: Any, *keys: str) -> str | None:
    if not isinstance(entry, dict):
        return entry if isinstance(entry, str) else None
    for key in keys:
        value = entry.get(key)
        if value is not None and not isinstance(value, dict | list):
            return str(value)
    return None


def _blind_verdict(entry: Any) -> tuple[str, str] | None:
    word = (_text(entry, "verdict", "answerable", "result") or "").strip().lower()
    if word in ("answerable", "yes", "true", "same"):
        verdict = "answerable"
    elif word.replace(" ", "_").replace("-", "_") in ("needs_image", "no", "false", "different"):
        verdict = "needs_image"
    else:
        return None
    return verdict, _text(entry, "reason") or ""


def _entries(text: str) -> list[Any]:
    value, _ = extract_json(text)
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else [value]
    if not isinstance(value, list):
        raise UnusableAnswer(f"expected a JSON list, got {type(value).__name__}")
    return value


def place(entries: Sequence[Any], values: Sequence[Any], count: int) -> list[Any]:
    """Place parsed entries on items: by their "item" number, else by position when none has one.

    An entry whose number is out of range or given twice places nothing.
    """
    numbers = []
    for entry in entries:
        number = entry.get("item") if isinstance(entry, dict) else None
        try:
            numbers.append(int(number) if number is not None else None)
        except (TypeError, ValueError):
            numbers.append(None)
    if all(n is None for n in numbers):
        return (
            [values[n] if n < len(values) else None for n in range(count)]
            if len(values) == count
            else [None] * count
        )
    if 0 in numbers and len(set(numbers)) == len(numbers):
        numbers = [n + 1 if n is not None else None for n in numbers]  # numbered from 0
    placed: list[Any] = [None] * count
    seen: dict[int, int] = {}
    for number, value in zip(numbers, values, strict=True):
        if number is not None and 1 <= number <= count:
            seen[number] = seen.get(number, 0) + 1
            placed[number - 1] = value if seen[number] == 1 else None
    return placed


async def _ask_list(
    ctx: RunContext,
    state: SampleState,
    node: str,
    chunk: int,
    render,
    schema: dict,
    read,
    count: int,
) -> tuple[list[Any], str | None]:
    """Ask until the answer parses (``max_attempts`` asks); return the value per item."""
    feedback = ""
    problem = None
    for ask in range(1, ctx.settings.max_attempts + 1):
        answer = await ctx.client.ask(
            CallKey(state.hash_id, state.round, node, ask, chunk, state.branch),
            render(feedback),
            schema=schema,
        )
        try:
            if trouble := answer_problem(answer.finish_reason):
                raise UnusableAnswer(trouble)
            entries = _entries(answer.text)
            values = [read(e) for e in entries]
            if not any(v is not None for v in values):
                raise UnusableAnswer("no entry could be read")
        except UnusableAnswer as err:
            ctx.store.set_parse(answer.call_id, f"unusable: {err}")
            problem = f"{node} answer unusable: {err}"
            feedback = prompts.FEEDBACK.format(problem=str(err))
            continue
        placed = place(entries, values, count)
        matched = sum(v is not None for v in placed)
        ctx.store.set_parse(
            answer.call_id, "ok" if matched == count else f"{matched} of {count} items matched"
        )
        return placed, None
    return [None] * count, problem


async def _second_judge(
    state: SampleState, ctx: RunContext, kept: list[int], rows: list[dict]
) -> None:
    """Score the kept items again with the second judge, and note how far it agrees."""
    row_of = {p: n for n, p in enumerate(kept)}
    groups = [
        (chunk, given, [p for p in positions if p in row_of])
        for chunk, given, positions in judge_groups(state, ctx.settings.chunk_size)
    ]
    groups = [g for g in groups if g[2]]
    results = await asyncio.gather(
        *(
            _judge2_group(state, ctx, chunk, given, [state.candidates[p] for p in positions])
            for chunk, given, positions in groups
        )
    )
    for (_, _, positions), verdicts in zip(groups, results, strict=True):
        for p, second in zip(positions, verdicts, strict=True):
            first = state.verdicts[p]
            row = rows[row_of[p]]
            if second is None:
                row["judge2_reason"] = "the second judge gave no verdict that could be matched"
                continue
            row["judge2_improved"] = int(second.improved)
            row["judge2_score"] = second.score
            row["judge2_reason"] = second.reason or None
            row["agreement"] = agreement(first, second)


def agreement(first: Verdict, second: Verdict) -> float:
    """Return how far two verdicts on a kept item agree, from 0 to 1.

    0 when the second judge says not improved, else 1 minus the score gap over 10.
    """
    if not second.improved:
        return 0.0
    return round(max(0.0, 1 - abs(first.score - second.score) / 10), 2)


async def _judge2_group(
    state: SampleState,
    ctx: RunContext,
    chunk: int,
    given: Sequence[QAItem],
    candidates: Sequence[QAItem],
) -> list[Verdict | None]:
    feedback = None
    for ask in range(1, ctx.settings.max_attempts + 1):
        prompt = render_score_prompt(given, candidates, feedback) + gateprompts.SECOND_JUDGE
        answer = await ctx.client.ask(
            CallKey(state.hash_id, state.round, "judge2", ask, chunk, state.branch),
            prompt,
            schema=prompts.VERDICTS_SCHEMA,
        )
        try:
            if problem := answer_problem(answer.finish_reason):
                raise UnusableAnswer(problem)
            parsed = parse_verdicts(answer.text)
        except UnusableAnswer as err:
            ctx.store.set_parse(answer.call_id, f"unusable: {err}")
            feedback = prompts.FEEDBACK.format(problem=str(err))
            continue
        matched, exact = match_verdicts(parsed, len(candidates))
        ctx.store.set_parse(
            answer.call_id, "ok" if exact else f"{len(parsed)} verdicts for {len(candidates)} items"
        )
        return matched
    return [None] * len(candidates)
