"""The two refusal patterns: a whole answer's is wider than an item's, on purpose."""

from __future__ import annotations

import pytest

from mmevol.graph.items import QAItem
from mmevol.nodes.checks import check_item
from mmevol.nodes.parsing import UnusableAnswer, parse_items
from mmevol.nodes.refusals import ANSWER_REFUSAL, ITEM_REFUSAL


@pytest.mark.parametrize(
    "text",
    ["I'm sorry, I can't help with that.", "I cannot determine that.", "As an AI, I won't."],
)
def test_declining_is_a_refusal_both_ways(text):
    assert ANSWER_REFUSAL.match(text) and ITEM_REFUSAL.match(text)
    with pytest.raises(UnusableAnswer, match="refusal"):
        parse_items(text)
    assert check_item(QAItem(question="Is there a dog?", answer=text), [], []) == "is a refusal"


@pytest.mark.parametrize(
    "text", ["I can't see a label on the box.", "I cannot find a dog in the picture."]
)
def test_saying_what_is_not_there_is_a_refusal_only_as_a_whole_answer(text):
    # As a whole answer with no JSON, it declines the task; as an item's answer it is a
    # fine answer to an existence question.
    with pytest.raises(UnusableAnswer, match="refusal"):
        parse_items(text)
    assert check_item(QAItem(question="Is there a dog?", answer=text), [], []) is None


def test_an_apology_with_a_comma_is_a_refusal_only_as_a_whole_answer():
    assert ANSWER_REFUSAL.match("Sorry, no.") and not ITEM_REFUSAL.match("Sorry, no.")
