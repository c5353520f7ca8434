"""Build one run from shard runs (``mmevol run --shard I/N``): ``mmevol merge``.

Each shard ran its share of one seed in its own run folder, often on another machine. The
merged run holds every sample of the shards given, with its results and, for a sample that
did not finish, its checkpoints, so that ``status``, ``stats``, ``export``, ``report``,
``plots`` and ``trace`` read it like any run.

What is checked before anything is written (each refusal is one line):

- every folder is a run (``results.db`` with the run's settings), undamaged, and no live
  process writes it (its run lock, ``run.runfolder``);
- every shard ran the same seed (its content fingerprint, so that paths may differ between
  machines) with the settings that change results (``graph.config.RESULT_SETTINGS``; the
  others say where, how fast and how the calls were sent), split the same way (the same N);
- no sample is held by two folders, nor by a folder and the target from another folder.

Merging again is incremental: a sample already merged from the same folder (its run id,
meta ``run_id``) is copied again only when it progressed there; new samples are added.
Calls get new ids in the merged run (every shard numbers its own from 1); the ids that a
sample's checkpoints hold (``SampleState.calls``) are rewritten to match, so that tracing an
interrupted sample shows its own calls. Checkpoints are written before the results, which
record the merge last: a merge that dies half-way is completed by the next one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmevol.graph.checkpoints import make_serde, open_checkpointer
from mmevol.graph.config import changed_results, check_run_name, parse_shard
from mmevol.run import runfolder
from mmevol.store.results import CheckpointRows, Store

THREADS_PER_WRITE = 200
"""Samples whose checkpoints are written in one transaction."""


class MergeProblem(ValueError):
    """A merge refused before anything was written; the message says why, in one line."""


@dataclass
class ShardRun:
    """One run folder given to merge, as its results database describes it."""

    path: Path
    meta: dict[str, Any]
    shard: tuple[int, int]
    samples: int

    @property
    def origin(self) -> str:
        """The folder's run id (its path, for a run recorded before run ids existed)."""
        return str(self.meta.get("run_id") or f"path:{self.path}")

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the shard ran with."""
        return self.meta.get("settings") or {}

    @property
    def label(self) -> str:
        """The shard as ``I/N``."""
        return f"{self.shard[0]}/{self.shard[1]}"


@dataclass
class ShardMerged:
    """What merging one folder did."""

    path: Path
    shard: str
    samples: int
    added: int = 0
    updated: int = 0

    @property
    def unchanged(self) -> int:
        """Samples already merged and not progressed since."""
        return self.samples - self.added - self.updated


@dataclass
class MergeReport:
    """What ``merge`` did, and which shards the merged run holds."""

    run_dir: Path
    count: int
    """N: how many shards the seed was split into."""
    merged: list[int] = field(default_factory=list)
    """The shards (1 to N) the merged run holds, this time or earlier."""
    folders: list[ShardMerged] = field(default_factory=list)

    @property
    def missing(self) -> list[int]:
        """The shards of N that were never merged."""
        return [i for i in range(1, self.count + 1) if i not in self.merged]

    def lines(self, run: str) -> list[str]:
        """Return a line per folder merged, then the shards run ``run`` holds and lacks."""
        lines = [
            f"shard {part.shard} ({part.path}): {part.samples} samples, {part.added} added,"
            f" {part.updated} updated, {part.unchanged} unchanged"
            for part in self.folders
        ]
        merged = ", ".join(map(str, self.merged)) or "none"
        missing = ", ".join(map(str, self.missing)) or "none"
        lines.append(
            f"run {run!r}: shards {merged} of {self.count} merged; missing: {missing}"
            f" -> {self.run_dir}"
        )
        return lines


def merge(
    name: str,
    checkpoints: Path | str,
    shard_dirs: Iterable[Path | str],
    on_notice: Callable[[str], None] | None = None,
) -> MergeReport:
    """Make (or bring up to date) run ``name`` under ``checkpoints`` from shard run folders.

    Raises:
        MergeProblem: the folders cannot be merged (not runs, other seeds or settings,
            samples held twice); nothing was written.
        RunBusy: a live process writes a shard folder or the target.
        RunFolderProblem: a folder's databases are damaged.
    """
    target = Path(checkpoints) / check_run_name(name)
    dirs = _distinct(shard_dirs)
    if not dirs:
        raise MergeProblem("give at least one shard run folder to merge")
    with Store(None) as planner:
        shards = [_inspect(planner, d, target) for d in dirs]
        first = shards[0]
        for other in shards[1:]:
            _check_alike(first, other)
        for number, shard in enumerate(shards):
            with planner.attached(shard.path / "results.db", "shard"):
                clash = planner.claim_samples("shard", number)
            if clash is not None:
                raise MergeProblem(
                    f"{shards[clash[1]].path} and {shard.path} both hold sample {clash[0]!r}:"
                    " they overlap (one shard run twice, or shards of different splits);"
                    " merge only one of them"
                )
        with runfolder.RunLock(target, on_notice):
            runfolder.check_databases(target)
            known = _check_target(planner, target, shards)
            return _write(target, name, shards, known)


def _distinct(dirs: Iterable[Path | str]) -> list[Path]:
    seen: list[Path] = []
    for d in dirs:
        path = Path(d).resolve()
        if path not in seen:
            seen.append(path)
    return seen


def _inspect(planner: Store, path: Path, target: Path) -> ShardRun:
    """Read what a folder holds, refusing one that is not a run or is being written."""
    if path == target.resolve():
        raise MergeProblem(f"{path} is the merged run itself, not a shard of it")
    results = path / "results.db"
    if not path.is_dir() or not results.is_file():
        raise MergeProblem(f"{path} is not a run folder (it has no results.db)")
    holder = runfolder.live_holder(path)
    if holder is not None:
        raise runfolder.RunBusy(
            f"shard folder {str(path)!r} is being written by {runfolder.describe(holder)};"
            " wait for it to finish or stop it, then merge again"
        )
    runfolder.check_databases(path)
    for database in (results, path / "graph.sqlite"):
        _check_readable(database)
    with planner.attached(results, "shard"):
        meta = planner.attached_meta("shard")
        samples = planner.attached_count("shard", "samples") if meta is not None else 0
    if meta is None or not isinstance(meta.get("settings"), dict):
        raise MergeProblem(f"{path} is not a run folder (its results.db records no run settings)")
    label = meta["settings"].get("shard")
    try:
        shard = parse_shard(label) if label else (1, 1)
    except ValueError:
        raise MergeProblem(f"{path} records an unreadable shard {label!r}") from None
    return ShardRun(path, meta, shard, samples)


def _check_readable(database: Path) -> None:
    """Refuse a shard database that SQLite cannot read through (truncated, overwritten).

    Reads every page (``PRAGMA quick_check``), without writing, so that a damaged shard is
    refused before anything is merged rather than half-way.
    """
    if not database.exists():
        return
    try:
        conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = [row[0] for row in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        found = [str(err)]
    if found != ["ok"]:
        raise MergeProblem(
            f"{database} is damaged ({found[0]}): restore it from a backup, or merge the"
            " other shards without this folder"
        )


def _check_alike(first: ShardRun, other: ShardRun | dict, where: str | None = None) -> None:
    """Refuse shards of another seed, split or result-changing settings than ``first``."""
    if isinstance(other, ShardRun):
        meta, where, count = other.meta, str(other.path), other.shard[1]
    else:
        meta, count = other, (other.get("merge") or {}).get("of")
    if count is not None and count != first.shard[1]:
        raise MergeProblem(
            f"{first.path} is shard {first.label} but {where} holds shards of {count}:"
            " merge the shards of one split (the same N)"
        )
    if not _same_seed(first.meta, meta):
        raise MergeProblem(
            f"{where} ran another seed ({meta.get('seed')}) than {first.path}"
            f" ({first.meta.get('seed')}): only shards of one seed merge"
        )
    # The shard is compared above (each shard has its own I, of the same N).
    differ = [
        f"{flag} {mine!r} vs {theirs!r}"
        for flag, mine, theirs in changed_results(
            first.settings, meta.get("settings") or {}, skip=("shard",)
        )
    ]
    if differ:
        raise MergeProblem(
            f"{where} ran with settings that change results other than {first.path}'s: "
            + ", ".join(differ)
        )


def _same_seed(a: dict, b: dict) -> bool:
    fa, fb = a.get("seed_fingerprint"), b.get("seed_fingerprint")
    if fa and fb:
        return fa == fb
    return a.get("seed") == b.get("seed")


def _check_target(planner: Store, target: Path, shards: list[ShardRun]) -> dict | None:
    """Refuse a target that is another kind of run, or holds the shards' samples from elsewhere.

    Returns the target's meta (None for a new target).
    """
    results = target / "results.db"
    if not results.exists():
        return None
    with planner.attached(results, "target"):
        meta = planner.attached_meta("target")
        if meta is None:
            return None
        if "merge" not in meta:
            if planner.attached_count("target", "samples") or planner.attached_count(
                "target", "calls"
            ):
                raise MergeProblem(
                    f"run {target.name!r} exists and was not made by mmevol merge; merge into"
                    " another --run"
                )
            return None
        _check_alike(shards[0], meta, f"run {target.name!r}")
        sources = meta["merge"].get("sources", {})
        for shard in shards:
            with planner.attached(shard.path / "results.db", "shard"):
                clash = planner.held_by_another("shard", "target", shard.origin)
            if clash is not None:
                other = sources.get(clash[1] or "", {}).get("dir", "a run of its own")
                raise MergeProblem(
                    f"{shard.path} holds sample {clash[0]!r}, which run {target.name!r}"
                    f" already holds from {other}: they overlap; merge only one of them"
                )
    return meta


def _write(target: Path, name: str, shards: list[ShardRun], known: dict | None) -> MergeReport:
    first = shards[0]
    asyncio.run(_create_checkpoints(target / "graph.sqlite"))
    report = MergeReport(target, first.shard[1])
    serde = make_serde()
    with Store(target / "results.db") as store, CheckpointRows(target / "graph.sqlite") as cps:
        meta = known or {}
        if not known:
            settings = {**first.settings, "run": name, "checkpoints": str(target.parent)}
            settings["shard"] = None
            store.set_meta("settings", settings)
            for key in ("seed", "seed_fingerprint"):
                store.set_meta(key, first.meta.get(key))
            meta = {"merge": {"of": first.shard[1], "sources": {}}}
        sources = dict(meta["merge"].get("sources", {}))
        for shard in shards:
            done = ShardMerged(shard.path, shard.label, shard.samples)
            with store.attached(shard.path / "results.db", "shard"):
                picked, done.updated = store.pick_progressed("shard")
                done.added = len(picked) - done.updated
                _copy_threads(store, shard, picked, cps, serde)
                sources[shard.origin] = {
                    "shard": shard.label,
                    "dir": str(shard.path),
                    "samples": shard.samples,
                }
                store.copy_picked("shard", shard.origin, shard.label)
                store.set_meta("merge", {"of": first.shard[1], "sources": sources})
            report.folders.append(done)
    report.merged = sorted({parse_shard(s["shard"])[0] for s in sources.values()})
    return report


async def _create_checkpoints(path: Path) -> None:
    async with open_checkpointer(path) as saver:
        saver.setup()


def _copy_threads(
    store: Store, shard: ShardRun, picked: list[str], cps: CheckpointRows, serde: Any
) -> None:
    """Copy the picked samples' checkpoints, their call ids rewritten to the merged run's.

    A picked sample without checkpoints in the shard (finished, its history compacted)
    loses any it had here.
    """
    with CheckpointRows(shard.path / "graph.sqlite") as source:
        present = source.threads()
        batch: dict[str, tuple[list[dict], list[dict]]] = {}
        for hash_id in picked:
            rows: tuple[list[dict], list[dict]] = ([], [])
            if hash_id in present:
                ids = store.picked_call_ids(hash_id)
                rows = _remapped(source.thread(hash_id), ids, serde, hash_id, shard.path)
            batch[hash_id] = rows
            if len(batch) >= THREADS_PER_WRITE:
                cps.replace_threads(batch)
                batch = {}
        if batch:
            cps.replace_threads(batch)


def _remapped(
    rows: tuple[list[dict], list[dict]], ids: dict[int, int], serde: Any, hash_id: str, path: Path
) -> tuple[list[dict], list[dict]]:
    def remap(calls: list[int]) -> list[int]:
        try:
            return [ids[i] for i in calls]
        except KeyError as err:
            raise MergeProblem(
                f"{path}: sample {hash_id!r} has a checkpoint naming call {err.args[0]}, which"
                " its results.db does not hold (damaged?)"
            ) from None

    checkpoints, writes = rows
    for row in checkpoints:
        value = serde.loads_typed((row["type"], row["checkpoint"]))
        calls = (value.get("channel_values") or {}).get("calls")
        if calls:
            value["channel_values"]["calls"] = remap(calls)
            row["type"], row["checkpoint"] = serde.dumps_typed(value)
    for row in writes:
        if row["channel"] == "calls" and row["value"] is not None:
            calls = serde.loads_typed((row["type"], row["value"]))
            if calls:
                row["type"], row["value"] = serde.dumps_typed(remap(calls))
    return checkpoints, writes
