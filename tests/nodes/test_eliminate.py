"""The judge's reason is kept for every verdict, kept items and judged-out ones alike."""

from __future__ import annotations

from mmevol.store.results import Store


def test_every_verdict_keeps_the_judges_reason_and_score(demo_run):
    with Store(demo_run.results_db) as store:
        kept = store.rows("items")
        judged_out = store.rows("dropped", stage="judge", kind="judged not improved")
    assert kept and judged_out
    # The sim's judge gives a reason with every verdict.
    assert all(r["judge_reason"] for r in kept)
    for r in judged_out:
        assert r["judge_reason"] and r["score"] is not None
        assert r["reason"] == f"judged not improved (score {r['score']}): {r['judge_reason']}"
