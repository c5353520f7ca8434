"""Fork a sample from a past checkpoint, run the rest with real calls, and compare branches.

The fork is LangGraph time travel: a state update on a past checkpoint of the sample's
thread starts a new branch there, and the original branch stays as it was. The fork
carries its own branch name, so its model calls and round results are recorded beside
the original's instead of replacing them; the export keeps using the original branch
until the user adopts the fork.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmevol.graph.checkpoints import open_checkpointer
from mmevol.graph.config import Settings
from mmevol.graph.context import RunContext
from mmevol.graph.runner import compile_graph, thread_config
from mmevol.graph.runtime.llm import ModelClient, preflight
from mmevol.graph.state import OPERATORS, SampleState
from mmevol.graph.store import Store
from mmevol.graph.trace import UnknownSample, branch_path, step_pairs

# Fields a user may not set: identity, the branch itself, and the append-only history.
FIXED_FIELDS = {"hash_id", "branch", "rounds"}


class ReplayProblem(ValueError):
    """Raised when a replay request cannot be carried out; the message says why."""


@dataclass
class ReplayResult:
    """What a replay produced."""

    branch: str
    source: str
    from_step: int
    changes: list[str]
    adopted: bool


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """Turn ``FIELD=VALUE`` strings into state updates (VALUE read as JSON when it is JSON)."""
    updates: dict[str, Any] = {}
    for pair in pairs:
        field, sep, text = pair.partition("=")
        field = field.strip()
        if not sep or not field:
            raise ReplayProblem(f"--set takes FIELD=VALUE, got {pair!r}")
        if field not in SampleState.model_fields:
            raise ReplayProblem(f"--set: the state has no field {field!r}")
        if field in FIXED_FIELDS:
            raise ReplayProblem(f"--set: {field!r} cannot be changed by a replay")
        try:
            updates[field] = json.loads(text)
        except json.JSONDecodeError:
            updates[field] = text
    return updates


async def replay(
    settings: Settings,
    hash_id: str,
    from_step: int,
    sets: dict[str, Any] | None = None,
    operator: str | None = None,
    source: str = "main",
    adopt: bool = False,
) -> ReplayResult:
    """Fork a sample before trace step ``from_step`` of ``source`` and run the fork to the end."""
    if operator is not None and operator not in OPERATORS:
        raise ReplayProblem(f"--operator must be one of {', '.join(OPERATORS)}")
    await preflight(settings)
    store = Store(settings.results_db)
    client = ModelClient(settings, store)
    try:
        async with open_checkpointer(settings.graph_db) as saver:
            graph = compile_graph(saver)
            try:
                path = await branch_path(graph, hash_id, source)
            except UnknownSample as err:
                raise ReplayProblem(
                    f"{err}: a finished sample's checkpoints are compacted unless the run "
                    "used --keep-history, which replay needs"
                ) from err
            steps = step_pairs(path)
            if not 1 <= from_step <= len(steps):
                raise ReplayProblem(f"--from must be a step number from 1 to {len(steps)}")
            before = steps[from_step - 1][0]
            branch = _new_branch_name(store, hash_id)
            updates = {**(sets or {}), "branch": branch}
            as_node = None
            if operator is not None:
                if before.next[0] not in ("select_operator", "evolve"):
                    raise ReplayProblem(
                        "--operator needs a step where select_operator or evolve runs "
                        f"(step {from_step} runs {before.next[0]})"
                    )
                # Writing as select_operator stands in for its draw: evolve runs next.
                updates.update(operator=operator, calls=[], candidates=[], verdicts=[])
                as_node = "select_operator"
            fork_round = SampleState.model_validate(before.values).round
            store.copy_rounds(hash_id, source, branch, before_round=fork_round)
            fork_config = await graph.aupdate_state(before.config, updates, as_node=as_node)
            ctx = RunContext(settings, store, client)
            config = {
                **thread_config(settings, hash_id),
                "configurable": fork_config["configurable"],
            }
            final = await graph.ainvoke(None, config, context=ctx, durability="sync")
            original = SampleState.model_validate(path[-1].values)
        fork = SampleState.model_validate(final)
        if adopt:
            store.adopt(hash_id, branch)
        return ReplayResult(branch, source, from_step, compare(original, fork), adopt)
    finally:
        await client.aclose()
        store.close()


def _new_branch_name(store: Store, hash_id: str) -> str:
    existing = {
        r["branch"]
        for r in store.db.query(
            "select distinct branch from calls where hash_id = ?"
            " union select distinct branch from rounds where hash_id = ?",
            [hash_id, hash_id],
        )
    }
    n = 1
    while f"fork{n}" in existing:
        n += 1
    return f"fork{n}"


def compare(original: SampleState, fork: SampleState) -> list[str]:
    """Describe, round by round, how the fork differs from the original branch."""
    lines = []
    by_round = {r.round: r for r in original.rounds}
    for new in fork.rounds:
        old = by_round.get(new.round)
        if old is None:
            lines.append(f"round {new.round}: only in the fork ({len(new.kept)} kept)")
            continue
        if old.model_dump() == new.model_dump():
            lines.append(f"round {new.round}: unchanged")
            continue
        parts = []
        if old.operator != new.operator:
            parts.append(f"operator {old.operator} -> {new.operator}")
        parts.append(f"kept {len(old.kept)} {_scores(old)} -> {len(new.kept)} {_scores(new)}")
        old_q = {k.question for k in old.kept}
        new_q = {k.question for k in new.kept}
        parts.append(f"{len(new_q - old_q)} new items, {len(old_q - new_q)} gone")
        if old.reason != new.reason:
            parts.append(f"empty-round reason {old.reason!r} -> {new.reason!r}")
        lines.append(f"round {new.round}: " + "; ".join(parts))
    return lines


def _scores(record: Any) -> str:
    return "(scores " + ", ".join(str(k.score) for k in record.kept) + ")" if record.kept else ""


def replay_settings(results_db: Path, checkpoints: Path, run: str, **overrides: Any) -> Settings:
    """Rebuild a run's settings from its results database (the key comes from the env)."""
    store = Store(results_db)
    saved = store.get_meta("settings") or {}
    store.close()
    known = {k: v for k, v in saved.items() if k in Settings.__dataclass_fields__}
    known.update(run=run, checkpoints=checkpoints)
    known.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**known)
