"""Fork a sample from a past checkpoint, run the rest with real calls, and compare branches.

The fork is LangGraph time travel: a state update on a past checkpoint of the sample's
thread starts a new branch there, and the original branch stays as it was. The fork
carries its own branch name, so its model calls and round results are recorded beside
the original's instead of replacing them; the export keeps using the original branch
until the user adopts the fork.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mmevol.graph.checkpoints import open_checkpointer
from mmevol.graph.config import Settings
from mmevol.graph.context import RunContext
from mmevol.graph.state import OPERATORS, SampleState
from mmevol.inspection.trace import UnknownSample, branch_path, step_pairs
from mmevol.nodes.select_operator import pick_operator
from mmevol.run import runfolder
from mmevol.run.engine import compile_graph, thread_config
from mmevol.runtime.llm import ModelClient, error_name, preflight
from mmevol.store.results import Store

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

    def headline(self, hash_id: str) -> str:
        """Return the line naming the fork made."""
        return f"forked {hash_id} from step {self.from_step} of {self.source} as {self.branch}"

    def details(self, hash_id: str, run: str) -> list[str]:
        """Return a line per change the fork made, then how to see it and adopt it."""
        return [
            *(f"  {line}" for line in self.changes),
            f"the export still uses the adopted branch; see the fork with: mmevol trace {hash_id} "
            f"--run {run} --branch {self.branch}; adopt it with: mmevol replay {hash_id} "
            f"--run {run} --adopt {self.branch}",
        ]


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


# The node each replay update is written as: one whose edge to the step's node is fixed
# (validate, score and eliminate choose their next node as they run, from the run's
# settings, which a state update does not have). A select_operator step is written as
# select_operator itself, with the operator drawn from the changed state; an eliminate
# step as the gates, whose edge leads to eliminate whether or not the run has gates.
WRITE_AS = {"select_operator": "select_operator", "evolve": "select_operator",
            "validate": "evolve", "eliminate": "gates"}  # fmt: skip


async def replay(
    settings: Settings,
    hash_id: str,
    from_step: int,
    sets: dict[str, Any] | None = None,
    operator: str | None = None,
    source: str = "main",
) -> ReplayResult:
    """Fork a sample before trace step ``from_step`` of ``source`` and run the fork to the end.

    Everything is checked before the fork is made; if the fork then fails (an endpoint
    error, Ctrl-C), its checkpoints and round results are removed again, so a failed
    replay leaves no half-made branch. Its model calls stay on record, as every call does,
    and its name is not given to a later fork.
    """
    if operator is not None and operator not in OPERATORS:
        raise ReplayProblem(f"--operator must be one of {', '.join(OPERATORS)}")
    lock = runfolder.RunLock(settings.run_dir).acquire()  # replay writes: one writer
    try:
        runfolder.check_databases(settings.run_dir)
        await preflight(settings)
        store = Store(settings.results_db)
    except BaseException:
        lock.release()
        raise
    try:
        async with (
            ModelClient(settings, store) as client,
            open_checkpointer(settings.graph_db) as saver,
        ):
            graph = compile_graph(saver)
            path = await _path(graph, hash_id, source)
            steps = step_pairs(path)
            if not 1 <= from_step <= len(steps):
                raise ReplayProblem(f"--from must be a step number from 1 to {len(steps)}")
            before = steps[from_step - 1][0]
            node = before.next[0]
            if operator is not None and node not in ("select_operator", "evolve"):
                raise ReplayProblem(
                    "--operator needs a step where select_operator or evolve runs "
                    f"(step {from_step} runs {node})"
                )
            if node not in WRITE_AS:
                raise ReplayProblem(
                    f"step {from_step} runs {node}, which cannot be replayed on its own: "
                    f"use --from {from_step - 1} (its validate step) instead"
                )
            try:
                state = SampleState.model_validate({**before.values, **(sets or {})})
            except ValidationError as err:
                problem = err.errors()[0]
                field = ".".join(str(p) for p in problem["loc"])
                raise ReplayProblem(f"--set {field}: {problem['msg']}") from err
            branch = _new_branch_name(store, hash_id, await _branches(graph, hash_id))
            updates = {**(sets or {}), "branch": branch}
            if node == "select_operator" or operator is not None:
                # Written as select_operator: its draw (or the asked operator) stands in for it.
                chosen = operator or pick_operator(
                    settings.seed, hash_id, state.round, state.attempt
                )
                updates.update(operator=chosen, calls=[], candidates=[], verdicts=[])
                as_node = "select_operator"
            else:
                as_node = WRITE_AS[node]
            try:
                final = await _run_fork(
                    graph, settings, store, client, before, updates, as_node, source
                )
            except (Exception, asyncio.CancelledError, KeyboardInterrupt) as err:
                await _remove_branch(graph, saver, store, hash_id, branch)
                if isinstance(err, (asyncio.CancelledError, KeyboardInterrupt)):
                    raise
                raise ReplayProblem(
                    f"the replay failed ({error_name(err)}: {err}); nothing of {branch} was kept"
                ) from err
            original = SampleState.model_validate(path[-1].values)
        fork = SampleState.model_validate(final)
        return ReplayResult(branch, source, from_step, compare(original, fork))
    finally:
        store.close()
        lock.release()


async def _path(graph: Any, hash_id: str, branch: str) -> list:
    try:
        return await branch_path(graph, hash_id, branch)
    except UnknownSample as err:
        raise ReplayProblem(
            f"{err}: a finished sample's checkpoints are compacted unless the run "
            "used --keep-history, which replay needs"
        ) from err


async def _run_fork(graph, settings, store, client, before, updates, as_node, source) -> dict:
    """Write the fork's first checkpoint and its copied rounds, then run it to the end."""
    hash_id = before.values["hash_id"]
    fork_round = SampleState.model_validate(before.values).round
    fork_config = await graph.aupdate_state(before.config, updates, as_node=as_node)
    store.copy_rounds(hash_id, source, updates["branch"], before_round=fork_round)
    ctx = RunContext(settings, store, client)
    config = {**thread_config(settings, hash_id), "configurable": fork_config["configurable"]}
    return await graph.ainvoke(None, config, context=ctx, durability="sync")


