"""Ask the multimodal model to evolve the sample's current items with the chosen operator."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from langgraph.runtime import Runtime

from mmevol.graph.context import RunContext, context_of
from mmevol.graph.items import QAItem
from mmevol.graph.state import Box, SampleState
from mmevol.nodes import prompts
from mmevol.nodes.indented import dumps_indented
from mmevol.runtime.llm import CallKey


async def evolve(state: SampleState, runtime: Runtime[RunContext]) -> dict:
    """Send one call per chunk of items and keep the ids of the recorded answers."""
    ctx = context_of(runtime)
    settings = ctx.settings
    chunks = chunked(state.current_items(), settings.chunk_size)
    keys = [
        CallKey(state.hash_id, state.round, "evolve", state.attempt, n, state.branch)
        for n in range(len(chunks))
    ]
    # Encode the image only when some chunk still has to be asked: a resumed step whose
    # answers are all recorded costs neither a call nor an image decode.
    image_url = None
    if any(ctx.store.find_call(str(k)) is None for k in keys):
        image_url = await ctx.images.data_url(
            settings.images, state.image, settings.image_max_side, settings.jpeg_quality
        )
    answers = await asyncio.gather(
        *(
            ctx.client.ask(key, render_evolve_prompt(state, chunk), image_url, prompts.ITEMS_SCHEMA)
            for key, chunk in zip(keys, chunks, strict=True)
        )
    )
    return {"calls": [a.call_id for a in answers]}


def chunked(items: Sequence[QAItem], size: int) -> list[list[QAItem]]:
    """Split items into chunks of at most ``size`` (one empty chunk for no items)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)] or [[]]


def format_boxes(boxes: Sequence[Box]) -> str:
    """Write boxes one per line as ``label: [x1, y1, x2, y2]`` with 3 decimals."""
    return "\n".join(f"{b.label}: [{', '.join(f'{v:.3f}' for v in b.bbox)}]" for b in boxes)


def items_json(items: Sequence[QAItem]) -> str:
    """Write items as the JSON list the prompts show (``json.dumps`` with ``indent=1``)."""
    return dumps_indented([i.model_dump() for i in items])


def render_evolve_prompt(state: SampleState, chunk: Sequence[QAItem]) -> str:
    """Render the evolution prompt of the current attempt for one chunk of items."""
    assert state.operator is not None, "select_operator runs before evolve"
    box_rule = "" if state.boxes else prompts.NO_BOX_RULE
    return prompts.EVOLVE_PROMPT.format(
        role=prompts.ROLE,
        skills=prompts.SKILLS,
        manipulations=prompts.MANIPULATIONS,
        schema=prompts.ITEM_SCHEMA,
        examples=prompts.EXAMPLES,
        caption=state.caption or "(no caption)",
        boxes=format_boxes(state.boxes) or "(no boxes)",
        operator=state.operator,
        objective=prompts.OBJECTIVES[state.operator],
        constraints=prompts.CONSTRAINTS.format(box_rule=box_rule),
        given_items=items_json(chunk),
        feedback=prompts.FEEDBACK.format(problem=state.problem) if state.problem else "",
    )
