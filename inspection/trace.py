"""Rebuild one sample's path through the graph from its checkpoint history.

Each step names the node that ran and what it changed: round, attempt, operator, items
in and out, verdicts, dropped items with reasons, errors, and the model calls it made
(tokens, latency). With ``raw`` the model's answers are added from the results database
and the prompts are re-rendered from the state before the step, so no prompt is stored.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from langgraph.types import StateSnapshot

from mmevol.graph.checkpoints import open_checkpointer
from mmevol.graph.state import SampleState
from mmevol.inspection.status import describe_error
from mmevol.nodes.evolve import chunked, render_evolve_prompt
from mmevol.nodes.score import judge_groups, render_score_prompt
from mmevol.run.engine import compile_graph
from mmevol.run.runfolder import run_is_live
from mmevol.store.results import Store


class UnknownSample(LookupError):
    """Raised when a run has no checkpoint of the asked sample or branch."""


async def branch_path(graph: Any, hash_id: str, branch: str = "main") -> list[StateSnapshot]:
    """Return the snapshots of one branch of a sample's thread, oldest first."""
    config = {"configurable": {"thread_id": hash_id}}
    history = [s async for s in graph.aget_state_history(config)]
    if not history:
        raise UnknownSample(f"no checkpoint of sample {hash_id!r} in this run")
    by_id = {s.config["configurable"]["checkpoint_id"]: s for s in history}
    leaf = next((s for s in history if (s.values or {}).get("branch", "main") == branch), None)
    if leaf is None:
        branches = sorted({(s.values or {}).get("branch", "main") for s in history})
        raise UnknownSample(f"sample {hash_id!r} has no branch {branch!r} (has {branches})")
    path = [leaf]
    while path[-1].parent_config is not None:
        parent = by_id.get(path[-1].parent_config["configurable"]["checkpoint_id"])
        if parent is None:
            break
        path.append(parent)
    return path[::-1]


def _state(snapshot: StateSnapshot) -> SampleState | None:
    values = snapshot.values or {}
    return SampleState.model_validate(values) if "hash_id" in values else None


def describe_step(
    number: int,
    before: StateSnapshot,
    after: StateSnapshot,
    store: Store,
    raw: bool = False,
    chunk_size: int = 10,
) -> dict:
    """Describe what the node between two snapshots did."""
    node = before.next[0] if before.next else "?"
    prev, cur = _state(before), _state(after)
    step: dict[str, Any] = {
        "step": number,
        "checkpoint_id": after.config["configurable"]["checkpoint_id"],
        "node": node,
    }
    if cur is None:
        return step
    ref = prev or cur
    step.update(round=ref.round, attempt=ref.attempt, operator=cur.operator or ref.operator)
    step["items_in"] = len(ref.current_items())
    calls: list[dict] = []
    if node == "select_operator":
        step["operator"] = cur.operator
    elif node == "evolve":
        calls = [store.get_call(i) for i in cur.calls]
        if raw and prev is not None:
            step["prompts"] = [
                render_evolve_prompt(prev.model_copy(update={"operator": cur.operator}), c)
                for c in chunked(prev.current_items(), chunk_size)
            ]
    elif node == "validate":
        # Its calls are the evolve step's (listed there, with how each parsed).
        step["items_out"] = len(cur.candidates)
        new = cur.round_drops[len(prev.round_drops) if prev else 0 :]
        step["dropped"] = [_drop(d.item, d.reason, d.stage) for d in new]
        if cur.problem:
            step["error"] = cur.problem
    elif node == "score":
        calls = _calls_like(store, cur.hash_id, cur.round, "score", cur.branch)
        step["verdicts"] = [v.model_dump(exclude={"item"}) if v else None for v in cur.verdicts]
        if cur.problem:
            step["error"] = cur.problem
        if raw and prev is not None:
            step["prompts"] = [
                render_score_prompt(given, [prev.candidates[p] for p in positions])
                for _, given, positions in judge_groups(prev, chunk_size)
            ]
    elif node == "eliminate" and cur.rounds:
        record = cur.rounds[-1]
        step.update(
            round=record.round,
            operator=record.operator,
            items_out=len(record.kept),
            kept_scores=[k.score for k in record.kept],
        )
        step["dropped"] = [
            _drop_row(r)
            for r in store.rows(
                "dropped", hash_id=cur.hash_id, branch=cur.branch, round=record.round, stage="judge"
            )
        ]
        if record.reason:
            step["error"] = record.reason
    step["calls"] = [_call(c, raw) for c in calls]
    return step


