from collections import Counter

from nodes.select_operator import pick_operator


def test_same_inputs_same_operator():
    assert all(
        pick_operator(7, f"{i}_x.jpg", 2, 1) == pick_operator(7, f"{i}_x.jpg", 2, 1)
        for i in range(50)
    )


def test_seed_round_and_attempt_change_the_draw():
    draws = lambda **kw: [
        pick_operator(kw.get("seed", 0), f"{i}_x.jpg", kw.get("r", 1), kw.get("a", 1))
        for i in range(200)
    ]  # noqa: E731
    base = draws()
    assert base != draws(seed=1)
    assert base != draws(r=2)
    assert base != draws(a=2)


def test_weights_follow_the_method():
    counts = Counter(pick_operator(0, f"{i}_img.jpg", 1, 1) for i in range(4000))
    assert abs(counts["perceptual"] / 4000 - 0.5) < 0.03
    assert abs(counts["reasoning"] / 4000 - 0.25) < 0.03
    assert abs(counts["interactive"] / 4000 - 0.25) < 0.03
