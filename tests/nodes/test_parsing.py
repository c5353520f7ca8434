import pytest

from nodes.parsing import QAItem, UnusableAnswer, Verdict, extract_json, parse_items, parse_verdicts

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
        '```json\n[{"item": 1, "improved": "yes", "score": 6}, {"improved": "maybe", "score": 2}]\n```'
    )
    assert verdicts[0].item == 1
    assert verdicts[1] is None


def test_qa_item_requires_question_and_answer():
    with pytest.raises(ValueError):
        QAItem.model_validate({"question": "Q?"})