def _calls_like(store: Store, hash_id: str, round_: int, node: str, branch: str) -> list[dict]:
    return store.rows("calls", hash_id=hash_id, round=round_, node=node, branch=branch)


def _drop(item: dict, reason: str, stage: str) -> dict:
    return {"stage": stage, "reason": reason, "question": item.get("question", item.get("raw"))}


def _drop_row(row: dict) -> dict:
    return _drop(json.loads(row["item"]), row["reason"], row["stage"])


def _call(row: dict, raw: bool) -> dict:
    keys = ("id", "node", "attempt", "chunk", "model", "input_tokens", "output_tokens",
            "latency_ms", "finish_reason", "error", "parse")  # fmt: skip
    call = {k: row.get(k) for k in keys}
    if raw:
        call["response"] = row.get("response")
    return call


def trace_from_results(
    store: Store, hash_id: str, branch: str = "main", raw: bool = False
) -> list[dict]:
    """Describe a compacted sample round by round from the results database."""
    rounds = store.rows("rounds", hash_id=hash_id, branch=branch)
    if not rounds:
        raise UnknownSample(
            f"no checkpoint and no finished round of sample {hash_id!r} in this run"
        )
    steps = []
    for n, r in enumerate(rounds, 1):
        where = {"hash_id": hash_id, "branch": branch, "round": r["round"]}
        kept = [row["score"] for row in store.rows("items", **where)]
        drops = [_drop_row(d) for d in store.rows("dropped", **where)]
        calls = [_call(c, raw) for c in store.rows("calls", **where)]
        step = {
            "step": n,
            "node": "round",
            "round": r["round"],
            "attempt": r["attempts"],
            "operator": r["operator"],
            "items_out": len(kept),
            "candidates": r["candidates"],
            "kept_scores": kept,
            "dropped": drops,
            "calls": calls,
        }
        if r["reason"]:
            step["error"] = r["reason"]
        steps.append(step)
    return steps


async def trace_sample(
    graph_db: Path,
    results_db: Path,
    hash_id: str,
    branch: str = "main",
    raw: bool = False,
    chunk_size: int = 10,
) -> list[dict]:
    """Return the steps of a sample's branch, oldest first.

    A failed sample ends with a step of node "failed" whose ``error`` says why; a row that
    failed before it started (bad input, a missing image) has that step alone.
    """
    with Store(results_db) as store:
        sample = store.sample(hash_id)
        async with open_checkpointer(graph_db) as saver:
            try:
                path = await branch_path(compile_graph(saver), hash_id, branch)
            except UnknownSample:
                path = None
        if path is not None:
            steps = [
                describe_step(n, before, after, store, raw, chunk_size)
                for n, (before, after) in enumerate(step_pairs(path), 1)
            ]
        else:
            # A finished sample's checkpoints are compacted away unless the run kept
            # its history; its rounds are still in the results database.
            try:
                steps = trace_from_results(store, hash_id, branch, raw)
            except UnknownSample:
                if sample is None or sample["status"] != "failed":
                    raise
                steps = []
        if sample is not None and sample["status"] == "failed" and branch == "main":
            steps.append(
                {"step": len(steps) + 1, "node": "failed", "error": sample["reason"], "calls": []}
            )
        status = sample["status"] if sample is not None else None
        if branch == "main" and (
            status == "interrupted" or (status == "running" and not run_is_live(results_db))
        ):
            steps.append(interrupted_step(store, hash_id, len(steps) + 1, raw))
        return steps


def trace_in_run(
    results_db: Path, hash_id: str, branch: str = "main", raw: bool = False
) -> list[dict]:
    """Return the steps of a sample of the run at ``results_db`` (``trace_sample``, waited for)."""
    with Store(results_db) as store:
        chunk_size = (store.get_meta("settings") or {}).get("chunk_size", 10)
    graph_db = results_db.with_name("graph.sqlite")
    return asyncio.run(trace_sample(graph_db, results_db, hash_id, branch, raw, chunk_size))


