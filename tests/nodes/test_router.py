"""Where a sample goes after validate, score and eliminate."""

from __future__ import annotations

from mmevol.graph.config import Settings
from mmevol.nodes.router import after_eliminate, after_score, after_validate


def settings(**values) -> Settings:
    return Settings(run="router", api_key="x", **values)


def test_after_validate_scores_retries_or_ends_the_round():
    s = settings(max_attempts=2)
    assert after_validate(True, 1, s) == "score"
    assert after_validate(True, 3, s) == "score"  # usable items are judged, whatever the count
    assert after_validate(False, 2, s) == "select_operator"  # attempt 2 of 2 still to come
    assert after_validate(False, 3, s) == "eliminate"  # attempts used up: the round ends empty


def test_after_score_passes_through_the_gates_only_with_gates():
    assert after_score(settings()) == "eliminate"
    assert after_score(settings(gates="blind")) == "gates"


def test_after_eliminate_starts_the_next_round_or_finishes():
    s = settings(rounds=3)
    assert after_eliminate(3, s) == "select_operator"
    assert after_eliminate(4, s) == "__end__"
