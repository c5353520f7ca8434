from nodes.checks import boxes_in, check_item, screen
from nodes.parsing import QAItem

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
