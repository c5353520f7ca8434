"""The schema's history: migrations m001..m008 of results.db, applied in order on open."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

# sqlite-utils applies the functions registered here in the order they are defined and
# notes each one's name in ``_sqlite_migrations``: never rename, reorder or edit one (runs
# made by earlier versions rely on them); a schema change is a new function at the end.
migrations = Migrations("mmevol")


@migrations()
def m001_initial(db: Database) -> None:
    """Create the first schema."""
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["samples"].create(
        {
            "hash_id": str,
            "idx": int,
            "source_id": str,
            "status": str,
            "reason": str,
            "rounds_done": int,
            "branch": str,
            "seed": str,
            "updated_at": float,
        },
        pk="hash_id",
    )
    db["samples"].create_index(["idx"])
    db["samples"].create_index(["status"])
    db["rounds"].create(
        {
            "hash_id": str,
            "branch": str,
            "round": int,
            "operator": str,
            "attempts": int,
            "candidates": int,
            "kept": int,
            "dropped": int,
            "reason": str,
        },
        pk=("hash_id", "branch", "round"),
    )
    db["items"].create(
        {
            "hash_id": str,
            "branch": str,
            "round": int,
            "position": int,
            "score": int,
            "item": str,
        },
        pk=("hash_id", "branch", "round", "position"),
    )
    db["dropped"].create(
        {
            "id": int,
            "hash_id": str,
            "branch": str,
            "round": int,
            "stage": str,
            "kind": str,
            "reason": str,
            "item": str,
        },
        pk="id",
    )
    db["dropped"].create_index(["hash_id", "branch", "round"])
    db["calls"].create(
        {
            "id": int,
            "key": str,
            "hash_id": str,
            "branch": str,
            "round": int,
            "node": str,
            "attempt": int,
            "chunk": int,
            "model": str,
            "input_tokens": int,
            "output_tokens": int,
            "latency_ms": float,
            "finish_reason": str,
            "error": str,
            "parse": str,
            "response": str,
            "created_at": float,
        },
        pk="id",
    )
    db["calls"].create_index(["key"])
    db["calls"].create_index(["hash_id"])


@migrations()
def m002_rejected_row_keys(db: Database) -> None:
    """Give rows that 0.1.0 rejected the key rejected rows have now (``#row-N``).

    0.1.0 keyed a row it rejected before it started (no usable hash_id, or a duplicate)
    ``row-N``, a key a real hash_id can take; today's is ``#row-N`` (see
    ``run.seed.row_key``). Only failed rows whose key names their own index are renamed.
    """
    db.execute(
        "UPDATE samples SET hash_id = '#' || hash_id WHERE status = 'failed' "
        "AND hash_id GLOB 'row-[0-9]*' AND hash_id = 'row-' || idx "
        "AND NOT EXISTS (SELECT 1 FROM samples AS s WHERE s.hash_id = '#' || samples.hash_id)"
    )


@migrations()
def m003_judge_reason(db: Database) -> None:
    """Keep the judge's reason and score of every verdict (kept and judged-out items).

    A run made before this migration gets the columns with NULL: its kept items had no
    reason stored, and its judged-out items keep theirs inside ``dropped.reason`` only.
    """
    for table, column, kind in (
        ("items", "judge_reason", str),
        ("dropped", "score", int),
        ("dropped", "judge_reason", str),
    ):
        # A development build named this migration m002; its runs have the columns.
        if column not in db[table].columns_dict:
            db[table].add_column(column, kind)


@migrations()
def m004_cached_and_batch_prices(db: Database) -> None:
    """Record per call the prompt tokens the endpoint's prompt cache answered, and batch mode.

    ``calls.cached_tokens`` (part of ``input_tokens``, priced at the cached-input price) and
    ``calls.batch`` (1: answered by the Batch API at its price; 0 or NULL: online). Calls
    recorded before this migration read as online with no cached tokens.
    """
    for column in ("cached_tokens", "batch"):
        if column not in db["calls"].columns_dict:
            db["calls"].add_column(column, int)


@migrations()
def m005_call_endpoint(db: Database) -> None:
    """Record which endpoint each call went to (the base URL, without credentials or query).

    A run made before this migration gets the column with NULL: it had one endpoint.
    """
    if "endpoint" not in db["calls"].columns_dict:
        db["calls"].add_column("endpoint", str)


@migrations()
def m006_batches(db: Database) -> None:
    """Add the shards of batch mode and the requests each one carries (``--batch``)."""
    if "batch_shards" not in db.table_names():
        db["batch_shards"].create(
            {
                "id": int,
                "name": str,
                "mode": str,
                "state": str,
                "path": str,
                "file_id": str,
                "batch_id": str,
                "status": str,
                "requests": int,
                "bytes": int,
                "completed": int,
                "failed": int,
                "estimate": float,
                "cost": float,
                "fallback": int,
                "error": str,
                "created_at": float,
                "submitted_at": float,
                "finished_at": float,
            },
            pk="id",
        )
    if "batch_requests" not in db.table_names():
        db["batch_requests"].create(
            {
                "key": str,
                "shard": int,
                "hash_id": str,
                "branch": str,
                "round": int,
                "node": str,
                "attempt": int,
                "chunk": int,
                "model": str,
                "state": str,
                "status": int,
                "error": str,
                "failures": int,
                "estimate": float,
                "updated_at": float,
            },
            pk="key",
        )
        db["batch_requests"].create_index(["hash_id", "state"])
        db["batch_requests"].create_index(["shard", "state"])


@migrations()
def m007_shards(db: Database) -> None:
    """Add ``merged``: which shard run folder each sample of a merged run came from.

    ``origin`` is the shard folder's run id (meta ``run_id``); ``updated_at``, ``calls`` and
    ``last_call`` are the sample's progress in that folder when it was merged (its
    ``updated_at``, its call count and its highest call id there), so that merging again
    copies only the samples that progressed. Empty in a run made by ``mmevol run``.
    """
    if "merged" not in db.table_names():
        db["merged"].create(
            {
                "hash_id": str,
                "origin": str,
                "shard": str,
                "updated_at": float,
                "calls": int,
                "last_call": int,
            },
            pk="hash_id",
        )


@migrations()
def m008_gates(db: Database) -> None:
    """Add ``gates``: the quality gates' verdicts per kept item (``--gates blind,judge2``).

    One row per kept item of a gated round, keyed like ``items``. ``blind_verdict`` is
    "answerable", "needs_image" or null (the gate could not decide); ``agreement`` is the
    second judge's agreement with the first (0 to 1) or null. Empty without ``--gates``.
    """
    if "gates" not in db.table_names():
        db["gates"].create(
            {
                "hash_id": str,
                "branch": str,
                "round": int,
                "position": int,
                "blind_answer": str,
                "blind_verdict": str,
                "blind_reason": str,
                "judge2_improved": int,
                "judge2_score": int,
                "judge2_reason": str,
                "agreement": float,
            },
            pk=("hash_id", "branch", "round", "position"),
        )
