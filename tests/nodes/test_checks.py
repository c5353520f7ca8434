import pytest

from mmevol.graph.items import QAItem
from mmevol.nodes.checks import boxes_in, check_item, screen

BOXES = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.95]]
SEED = [QAItem(question="What colour is the car?", answer="Red.")]


def item(question="Where is the dog?", answer="On the left.", steps=()):
    return QAItem(
        question=question,
        answer=answer,
        steps=[{"manipulation": m, "description": d} for m, d in steps],
    )


def test_given_boxes_pass_also_rounded_to_two_decimals():
    ok = item(answer="The dog is at [0.100, 0.200, 0.300, 0.400].")
    assert check_item(ok, BOXES, SEED) is None
    rounded = item(
        question="What is in [0.5, 0.5, 0.9, 0.95]?", answer="A cat at [0.10, 0.20, 0.30, 0.40]."
    )
    assert check_item(rounded, BOXES, SEED) is None


def test_invented_coordinates_are_dropped_wherever_they_appear():
    in_answer = item(answer="It is at [0.12, 0.2, 0.3, 0.4].")
    assert "not among the given boxes" in check_item(in_answer, BOXES, SEED)
    in_step = item(steps=[("referring_1([0.6, 0.6, 0.7, 0.7])->tgt_1", "Zoom in.")])
    assert "not among the given boxes" in check_item(in_step, BOXES, SEED)
    pixels = item(answer="At [120, 40, 300, 200].")
    assert check_item(pixels, BOXES, SEED) is not None


def test_no_boxes_means_no_coordinates_and_no_localisation():
    assert "no boxes were given" in check_item(item(answer="At [0.1, 0.2, 0.3, 0.4]."), [], SEED)
    asks = item(question="Give the bounding box of the dog.")
    assert "localisation" in check_item(asks, [], SEED)
    assert check_item(item(), [], SEED) is None


def test_leaks_refusals_and_copies():
    assert "prompt's own wording" in check_item(
        item(question="Based on the Given Q&A, what is it?"), [], SEED
    )
    assert "prompt's own wording" in check_item(item(answer="#Created Q&A&S: ..."), [], SEED)
    assert "refusal" in check_item(item(answer="I'm sorry, I can't help with that."), [], SEED)
    copy = item(question="what colour is the  car?", answer="red.")
    assert "identical" in check_item(copy, [], SEED)


def test_screen_drops_repeats_and_keeps_order():
    a, b = item(question="Q one?"), item(question="Q two?")
    kept, dropped = screen([a, b, item(question="q ONE?")], [], SEED)
    assert [k.question for k in kept] == ["Q one?", "Q two?"]
    assert dropped[0][1] == "repeats the question of another new item"
    _, dropped = screen([item(question="Q TWO?")], [], SEED, earlier=[b])
    assert dropped[0][1] == "repeats the question of another new item"


def test_boxes_in_reads_every_text():
    it = item(
        question="Compare [0.1, 0.2, 0.3, 0.4]",
        steps=[("grounding_1(dog)->bbx_1", "found [0.5, 0.5, 0.9, 0.95]")],
    )
    assert boxes_in(it) == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 0.95)]


def test_boxes_written_in_the_given_items_are_given():
    # Region-caption seeds (Visual Genome) carry their boxes in the Q&A, not in `det`.
    region = QAItem(
        question="Please provide a short description for this region: [0.65, 0.35, 0.82, 0.71].",
        answer="A woman in a long coat.",
    )
    kept = item(
        question="What is the person in [0.65, 0.35, 0.82, 0.71] wearing, and why?",
        answer="A long black and white coat at [0.650, 0.350, 0.820, 0.710], for the cold.",
    )
    assert check_item(kept, [], [region]) is None
    invented = item(question="What is in [0.1, 0.1, 0.2, 0.2]?", answer="A bench.")
    assert "not among the given boxes" in check_item(invented, [], [region])
    asks = item(question="Give the bounding box of the bench.", answer="It is at the bottom.")
    assert check_item(asks, [], [region]) is None
    assert "localisation" in check_item(asks, [], SEED)


def test_a_box_rounded_twice_still_matches():
    # det 0.2349 is shown as 0.235 in the prompt; the model rounds that to 0.24.
    boxes = [[0.2349, 0.1, 0.5, 0.6]]
    assert check_item(item(answer="At [0.24, 0.10, 0.50, 0.60]."), boxes, SEED) is None
    assert check_item(item(answer="At [0.235, 0.100, 0.500, 0.600]."), boxes, SEED) is None
    assert check_item(item(answer="At [0.25, 0.10, 0.50, 0.60]."), boxes, SEED) is not None


def test_numbers_without_leading_zero_are_boxes_too():
    assert boxes_in(item(answer="At [.1, .2, .3, .4].")) == [(0.1, 0.2, 0.3, 0.4)]
    assert check_item(item(answer="At [.12, .2, .3, .4]."), BOXES, SEED) is not None


@pytest.mark.parametrize(
    "question",
    [
        "If we place this trapezoid in a coordinate plane, where would point D be?",
        "Given the coordinates of points A and B, how long is AB?",
        "What are the coordinates of E if D has coordinates (x1, y1)?",
        "Is the plot drawn in polar coordinates?",
        "What is the x-coordinate of the vertex?",
    ],
)
def test_geometry_coordinates_are_not_localisation(question):
    assert check_item(item(question=question, answer="See the figure."), [], SEED) is None


@pytest.mark.parametrize(
    "question",
    ["What are the coordinates of the red car?", "Give the bbox of the dog.", "Where is bbx_1?"],
)
def test_localisation_without_boxes_is_dropped(question):
    assert "localisation" in check_item(item(question=question), [], SEED)
