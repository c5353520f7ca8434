"""Read-only summaries of a run for status, stats, report, export and the gallery."""

from __future__ import annotations

import json
from collections.abc import Iterator

from mmevol.store.calls import TOKENS
from mmevol.store.database import StoreBase


class Queries(StoreBase):
    """What `mmevol status`, `stats`, `report` and `export` read: no method here writes.

    ``tests/store/test_queries.py`` runs every public method on a finished run and checks
    that the connection changed nothing and the file kept its bytes.
    """

    # -- status (mmevol status) ---------------------------------------------------------

    def status_counts(self) -> dict[str, int]:
        """Return how many samples have each status."""
        return {
            r["status"]: r["n"]
            for r in self.db.query("select status, count(*) as n from samples group by status")
        }

    def failed_before(self, since: float, limit: int | None = None) -> int:
        """Count failed samples last touched before ``since`` (rows below ``limit`` only)."""
        return self.db.execute(
            "select count(*) from samples where status = 'failed' and updated_at < ?"
            " and (? is null or idx < ?)",
            [since, limit, limit],
        ).fetchone()[0]

    def call_errors(self, limit: int = 50) -> list[dict]:
        """Per node, endpoint and error text: the calls that failed, commonest first."""
        return [
            dict(r)
            for r in self.db.query(
                "select node, endpoint, error, count(*) as calls from calls"
                " where error is not null group by node, endpoint, error"
                " order by calls desc, min(id) limit ?",
                [limit],
            )
        ]

    def endpoint_counts(self) -> list[dict]:
        """Per endpoint: calls made, calls that failed, calls answered (runs before m005: none)."""
        return [
            dict(r)
            for r in self.db.query(
                "select endpoint, count(*) as calls, sum(error is not null) as errors,"
                " sum(error is null) as answered, round(avg(latency_ms), 1) as mean_latency_ms"
                " from calls where endpoint is not null group by endpoint order by min(id)"
            )
        ]

    def batch_summary(self) -> dict:
        """Return the shards (for `mmevol status`) and how many samples are parked."""
        parked = self.count("samples", status="parked")
        waiting = self._one(
            "select count(distinct hash_id) as n from batch_requests"
            " where state in ('queued', 'submitted')",
            [],
        )
        return {
            "shards": self.rows("batch_shards") if "batch_shards" in self.db.table_names() else [],
            "parked": parked,
            "waiting": waiting["n"] if waiting else 0,
        }

    def summary(self, live: bool = True) -> dict:
        """Return counts for `mmevol status`, on the branch the export uses for each sample.

        Per round: ``candidates`` are the items that passed parsing and the checks and went
        to the judge, so ``candidates = kept + judged_out``; ``dropped_parse`` and
        ``dropped_check`` are the items dropped before judging (over every attempt). The
        "dropped" list counts the same drops by stage and reason (plus "seed" items left
        out before round 1). With ``live`` False (no process holds the run any more),
        samples still marked "running" are counted as "interrupted".
        """
        db = self.db
        by_status = self.status_counts()
        if not live and "running" in by_status:
            by_status["interrupted"] = by_status.get("interrupted", 0) + by_status.pop("running")
        adopted = (
            " join samples using (hash_id) where {t}.branch = coalesce(samples.branch, 'main')"
        )
        stages = {
            (r["round"], r["stage"]): r["n"]
            for r in db.query(
                "select round, stage, count(*) as n from dropped"
                + adopted.format(t="dropped")
                + " group by round, stage"
            )
        }
        rounds = []
        for r in db.query(
            "select round, count(*) as samples, sum(candidates) as candidates,"
            " sum(kept) as kept, sum(case when kept = 0 then 1 else 0 end) as empty,"
            " round(avg(nullif(kept, 0)), 2) as kept_per_sample"
            " from rounds" + adopted.format(t="rounds") + " group by round order by round"
        ):
            n = r["round"]
            rounds.append(
                {
                    "round": n,
                    "samples": r["samples"],
                    "candidates": r["candidates"],
                    "kept": r["kept"],
                    "judged_out": stages.get((n, "judge"), 0),
                    "dropped_parse": stages.get((n, "parse"), 0),
                    "dropped_check": stages.get((n, "check"), 0),
                    "empty": r["empty"],
                    "kept_per_sample": r["kept_per_sample"],
                    "mean_score": next(
                        db.query(
                            "select round(avg(score), 2) as s from items"
                            + adopted.format(t="items")
                            + " and round = ?",
                            [n],
                        )
                    )["s"],
                }
            )
        calls = [
            dict(r)
            for r in db.query(
                "select node, count(*) as calls, sum(error is not null) as errors,"
                " coalesce(sum(input_tokens), 0) as input_tokens,"
                " coalesce(sum(output_tokens), 0) as output_tokens,"
                " round(avg(latency_ms), 1) as mean_latency_ms"
                " from calls group by node order by node"
            )
        ]
        answers = [
            dict(r)
            for r in db.query(
                "select node, case when error is not null then 'http error'"
                " when parse is null then 'not parsed (run stopped)'"
                " else parse end as outcome,"
                " count(*) as calls from calls group by 1, 2 order by 1, 3 desc"
            )
        ]
        models = [
            dict(r)
            for r in db.query(
                f"select model, count(*) as calls, {TOKENS} from calls"
                " group by model, coalesce(batch, 0) order by model, 3"
            )
        ]
        drops = [
            dict(r)
            for r in db.query(
                "select stage, kind as reason, count(*) as items from dropped"
                + adopted.format(t="dropped")
                + " group by stage, kind order by items desc limit 20"
            )
        ]
        failures = [
            dict(r)
            for r in db.query(
                "select reason, count(*) as n from samples where status = 'failed'"
                " group by reason order by n desc limit 10"
            )
        ]
        return {
            "samples": by_status,
            "rounds": rounds,
            "calls": calls,
            "endpoints": self.endpoint_counts(),
            "answers": answers,
            "models": models,
            "dropped": drops,
            "failures": failures,
        }

    # -- statistics (mmevol stats, mmevol report) ---------------------------------------
    # Round figures cover finished samples on the branch the export uses; calls cover the
    # whole run (every call was paid for). Each query aggregates in SQLite, so memory does
    # not grow with the run.

    _DONE = (
        " join samples using (hash_id) where samples.status = 'done'"
        " and {t}.branch = coalesce(samples.branch, 'main')"
    )

    def round_operator_counts(self) -> list[dict]:
        """Per round and operator: samples, candidates judged, kept items, empty rounds."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, operator, count(*) as samples,"
                " coalesce(sum(candidates), 0) as candidates, coalesce(sum(kept), 0) as kept,"
                " sum(case when kept = 0 then 1 else 0 end) as empty"
                " from rounds" + self._DONE.format(t="rounds") + " group by round, operator"
                " order by round, operator"
            )
        ]

    def empty_round_reasons(self) -> list[dict]:
        """Per round and reason: how many rounds kept no item."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, coalesce(rounds.reason, 'unknown') as reason, count(*) as n"
                " from rounds" + self._DONE.format(t="rounds") + " and kept = 0"
                " group by round, rounds.reason order by round"
            )
        ]

    def kept_score_counts(self) -> list[dict]:
        """Per round and score: how many kept items have it."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, score, count(*) as n from items"
                + self._DONE.format(t="items")
                + " group by round, score order by round, score"
            )
        ]

    def judged_out_score_counts(self) -> list[dict]:
        """Per round and score: items judged out (runs before the judge_reason migration: none)."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, dropped.score as score, count(*) as n from dropped"
                + self._DONE.format(t="dropped")
                + " and stage = 'judge' and dropped.score is not null"
                " group by round, dropped.score order by round, dropped.score"
            )
        ]

    def drop_counts(self) -> list[dict]:
        """Per round, stage and kind: dropped items (round 0 is seed items left out)."""
        return [
            dict(r)
            for r in self.db.query(
                "select round, stage, kind, count(*) as n from dropped"
                + self._DONE.format(t="dropped")
                + " group by round, stage, kind order by round, stage, n desc"
            )
        ]

    def call_counts(self) -> list[dict]:
        """Per model, node and mode (batch 0 or 1): calls, errors and tokens of the whole run."""
        return [
            dict(r)
            for r in self.db.query(
                "select model, node, count(*) as calls, sum(error is not null) as errors,"
                f" {TOKENS} from calls group by model, node, coalesce(batch, 0)"
                " order by model, node, 5"
            )
        ]

    def failure_reasons(self, limit: int = 20) -> list[dict]:
        """The commonest reasons samples failed, with how many."""
        return [
            dict(r)
            for r in self.db.query(
                "select reason, count(*) as n from samples where status = 'failed'"
                " group by reason order by n desc limit ?",
                [limit],
            )
        ]

    # -- samples read back (mmevol export, report, gallery) -----------------------------

    def finished_samples(self) -> Iterator[dict]:
        """Yield finished samples in seed order: seed record, rounds and kept items.

        Each sample comes with ``rounds`` (round, operator, candidates, kept, reason) and
        ``items`` (round, position, score, item, judge_reason) on its adopted branch; one
        indexed query per sample keeps memory flat.
        """
        for row in self.db.query(
            "select hash_id, idx, branch, seed from samples where status = 'done' order by idx"
        ):
            yield self._sample_detail(dict(row))

    def sample_detail(self, hash_id: str) -> dict | None:
        """Return one sample with its rounds, kept items and dropped items (any status)."""
        row = self._one(
            "select hash_id, idx, branch, seed, status, reason from samples where hash_id = ?",
            [hash_id],
        )
        if row is None:
            return None
        detail = self._sample_detail(row)
        key = [hash_id, row["branch"] or "main"]
        detail["dropped"] = [
            dict(r)
            for r in self.db.query(
                "select round, stage, kind, reason, item, score, judge_reason from dropped"
                " where hash_id = ? and branch = ? order by round, id",
                key,
            )
        ]
        return detail

    def _sample_detail(self, row: dict) -> dict:
        key = [row["hash_id"], row["branch"] or "main"]
        row["rounds"] = [
            dict(r)
            for r in self.db.query(
                "select round, operator, attempts, candidates, kept, reason from rounds"
                " where hash_id = ? and branch = ? order by round",
                key,
            )
        ]
        row["items"] = [
            dict(r)
            for r in self.db.query(
                "select round, position, score, item, judge_reason from items"
                " where hash_id = ? and branch = ? order by round, position",
                key,
            )
        ]
        return row

    def gallery_keys(self) -> Iterator[dict]:
        """Yield every sample's key, status and per-round operator and kept count, in seed order.

        One row per sample: ``operators`` and ``kept`` are comma-joined in round order.
        """
        rounds = (
            "(select group_concat({c}, ',') from (select {c} from rounds"
            " where rounds.hash_id = samples.hash_id"
            " and rounds.branch = coalesce(samples.branch, 'main') order by round))"
        )
        for r in self.db.query(
            "select hash_id, idx, status, "
            + rounds.format(c="operator")
            + " as operators, "
            + rounds.format(c="kept")
            + " as kept from samples order by idx"
        ):
            yield dict(r)

    def finish_times(self) -> list[float]:
        """Return when each finished sample finished (``time.time()``), for benchmarks."""
        return [
            r[0]
            for r in self.db.conn.execute("select updated_at from samples where status = 'done'")
        ]

    def export_rows(self, rounds: int) -> Iterator[dict]:
        """Yield finished samples in seed order, in the authors' output format."""
        for row in self.db.query(
            "select hash_id, branch, seed from samples where status = 'done' order by idx"
        ):
            sample = json.loads(row["seed"])
            sample["hash_id"] = row["hash_id"]
            for rnd in range(1, rounds + 1):
                sample[f"conversations_v{rnd}"] = []
            # One indexed query per sample keeps memory flat on a 163k-sample export.
            for item in self.db.query(
                "select round, item from items where hash_id = ? and branch = ?"
                " order by round, position",
                [row["hash_id"], row["branch"] or "main"],
            ):
                sample.setdefault(f"conversations_v{item['round']}", []).append(
                    json.loads(item["item"])
                )
            sample.setdefault("topic_name", [])
            yield sample
