import pytest

from mmevol.graph.items import QAItem, Verdict
from mmevol.nodes.parsing import UnusableAnswer, extract_json, parse_items, parse_verdicts

ITEM = (
    '{"image_position": "single", "objects": ["cat"], "skills": ["OCR"], "format": "Norm",'
    ' "question": "What is written on the mug?", "steps": [{"manipulation": "OCR_1(mug)->txt_1",'
    ' "description": "Read the mug."}], "answer": "It says HELLO."}'
)


def test_fenced_list_with_prose_around():
    text = f"Here you go:\n```json\n[{ITEM}]\n```\nHope this helps!"
    parsed = parse_items(text)
    assert [i.question for i in parsed.items] == ["What is written on the mug?"]
    assert parsed.items[0].steps[0].manipulation == "OCR_1(mug)->txt_1"
    assert parsed.repaired is False


def test_single_object_becomes_a_list():
    parsed = parse_items(f"```json\n{ITEM}\n```")
    assert len(parsed.items) == 1


def test_raw_newline_inside_string_and_trailing_comma_are_repaired():
    text = (
        '```json\n[{"question": "Which colour is the car?\nA. red\nB. blue", "answer": "A",},]\n```'
    )
    parsed = parse_items(text)
    assert parsed.items[0].question.startswith("Which colour")
    assert "B. blue" in parsed.items[0].question
    assert parsed.repaired is True


def test_comments_and_curly_quotes():
    text = '[\n  // first item\n  {"question": "How many dogs?", "answer": "Two dogs", }\n]'
    assert parse_items(text).items[0].answer == "Two dogs"
    curly = (
        "[{\u201cquestion\u201d: \u201cWhat is it?\u201d, \u201canswer\u201d: \u201cA cat.\u201d}]"
    )
    assert parse_items(curly).items[0].answer == "A cat."


def test_loose_shapes_are_normalised():
    text = (
        '[{"Question": "Q?", "answers": ["first", "second"], "objects": "cat, dog",'
        ' "skills": "OCR", "steps": ["look", "think"]}]'
    )
    item = parse_items(text).items[0]
    assert item.answer == "first\nsecond"
    assert item.objects == ["cat", "dog"]
    assert item.skills == ["OCR"]
    assert [s.description for s in item.steps] == ["look", "think"]
    assert item.steps[0].manipulation == "None"


def test_answer_given_as_object():
    item = parse_items(
        '[{"question": "Q?", "answer": {"choice": "B", "why": "it is blue"}}]'
    ).items[0]
    assert item.answer == "choice: B\nwhy: it is blue"


def test_list_wrapped_in_an_object():
    assert len(parse_items(f'{{"items": [{ITEM}, {ITEM}]}}').items) == 2
    assert len(parse_items(f'{{"rewritten": [{ITEM}]}}').items) == 1


def test_invalid_entries_are_rejected_with_reasons_but_good_ones_kept():
    parsed = parse_items(f'[{ITEM}, {{"question": "", "answer": "x"}}, {{"foo": 1}}]')
    assert len(parsed.items) == 1
    assert len(parsed.rejected) == 2
    assert "entry 2: question" in parsed.rejected[0][1]
    assert "entry 3" in parsed.rejected[1][1]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "HTML"),
        ("The image shows a cat on a mat.", "no JSON"),
        ("[]", "empty list"),
    ],
)
def test_unusable_answers_say_why(text, reason):
    with pytest.raises(UnusableAnswer, match=reason):
        parse_items(text)


def test_extract_json_prefers_fence_content():
    value, repaired = extract_json('Note [1] below\n```json\n[{"a": 1}]\n```')
    assert value == [{"a": 1}] and repaired is False


@pytest.mark.parametrize(
    ("raw", "improved", "score"),
    [
        ({"improved": "Yes", "score": 7}, True, 7),
        ({"improved": "YES", "score": "7"}, True, 7),
        ({"improved": True, "score": "7/10"}, True, 7),
        ({"improved": "no", "score": 0}, False, 0),
        ({"improved": "No.", "score": 12}, False, 10),
        ({"Improved": "yes", "Score": -3}, True, 0),
        ({"improved": "yes", "score": 6.6}, True, 7),
    ],
)
def test_verdict_forms(raw, improved, score):
    verdict = Verdict.model_validate(raw)
    assert verdict.improved is improved
    assert verdict.score == score


def test_verdict_item_numbers_and_bad_entries():
    verdicts = parse_verdicts(
        '```json\n[{"item": 1, "improved": "yes", "score": 6},'
        ' {"improved": "maybe", "score": 2}]\n```'
    )
    assert verdicts[0].item == 1
    assert verdicts[1] is None