def interrupted_step(store: Store, hash_id: str, number: int, raw: bool = False) -> dict:
    """Describe why an interrupted sample stopped: its last failed call, else the run's stop.

    A call the endpoint failed (after its retries) interrupts the sample; a 4xx other than
    408, 409 and 429 will fail again until the endpoint settings change.
    """
    failed = [c for c in store.rows("calls", hash_id=hash_id, branch="main") if c["error"]]
    step: dict[str, Any] = {"step": number, "node": "interrupted", "calls": []}
    if not failed:
        step["error"] = (
            "the run stopped before this sample finished (Ctrl-C, a budget, a stop after "
            "failing calls, or a killed process); running the run again resumes it"
        )
        return step
    last = failed[-1]
    status, message = describe_error(last["error"])
    code = status.split()[1] if status.startswith("HTTP ") else ""
    if code.startswith("4") and code not in ("408", "409", "429"):
        advice = "fix the endpoint (--base-url, --model, the key) and run the run again"
    else:
        advice = "running the run again resumes it"
    reason = f"{status}: {message}" if message else status
    step["error"] = (
        f"the endpoint failed call {last['id']} ({last['node']}, round {last['round']}): "
        f"{reason}; {advice}"
    )
    step["calls"] = [_call(last, raw)]
    return step


def step_pairs(path: Sequence[StateSnapshot]) -> list[tuple[StateSnapshot, StateSnapshot]]:
    """Pair each checkpoint with the one before it: one pair per node that ran.

    The first checkpoints are the input and the __start__ step, which change nothing a
    user cares about, so they are left out; pair N is trace step N. So is a replay's state
    update after which the same node is still to run (a fork before validate or
    eliminate): no node ran there, and the fork's steps keep the numbers of its source's.
    """
    return [
        (a, b)
        for a, b in pairwise(path)
        if a.next
        and a.next[0] != "__start__"
        and not ((b.metadata or {}).get("source") == "update" and b.next == a.next)
    ]


def format_steps(steps: Sequence[dict]) -> str:
    r"""Render steps as text, one line per step and indented details.

    Model text is shown with its control characters escaped (``\x1b``), so an answer
    cannot move the cursor, clear the screen or reorder what the terminal shows.
    """
    lines = []
    for s in steps:
        if s["node"] in ("failed", "interrupted"):
            lines.append(f"{s['step']:>3} {s['node']}: {_line(s['error'])}")
            continue
        head = f"{s['step']:>3} r{s.get('round', '?')} a{s.get('attempt', '?')} {s['node']:<15} "
        parts = []
        if s.get("operator"):
            parts.append(f"operator {_line(s['operator'])}")
        if "items_in" in s:
            parts.append(f"in {s['items_in']}")
        if "items_out" in s:
            parts.append(f"out {s['items_out']}")
        tokens = sum((c["input_tokens"] or 0) + (c["output_tokens"] or 0) for c in s["calls"])
        if s["calls"]:
            latency = max(c["latency_ms"] or 0 for c in s["calls"])
            parts.append(f"{len(s['calls'])} call(s), {tokens} tokens, {latency:.0f} ms")
        lines.append(head + "  ".join(parts))
        if s.get("verdicts") is not None:
            shown = ", ".join(
                "unscored" if v is None else f"{'yes' if v['improved'] else 'no'} {v['score']}"
                for v in s["verdicts"]
            )
            lines.append(f"      verdicts: {shown}")
        if "kept_scores" in s:
            lines.append(f"      kept scores: {s['kept_scores']}")
        for d in s.get("dropped", []):
            question = _line(str(d["question"]))[:80]
            lines.append(f"      dropped ({d['stage']}): {_line(d['reason'])} | {question}")
        if s.get("error"):
            lines.append(f"      problem: {_line(s['error'])}")
        for c in s["calls"]:
            if c.get("error") or (c.get("parse") and c["parse"] not in ("ok",)):
                lines.append(f"      call {c['id']}: {_line(c.get('error') or c.get('parse'))}")
        for p in s.get("prompts", []):
            lines.append("      --- prompt ---\n" + _indent(p))
        for c in s["calls"]:
            if "response" in c:
                lines.append(
                    f"      --- answer of call {c['id']} ---\n" + _indent(c["response"] or "")
                )
    return "\n".join(lines)


# Bidirectional controls reorder what a terminal shows; the rest of Cf is left alone
# (zero-width joiners belong to emoji).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(text: str, newlines: bool = True) -> str:
    r"""Escape control characters (ANSI escapes, bells, bidi overrides) as ``\xNN``/``\uNNNN``.

    Tabs are kept, and newlines too unless ``newlines`` is False.
    """
    out = []
    for ch in text:
        if ch == "\t" or (ch == "\n" and newlines):
            out.append(ch)
        elif ch in _BIDI or unicodedata.category(ch) == "Cc":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _line(value: object) -> str:
    return visible(str(value), newlines=False)


def _indent(text: str) -> str:
    return "\n".join("        " + line for line in visible(text).splitlines())