async def _branches(graph: Any, hash_id: str) -> set[str]:
    config = {"configurable": {"thread_id": hash_id}}
    return {(s.values or {}).get("branch", "main") async for s in graph.aget_state_history(config)}


async def _remove_branch(graph: Any, saver: Any, store: Store, hash_id: str, branch: str) -> None:
    """Delete a failed fork's checkpoints and round results (its calls stay on record)."""
    config = {"configurable": {"thread_id": hash_id}}
    ids = [
        s.config["configurable"]["checkpoint_id"]
        async for s in graph.aget_state_history(config)
        if (s.values or {}).get("branch") == branch
    ]
    saver.delete_checkpoints(hash_id, ids)
    store.delete_branch(hash_id, branch)


def adopt(results_db: Path, hash_id: str, branch: str) -> None:
    """Make the export use ``branch`` (main or a finished fork) for a sample."""
    with Store(results_db) as store:
        if store.sample(hash_id) is None:
            raise ReplayProblem(f"no sample {hash_id!r} in this run")
        rounds = (store.get_meta("settings") or {}).get("rounds", 3)
        finished = store.finished_branches(hash_id, rounds)
        if branch != "main" and branch not in finished:
            known = ", ".join(["main", *sorted(finished - {"main"})])
            raise ReplayProblem(
                f"sample {hash_id!r} has no finished branch {branch!r} (it has {known})"
            )
        store.adopt(hash_id, branch)


def _new_branch_name(store: Store, hash_id: str, in_checkpoints: set[str]) -> str:
    existing = store.branches(hash_id) | in_checkpoints
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


def replay_in_run(
    results_db: Path,
    hash_id: str,
    from_step: int,
    sets: list[str] | None = None,
    operator: str | None = None,
    source: str = "main",
    base_url: str | None = None,
) -> ReplayResult:
    """Replay a sample of the run at ``results_db`` (``replay``, waited for); sets: FIELD=VALUE.

    The run's settings are those it recorded, in its folder ``checkpoints/run``, with
    ``base_url`` instead of its own when given.
    """
    run_dir = results_db.parent
    settings = replay_settings(results_db, run_dir.parent, run_dir.name, base_url=base_url)
    return asyncio.run(
        replay(settings, hash_id, from_step, parse_sets(sets or []), operator, source)
    )


def replay_settings(results_db: Path, checkpoints: Path, run: str, **overrides: Any) -> Settings:
    """Rebuild a run's settings from its results database (the key comes from the env)."""
    with Store(results_db) as store:
        saved = store.get_meta("settings") or {}
    known = {k: v for k, v in saved.items() if k in Settings.__dataclass_fields__}
    known.update(run=run, checkpoints=checkpoints)
    known.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**known)
