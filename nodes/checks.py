"""Check evolved items against the method's constraints; each failure names its reason."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mmevol.graph.items import QAItem
from mmevol.nodes.refusals import ITEM_REFUSAL

_NUMBER = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
_BOX = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")
# The prompt shows boxes with 3 decimals (at most 0.0005 off the seed's value) and a model
# may round those again to 2 decimals (0.005 more): a copied box is within 0.0055.
_TOLERANCE = 0.0055 + 1e-9

_LEAKS = re.compile(
    r"given\s+q\s*&\s*a|rewritten\s+q\s*&\s*a|q\s*&\s*a\s*&\s*s|#\s*created|"
    r"\bgiven (?:item|question|sample)s?\b|\brewritten (?:item|question|sample)s?\b",
    re.IGNORECASE,
)
_LOCALISE = re.compile(
    r"\b(?:bounding[ _-]?box(?:es)?|bbox(?:es)?|bbx_?\d*)\b"
    # "coordinates" of an image region, not of geometry: "coordinate plane", "polar
    # coordinates", "the coordinates of point E" are about the figure, not localisation.
    r"|(?<!polar )(?<!cartesian )(?<![xyz]-)\bcoordinates?\b"
    r"(?!\s+(?:plane|system|axis|axes|grid|geometry|pairs?)\b)"
    r"(?!\s+of\s+(?:the\s+)?(?:points?\b|vertex\b|vertices\b|(?-i:[A-Z])\b))"
    r"(?!\s*\(\s*[\w.-]+\s*,\s*[\w.-]+\s*\))",
    re.IGNORECASE,
)


def _texts(item: QAItem) -> list[str]:
    texts = [item.question, item.answer]
    for step in item.steps:
        texts += [step.manipulation, step.description]
    return texts


def boxes_in(item: QAItem) -> list[tuple[float, ...]]:
    """Return every 4-number box written anywhere in an item."""
    found = []
    for text in _texts(item):
        for match in _BOX.finditer(text):
            found.append(tuple(float(g) for g in match.groups()))
    return found


def _is_given(box: tuple[float, ...], given: Sequence[Sequence[float]]) -> bool:
    return any(
        len(g) == 4 and all(abs(a - b) <= _TOLERANCE for a, b in zip(box, g, strict=True))
        for g in given
    )


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def check_item(
    item: QAItem, given_boxes: Sequence[Sequence[float]], given_items: Sequence[QAItem]
) -> str | None:
    """Return why an item breaks the method's constraints, or None when it is fine.

    The given boxes are the sample's boxes and every box written in the given items: some
    seeds (region captions such as Visual Genome's) carry their boxes only in the Q&A, and
    an item that keeps such a box has not invented it.
    """
    given_boxes = [*given_boxes, *(b for g in given_items for b in boxes_in(g))]
    for text in (item.question, item.answer):
        if _LEAKS.search(text):
            return "mentions the prompt's own wording"
    if ITEM_REFUSAL.match(item.answer) or ITEM_REFUSAL.match(item.question):
        return "is a refusal"
    boxes = boxes_in(item)
    if given_boxes:
        invented = [b for b in boxes if not _is_given(b, given_boxes)]
        if invented:
            shown = ", ".join(f"[{', '.join(f'{v:g}' for v in b)}]" for b in invented[:2])
            return f"has coordinates that are not among the given boxes: {shown}"
    else:
        if boxes:
            return "has coordinates although no boxes were given"
        if _LOCALISE.search(item.question):
            return "asks for localisation by coordinates although no boxes were given"
    key = (_normal(item.question), _normal(item.answer))
    if any((_normal(g.question), _normal(g.answer)) == key for g in given_items):
        return "is identical to an item it was made from"
    return None


def screen(
    items: Sequence[QAItem],
    given_boxes: Sequence[Sequence[float]],
    given_items: Sequence[QAItem],
    earlier: Sequence[QAItem] = (),
) -> tuple[list[QAItem], list[tuple[QAItem, str]]]:
    """Split items into those that pass and (item, reason) for those that do not.

    ``earlier`` holds items already accepted in this round (from other chunks); an item
    asking the same question as one of them, or as an item before it, is a repeat.
    """
    kept: list[QAItem] = []
    dropped: list[tuple[QAItem, str]] = []
    seen = {_normal(i.question) for i in earlier}
    for item in items:
        reason = check_item(item, given_boxes, given_items)
        if reason is None and _normal(item.question) in seen:
            reason = "repeats the question of another new item"
        if reason is None:
            seen.add(_normal(item.question))
            kept.append(item)
        else:
            dropped.append((item, reason))
    return kept, dropped
