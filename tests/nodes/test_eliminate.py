"""The judge's reason is kept for every verdict, kept items and judged-out ones alike."""

from __future__ import annotations

from mmevol.graph.store import Store


def test_every_verdict_keeps_the_judges_reason_and_score(demo_run):
    store = Store(demo_run.results_db)
    try:
        kept = list(store.db.query("select score, judge_reason from items"))
        judged_out = list(
            store.db.query(
                "select score, judge_reason, reason from dropped"
                " where stage = 'judge' and kind = 'judged not improved'"
            )
        )
    finally:
        store.close()
    assert kept and judged_out
    # The sim's judge gives a reason with every verdict.
    assert all(r["judge_reason"] for r in kept)
    for r in judged_out:
        assert r["judge_reason"] and r["score"] is not None
        assert r["reason"] == f"judged not improved (score {r['score']}): {r['judge_reason']}"
