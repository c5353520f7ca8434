from collections import Counter

from mmevol.nodes.select_operator import pick_operator


def test_same_inputs_same_operator():
    assert all(
        pick_operator(7, f"{i}_x.jpg", 2, 1) == pick_operator(7, f"{i}_x.jpg", 2, 1)
        for i in range(50)
    )


def draws(seed=0, round_=1, attempt=1):
    return [pick_operator(seed, f"{i}_x.jpg", round_, attempt) for i in range(200)]


def test_seed_round_and_attempt_change_the_draw():
    base = draws()
    assert base != draws(seed=1)
    assert base != draws(round_=2)
    assert base != draws(attempt=2)


def test_weights_follow_the_method():
    counts = Counter(pick_operator(0, f"{i}_img.jpg", 1, 1) for i in range(4000))
    assert abs(counts["perceptual"] / 4000 - 0.5) < 0.03
    assert abs(counts["reasoning"] / 4000 - 0.25) < 0.03
    assert abs(counts["interactive"] / 4000 - 0.25) < 0.03