def test_qa_item_requires_question_and_answer():
    with pytest.raises(ValueError):
        QAItem.model_validate({"question": "Q?"})


def test_every_item_survives_when_only_one_has_a_raw_newline():
    broken = '{"question": "Which colour?\nA. red\nB. blue", "answer": "A"}'
    parsed = parse_items(f"```json\n[{broken}, {ITEM}, {ITEM}]\n```")
    assert len(parsed.items) == 3 and parsed.repaired is True
    assert parsed.items[0].question == "Which colour?\nA. red\nB. blue"


@pytest.mark.parametrize(
    "text",
    [
        f"[{ITEM}, {ITEM}]\nNote: items [1] and [2] use different skills.",
        f"Here are the items [2 in total]:\n[{ITEM}, {ITEM}]",
        f"Answer {{as requested}}:\n[{ITEM}, {ITEM}]",
        f"Two items (see [the note below:\n[{ITEM}, {ITEM}]",
        f"<think>Maybe [a] or {{b}}?\n```json\n[1]\n```</think>\n```json\n[{ITEM}, {ITEM}]\n```",
        f"```python\nprint([1])\n```\nAnd the items:\n```json\n[{ITEM}, {ITEM}]\n```",
        f"```json\n[{ITEM}, {ITEM},]\n```\nThe list above [two items] is complete.",
    ],
)
def test_brackets_in_prose_fences_and_reasoning_do_not_hide_the_list(text):
    parsed = parse_items(text)
    assert [i.answer for i in parsed.items] == ["It says HELLO."] * 2
    assert parsed.rejected == []


def test_a_fence_written_inside_a_json_string_does_not_cut_the_answer():
    code = '{"question": "What does ```print(1)``` show?", "answer": "It prints 1."}'
    parsed = parse_items(f"```json\n[{code}, {ITEM}]\n```")
    assert [i.answer for i in parsed.items] == ["It prints 1.", "It says HELLO."]


@pytest.mark.parametrize(
    "text", ["I'm sorry, I can't help with that [content policy].", "I'm sorry [1]."]
)
def test_refusal_with_brackets_is_still_a_refusal(text):
    with pytest.raises(UnusableAnswer, match="refusal"):
        parse_items(text)


def test_lone_item_whose_question_key_is_an_alias():
    text = '{"instruction": "What is on the shelf?", "answer": "Books", "objects": ["book"]}'
    assert [i.question for i in parse_items(text).items] == ["What is on the shelf?"]
    wrapped = f'{{"response": [{ITEM}, {ITEM}]}}'
    assert len(parse_items(wrapped).items) == 2


def test_boolean_answer_and_steps_as_pairs():
    text = (
        '[{"question": "Is the door open?", "answer": true,'
        ' "steps": [["grounding_1(door)->bbx_1", "Find the door."], 3, null]}]'
    )
    item = parse_items(text).items[0]
    assert item.answer == "Yes"
    assert [(s.manipulation, s.description) for s in item.steps] == [
        ("grounding_1(door)->bbx_1", "Find the door."),
        ("None", "3"),
    ]


@pytest.mark.parametrize(
    ("raw", "improved", "score"),
    [
        ({"improved": "Yes, it adds detail", "score": "Score: 7"}, True, 7),
        ({"improved": "no improvement", "score": "8 out of 10"}, False, 8),
        ({"improved": "yes", "score": "4/5"}, True, 8),
        ({"improved": "yes", "score": 6.5}, True, 7),
        ({"improved": "No", "reason": "answerable without the image"}, False, 0),
    ],
)
def test_looser_verdict_forms(raw, improved, score):
    verdict = Verdict.model_validate(raw)
    assert (verdict.improved, verdict.score) == (improved, score)


@pytest.mark.parametrize(
    "raw",
    [{"improved": "yes"}, {"improved": "maybe", "score": 5}, {"improved": "yes", "score": "?"}],
)
def test_unreadable_verdicts_are_rejected(raw):
    with pytest.raises(ValueError):
        Verdict.model_validate(raw)


def test_verdicts_keyed_by_number_and_numbered_from_zero():
    keyed = parse_verdicts(
        '{"item_2": {"improved": "no", "score": 3}, "item_1": {"improved": "yes", "score": 6}}'
    )
    assert [(v.item, v.improved) for v in keyed] == [(2, False), (1, True)]
    zero = parse_verdicts(
        '[{"item": 1, "improved": "no", "score": 3}, {"item": 0, "improved": "yes", "score": 6}]'
    )
    assert [(v.item, v.score) for v in zero] == [(2, 3), (1, 6)]
    one = parse_verdicts(
        '[{"item": 1, "improved": "no", "score": 3}, {"item": 2, "improved": "yes", "score": 6}]'
    )
    assert [v.item for v in one] == [1, 2]
