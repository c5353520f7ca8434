"""Write the simulated model's answers: pure functions from a request body to reply text."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any

from mmevol.nodes.refusals import ANSWER_REFUSAL
from mmevol.sim.options import SimOptions

GARBAGE = (
    "",
    "I'm sorry, I can't help with that.",
    "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<center><h1>502 Bad Gateway"
    "</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>",
    "Sure! The picture shows a lively scene, and each question can be answered by looking "
    "closely at the objects in it and at how they relate to one another.",
)
CUE = "Let's think step by step."
LONE_SURROGATE = "\ud800"
"""Half of a UTF-16 pair, alone: JSON can carry it (escaped), but it is not text."""

_VISION = ("Grounding", "Referencing", "Calculating", "OCR", "Existence")
_LANGUAGE = (
    "Relationship Description",
    "Context Understanding",
    "Behavior Prediction",
    "Knowledge Integration",
)
_COLOURS = ("red", "blue", "green", "white", "black", "yellow", "grey", "brown", "orange")
_MATERIALS = ("wooden", "metal", "plastic", "glass", "fabric", "stone", "paper")
_PLACES = ("next to", "behind", "in front of", "above", "below", "to the left of")
_SETTINGS = (
    "an everyday street scene",
    "a home interior",
    "a public outdoor space",
    "a workplace",
    "a teaching diagram",
)
_SIGNS = ("EXIT", "OPEN", "SALE", "STOP", "CAFE", "No. 12", "PUSH")
_ABSENT = ("giraffe", "piano", "surfboard", "telescope", "canoe", "violin", "snowman")
_STOP = frozenset(
    "what which where when there their these those this that with from about many they have "
    "into shown show shows visible image picture photo does doing being could would should "
    "think step steps given rewritten item items question answer other also some more most "
    "than then them your like look looks seen kind type much very each coordinates bbox "
    "bounding region area count number located location color colour colors colours none "
    "were been made used make take will just left right near front back side both only "
    "between describe explain analyze identify consider compare write detailed manner "
    "features feature based overall several various different another likely appear appears "
    "present presented indicate indicates total display provide using such while during after "
    "before under over below above around through because within without across behind "
    "beside toward among along whose might must cannot every same small large little tall "
    "short shorter taller higher lower long high good best least less sold infer possible "
    "reason purpose role able even still however rather quite really almost well first "
    "second third either whether".split()
)
_NOT_PLURAL = ("ss", "us", "is", "ous")
_BOX_RE = re.compile(r"\[\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?){3}\s*\]")
_BOX_LINE = re.compile(r"^\s*(?:-\s*)?(?P<label>.+?):\s*(?P<box>\[[^\]]*\])")
_LEAK_RE = re.compile(r"\b(?:given|rewritten)\b\s*|\bQ\s*&\s*A(?:\s*&\s*S)?\b", re.IGNORECASE)
_LOCAL_RE = re.compile(r"\b(?:bounding[ _-]?box(?:es)?|bbox(?:es)?|coordinates?|bbx_?\d*)\b", re.I)


@dataclass(frozen=True)
class Reply:
    """What the model says: text, why it stopped, the request kind and any fault applied."""

    content: str
    finish_reason: str = "stop"
    kind: str = "other"
    fault: str | None = None


@dataclass(frozen=True)
class Box:
    """One listed box: its label, its text exactly as in the prompt, and its numbers."""

    label: str
    text: str
    xyxy: tuple[float, ...]

    @property
    def centre(self) -> tuple[float, float]:
        """Return the box centre."""
        return (self.xyxy[0] + self.xyxy[2]) / 2, (self.xyxy[1] + self.xyxy[3]) / 2


def make_rng(*parts: object) -> random.Random:
    """Build a private generator from a sha256 of the parts, never from global state."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def read_messages(body: dict[str, Any]) -> tuple[str, int]:
    """Return the text of all messages joined by newlines, and the number of image parts."""
    texts: list[str] = []
    images = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    images += 1
    return "\n".join(texts), images


def classify(text: str) -> str:
    """Name the kind of request from its tags: "score", "evolve", "blind", "blind_judge", "other".

    "blind" and "blind_judge" (the gates of ``--gates blind``) are only counted once seen.
    """
    if "<blind_questions>" in text:
        return "blind"
    if "<blind_answers>" in text:
        return "blind_judge"
    if "<rewritten_items>" in text:
        return "score"
    if "<objective operator=" in text:
        return "evolve"
    return "other"


def build_reply(
    text: str, body: dict[str, Any], options: SimOptions, fault_rng: random.Random
) -> Reply:
    """Answer a chat request, then apply at most one content fault drawn from ``fault_rng``.

    The answer itself depends only on the seed and the message text, so a retry of the
    same request gets the same answer; only the faults change between attempts.

    Args:
        text: The request's message text, as ``read_messages`` returns it.
        body: The whole request body, for ``response_format`` and the token limits.
        options: The server's options (seed, clean, no_rate and the content fault rates).
        fault_rng: The generator of this attempt's faults.
    """
    kind = classify(text)
    rng = make_rng(options.seed, text)
    fmt = body.get("response_format") or {}
    structured = fmt.get("type") in ("json_schema", "json_object")
    draw = fault_rng.random()
    mismatch = draw < options.verdict_mismatch_rate
    if kind == "score":
        delta = fault_rng.choice((-1, 1)) if mismatch else 0
        content = score_answer(text, rng, options, structured, _wrapper(fmt, "verdicts"), delta)
    elif kind == "evolve":
        content = evolve_answer(text, rng, options.clean, structured, _wrapper(fmt, "items"))
    elif kind == "blind":
        content = blind_answer(text, options, structured, _wrapper(fmt, "answers"))
    elif kind == "blind_judge":
        content = blind_judge_answer(text, structured, _wrapper(fmt, "verdicts"))
    else:
        content = "OK"
    fault = "verdict_mismatch" if mismatch and kind == "score" else None
    draw -= options.verdict_mismatch_rate
    if 0 <= draw < options.garbage_rate:
        return Reply(fault_rng.choice(GARBAGE), "stop", kind, "garbage")
    draw -= options.garbage_rate
    if 0 <= draw < options.truncate_rate and content:
        return Reply(content[: max(1, len(content) // 2)], "length", kind, "truncate")
    draw -= options.truncate_rate
    if 0 <= draw < options.surrogate_rate:
        middle = len(content) // 2
        return Reply(
            content[:middle] + LONE_SURROGATE + content[middle:], "stop", kind, "surrogate"
        )
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0 and len(content) > 4 * limit:
        return Reply(content[: 4 * limit], "length", kind, fault)
    return Reply(content, "stop", kind, fault)


def _wrapper(fmt: dict[str, Any], default: str) -> str:
    """Pick the object key that holds the list, from the request's JSON schema if it has one."""
    schema = (fmt.get("json_schema") or {}).get("schema") or {}
    for key, spec in (schema.get("properties") or {}).items():
        if isinstance(spec, dict) and spec.get("type") == "array":
            return key
    return default


def _section(text: str, tag: str) -> str | None:
    start = text.find(f"<{tag}>")
    if start < 0:
        return None
    start += len(tag) + 2
    end = text.find(f"</{tag}>", start)
    return text[start : end if end >= 0 else len(text)].strip()


def _json_list(raw: str | None) -> list[Any]:
    try:
        value = json.loads(raw or "")
    except ValueError:
        return []
    return value if isinstance(value, list) else [value]


def parse_boxes(section: str | None) -> list[Box]:
    """Read ``label: [x1, y1, x2, y2]`` lines, keeping each box's text exactly as written."""
    boxes = []
    for line in (section or "").splitlines():
        match = _BOX_LINE.match(line)
        if not match:
            continue
        try:
            xyxy = tuple(float(v) for v in match["box"].strip("[]").split(","))
        except ValueError:
            continue
        if len(xyxy) == 4:
            boxes.append(Box(match["label"].strip(), match["box"], xyxy))
    return boxes


def _vocabulary(boxes: list[Box], given: list[dict[str, Any]], caption: str) -> list[str]:
    """Name the objects to write about: box labels first, else words of the items."""
    words = list(dict.fromkeys(b.label for b in boxes))
    if words:
        return words
    for item in given:
        words += [str(o).lower() for o in item.get("objects") or [] if str(o).strip()]
    text = " ".join(f"{i.get('question', '')} {i.get('answer', '')}" for i in given)
    text = f"{caption} {text}".lower()
    # Without a tagger, a word right after an article is the best bet for a thing; other
    # words only fill up a short list.
    found = re.findall(r"\b(?:the|a|an)\s+([a-z]{3,})", text)
    if len(set(found)) < 3:
        found += re.findall(r"[a-z]{4,}", text)
    for word in found:
        if word in _STOP or word in _COLOURS or word.endswith(("ing", "ly", "ed")):
            continue
        words.append(word[:-1] if word.endswith("s") and not word.endswith(_NOT_PLURAL) else word)
    words = [w for w in dict.fromkeys(words) if w not in _STOP][:12]
    return words or ["scene", "main object", "background"]


def _clean_text(text: Any, boxes: list[Box]) -> str:
    """Keep copied text within the rules: listed boxes only, no leaks, no unboxed localising."""
    if isinstance(text, list):
        text = " ".join(map(str, text))
    listed = {b.text.replace(" ", ""): b.text for b in boxes}
    text = _BOX_RE.sub(lambda m: listed.get(m[0].replace(" ", ""), "that part"), str(text))
    text = _LEAK_RE.sub("", text)
    return text if boxes else _LOCAL_RE.sub("position", text)


def _first_sentence(text: str, limit: int = 160) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + "..."


def _side(box: Box) -> str:
    x, y = box.centre
    horizontal = "left" if x < 0.4 else "right" if x > 0.6 else "middle"
    return f"{'upper' if y < 0.5 else 'lower'} {horizontal}"


def _item(objects, skills, fmt, question, steps, answer) -> dict[str, Any]:
    return {
        "image_position": "single",
        "objects": list(dict.fromkeys(objects)),
        "skills": list(dict.fromkeys(skills)),
        "format": fmt,
        "question": question,
        "steps": [{"manipulation": m, "description": d} for m, d in steps],
        "answer": answer,
    }


def _copied_steps(given: dict, boxes: list[Box]) -> list[tuple[str, str]]:
    steps = given.get("steps") or []
    return [
        (
            _clean_text(s.get("manipulation", "None"), boxes),
            _clean_text(s.get("description") or "", boxes),
        )
        for s in steps
        if isinstance(s, dict)
    ]


# Perceptual items as (objects, skills, question, steps, answer) templates. Box templates
# use a and b (labels), at and bt (their boxes as listed), side, n (how many a), way
# (left or right), big and bigt (the larger box); the first three need only one box.
# fmt: off
_BOX_ITEMS = (
    (("{a}",), ("Referencing", "Context Understanding"),
     "What is inside the region {at}, and what stands out about it?",
     (("referring_1({at})->tgt_1", "Zoom into the region to see what is there."),
      ("None", "Note its {colour} colour and {material} look.")),
     "The region {at} holds a {a}; it stands out by its {colour} colour and {material} look."),
    (("{a}",), ("Grounding",),
     "Where is the {a} in the {side} part of the picture?",
     (("grounding_1({a})->bbx_1", "Locate the {a}."),),
     "The {a} is at {at}, in the {side} part of the picture."),
    (("{a}",), ("Grounding", "Calculating"),
     "How many instances of {a} can be found in the picture?",
     (("grounding_1({a})->bbx_1", "Find every {a}."),
      ("calculate(bbx_1)->res_1", "Count what was found.")),
     "There {n} in the picture."),
    (("{a}", "{b}"), ("Grounding", "Relationship Description"),
     "Is the {a} at {at} to the left or to the right of the {b} at {bt}?",
     (("grounding_1({a})->bbx_1", "Locate the {a}."),
      ("grounding_2({b})->bbx_2", "Locate the {b}."),
      ("None", "Compare the horizontal centres of bbx_1 and bbx_2.")),
     "The {a} at {at} is to the {way} of the {b} at {bt}."),
    (("{a}", "{b}"), ("Calculating", "Relationship Description"),
     "Which covers more of the picture, the {a} at {at} or the {b} at {bt}?",
     (("calculate({at})->res_1", "Work out the area of the first region."),
      ("calculate({bt})->res_2", "Work out the area of the second region."),
      ("None", "Compare res_1 and res_2.")),
     "The {big} at {bigt} covers more of the picture."),
)
# Without boxes, w and v are object words; the last template needs two different ones.
_WORD_ITEMS = (
    (("{w}",), ("Existence", "Context Understanding"),
     "Is there a {w} anywhere in the picture, and what does it look like?",
     (("None", "Scan the picture for a {w}."), ("None", "Describe its appearance.")),
     "Yes, there is a {colour} {w}; it looks {material} and fairly worn."),
    (("{w}",), ("Referencing",),
     "What colour is the {w}, and what does it seem to be made of?",
     (("None", "Look closely at the {w}."),),
     "The {w} is mostly {colour} and seems to be {material}."),
    (("{w}", "text"), ("OCR", "Context Understanding"),
     "What text, if any, can be read on or near the {w}?",
     (("OCR_1({w})->txt_1", "Read any text on or near the {w}."),),
     'The text near the {w} reads "{sign}".'),
    (("{w}",), ("Context Understanding", "Knowledge Integration"),
     "What does the {w} suggest about where this picture was taken?",
     (("None", "Look at the {w} and its surroundings."), ("None", "Relate it to typical places.")),
     "The {w} suggests {setting}."),
    (("{w}", "{v}"), ("Relationship Description",),
     "How is the {w} placed relative to the {v}?",
     (("None", "Find the {w} and the {v}."), ("None", "Compare where they are.")),
     "The {w} is {place} the {v}."),
)
# fmt: on


def _fill(template: Any, fields: dict[str, Any]) -> Any:
    if isinstance(template, str):
        return template.format(**fields)
    return [_fill(t, fields) for t in template]


def _perceptual(rng: random.Random, boxes: list[Box], words: list[str]) -> dict[str, Any]:
    """Write a new item about a detail of the image."""
    fields: dict[str, Any] = {
        "colour": rng.choice(_COLOURS),
        "material": rng.choice(_MATERIALS),
        "sign": rng.choice(_SIGNS),
        "setting": rng.choice(_SETTINGS),
        "place": rng.choice(_PLACES),
    }
    if boxes:
        a, b = rng.choice(boxes), rng.choice(boxes)
        n = sum(box.label == a.label for box in boxes)
        big = max((a, b), key=lambda x: (x.xyxy[2] - x.xyxy[0]) * (x.xyxy[3] - x.xyxy[1]))
        fields.update(
            a=a.label,
            at=a.text,
            b=b.label,
            bt=b.text,
            side=_side(a),
            big=big.label,
            bigt=big.text,
            way="left" if a.centre[0] < b.centre[0] else "right",
            n=f"is 1 {a.label}" if n == 1 else f"are {n} instances of {a.label}",
        )
        template = rng.choice(_BOX_ITEMS[: 5 if a is not b else 3])
    else:
        fields.update(w=rng.choice(words), v=rng.choice(words))
        template = rng.choice(_WORD_ITEMS[: 5 if fields["w"] != fields["v"] else 4])
    objects, skills, question, steps, answer = _fill(template, fields)
    return _item(objects, skills, "Norm", question, steps, answer)


def _normal(text: Any) -> str:
    return " ".join(str(text).lower().split())


def _base_question(given: dict, boxes: list[Box], words: list[str]) -> str:
    """Return the item's question without its cue or end mark, safe to build upon."""
    base = _clean_text(given.get("question", ""), boxes).replace(CUE, "").strip().rstrip("?. ")
    if not boxes and re.search(r"\bhow many\b|\bcount", base, re.IGNORECASE):
        # Without boxes the rules forbid counting, so ask about the scene instead.
        return f"What stands out about the {words[0]} in this scene"
    return base or "What is happening in the picture"


def _reasoning(rng: random.Random, given: dict, boxes: list[Box], words: list[str]) -> dict:
    """Rewrite an item into a harder, step-by-step one with new objects and skills."""
    base = _base_question(given, boxes, words)
    extra = rng.sample(words, min(len(words), rng.randint(1, 2)))
    old_skills = [str(s) for s in given.get("skills") or []]
    new_skills = [s for s in _VISION + _LANGUAGE if s not in old_skills]
    skills = old_skills + rng.sample(new_skills, min(len(new_skills), rng.randint(1, 2)))
    tail = rng.choice(
        (
            "and how does this connect to the {o}?",
            "and what can the {o} add to the answer?",
            "taking the {o} into account as well?",
        )
    ).format(o=" and the ".join(extra))
    steps = _copied_steps(given, boxes)
    for i, obj in enumerate(extra, start=len(steps) + 1):
        boxed = any(b.label == obj for b in boxes)
        steps.append(
            (
                f"grounding_{i}({obj})->bbx_{i}" if boxed else "None",
                f"Find the {obj} and note how it relates to the rest of the scene.",
            )
        )
    steps.append(("None", "Combine the observations into one conclusion."))
    answer = _first_sentence(_clean_text(given.get("answer", ""), boxes), 400)
    return _item(
        [str(o) for o in given.get("objects") or []] + extra,
        skills,
        "Norm",
        f"{base}, {tail} {CUE}",
        steps,
        f"First, look at the {extra[0]} and its surroundings. Next, connect it with the rest of "
        f"the scene. Putting this together: {answer or 'the scene is consistent.'}",
    )


# Interactive formats that need nothing but the item and a few object words; the
# fields are q (the item's question), ql (the same, lower-cased start), short (the first
# sentence of its answer), w and v (object words), colour, sign, absent and style.
_TEMPLATES = {
    "depth_order": (
        "Order the {w} and the {v} from nearest to farthest from the viewer, then answer: {ql}?",
        "The {w} is nearer and the {v} farther. {short}",
    ),
    "relative_distance": (
        "Which lies closer to the {w}, the {v} or the edge of the picture? Then answer: {ql}?",
        "The {v} lies closer to the {w}. {short}",
    ),
    "text_image_matching": (
        'Does this sentence match the picture: "{short}" Answer yes or no, and explain.',
        "Yes, it matches what the picture shows. {short}",
    ),
    "rationales_generation": (
        "{q}? Give the answer and the visual evidence behind it.",
        "{short} The evidence is the {w}, clearly visible in the picture.",
    ),
    "completeness_of_response": (
        'Is "{short}" a complete answer to "{q}?" If not, complete it.',
        "Not quite: it should also mention the {w}. {short}",
    ),
    "creative_content_generation": (
        "Write two sentences of a short story inspired by the {w}, in the spirit of: {ql}?",
        "The {colour} {w} waited quietly while the day went on around it. {short}",
    ),
    "text_detection": (
        "Is there readable text near the {w}? Read it, then answer: {ql}?",
        'Yes, the text reads "{sign}". {short}',
    ),
    "missing_object_selection": (
        "Which of these does not appear in the picture: the {w}, the {absent} or the {v}?",
        "The {absent} does not appear; the {w} and the {v} do.",
    ),
    "image_style_classification": (
        "What style is this picture, judging by how the {w} is shown: photograph, diagram, "
        "painting or sketch? Then answer: {ql}?",
        "It is {style}. {short}",
    ),
    "coreference_resolution": (
        'In "The {w} is near the {v}, and it looks {colour}", what does "it" refer to? '
        "Then answer: {ql}?",
        '"It" refers to the {w}. {short}',
    ),
}
_FORMATS = (*_TEMPLATES, "multi_choice", "multi_choice", "fill_in_the_blank")
_BOXED_FORMATS = ("region_selection", "object_region_matching")


def _interactive(rng: random.Random, given: dict, boxes: list[Box], words: list[str]) -> dict:
    """Rewrite an item into another instruction format."""
    q = _base_question(given, boxes, words)
    short = _first_sentence(_clean_text(given.get("answer", ""), boxes))
    if not short or ANSWER_REFUSAL.match(short):
        # Seed answers are sometimes refusals; an item must never open with one.
        short = "It is clearly visible in the picture."
    fmt = rng.choice(_FORMATS + (_BOXED_FORMATS if len(boxes) > 1 else ()))
    blank = max(re.findall(r"[A-Za-z]{4,}", short), key=len, default=None)
    if fmt == "fill_in_the_blank" and blank is None:
        fmt = "rationales_generation"
    w, v = rng.choice(words), rng.choice(words)
    objects = [str(o) for o in given.get("objects") or []] + [w]
    if fmt == "multi_choice":
        picks = rng.sample(words, min(3, len(words)))
        wrong = [f"Just one {rng.choice(_COLOURS)} {x}." for x in picks]
        options = list(dict.fromkeys([short, *wrong]))
        rng.shuffle(options)
        letter = "ABCD"[options.index(short)]
        lines = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))
        question, answer = f"{q}?\n{lines}", f"{letter}. {short}"
    elif fmt == "fill_in_the_blank":
        blanked = short.replace(blank, "____", 1)
        question, answer = f'Fill in the blank from what the picture shows: "{blanked}"', blank
    elif fmt == "region_selection":
        a, b = rng.sample(boxes, 2)
        question = f"Which region shows the {a.label}, {b.text} or {a.text}? Then: {q}?"
        answer, objects = f"{a.text} shows the {a.label}. {short}", objects + [a.label]
    elif fmt == "object_region_matching":
        a, b = rng.sample(boxes, 2)
        question = (
            f"Match the {a.label} and the {b.label} to the regions (1) {b.text} and (2) {a.text}."
        )
        answer = f"The {a.label} is in region (2) and the {b.label} in region (1)."
        objects += [a.label, b.label]
    else:
        absent = rng.choice([x for x in _ABSENT if x not in words] or ["unicorn"])
        style = rng.choice(("a photograph", "a diagram", "a painting", "a sketch"))
        colour, sign, ql = rng.choice(_COLOURS), rng.choice(_SIGNS), q[:1].lower() + q[1:]
        fields = dict(q=q, ql=ql, short=short, w=w, v=v, absent=absent, colour=colour)
        question, answer = (t.format(sign=sign, style=style, **fields) for t in _TEMPLATES[fmt])
    steps = _copied_steps(given, boxes)
    steps.append(("None", f"Answer in the {fmt.replace('_', ' ')} form."))
    skills = [str(s) for s in given.get("skills") or []] + [rng.choice(_LANGUAGE)]
    return _item(objects, skills, fmt, question, steps, answer)


def evolve_items(text: str, rng: random.Random) -> list[dict[str, Any]]:
    """Write the evolved items an evolution prompt asks for, one per item it lists."""
    found = re.search(r'<objective operator="(\w+)">', text)
    operator = found[1] if found else "perceptual"
    boxes = parse_boxes(_section(text, "boxes"))
    given = [g for g in _json_list(_section(text, "given_items")) if isinstance(g, dict)]
    words = _vocabulary(boxes, given, _section(text, "caption") or "")
    seen = {_normal(g.get("question", "")) for g in given}
    items = []
    for g in given:
        # Few words and few templates can collide: draw again, then number what remains.
        for _ in range(4):
            if operator == "reasoning":
                item = _reasoning(rng, g, boxes, words)
            elif operator == "interactive":
                item = _interactive(rng, g, boxes, words)
            else:
                item = _perceptual(rng, boxes, words)
            if _normal(item["question"]) not in seen:
                break
        question, n = item["question"], 1
        while _normal(item["question"]) in seen:
            n += 1
            item["question"] = f"{question} (part {n})"
        seen.add(_normal(item["question"]))
        items.append(item)
    return items


_YES_REASONS = (
    "It adds more solving steps about the {t}.",
    "It asks for finer visual details of the {t}.",
    "Its new question form adds variety and still needs the image.",
    "It relates the {t} to more objects and gives a fuller answer.",
)
_NO_REASONS = (
    "It is shorter and less specific than the original item.",
    "It adds no visual detail about the {t} that the original lacked.",
    "The new form does not make the question any harder.",
)


def verdicts(text: str, rng: random.Random, no_rate: float, extra: int = 0) -> list[dict]:
    """Judge each rewritten item of a scoring prompt; ``extra`` adds or drops verdicts."""
    rewritten = _json_list(_section(text, "rewritten_items"))
    asked = re.search(r"exactly (\d+) verdicts", text)
    count = len(rewritten) or (int(asked[1]) if asked else 1)
    out = []
    # One verdict more than asked is always drawn, so dropping or adding one leaves the
    # others unchanged.
    for i in range(count + 1):
        item = rewritten[i] if i < len(rewritten) and isinstance(rewritten[i], dict) else {}
        thing = ((item.get("objects") or []) + ["scene"])[0]
        if rng.random() >= no_rate:
            score = rng.choices((5, 6, 7, 8, 9), (15, 30, 30, 17, 8))[0]
            verdict = {"improved": "yes", "score": score, "reason": rng.choice(_YES_REASONS)}
        elif rng.random() < 0.1:
            reason = "It can be answered without looking at the image."
            verdict = {"improved": "no", "score": 0, "reason": reason}
        else:
            reason = rng.choice(_NO_REASONS)
            verdict = {"improved": "no", "score": rng.randint(1, 5), "reason": reason}
        verdict["reason"] = verdict["reason"].format(t=thing)
        out.append(verdict)
    return out[: max(0, count + extra)]


def score_answer(
    text: str, rng: random.Random, options: SimOptions, structured: bool, key: str, extra: int
) -> str:
    """Return the judge's reply text for a scoring prompt."""
    found = verdicts(text, rng, options.no_rate, extra)
    if structured:
        return json.dumps({key: found})
    if not options.clean:
        style = rng.choices(("plain", "capital", "string", "out_of_ten"), (80, 10, 5, 5))[0]
        for v in found:
            if style == "capital":
                v["improved"] = v["improved"].capitalize()
            elif style == "string":
                v["score"] = str(v["score"])
            elif style == "out_of_ten":
                v["score"] = f"{v['score']}/10"
    lines = ",\n".join(f"    {json.dumps(v)}" for v in found)
    return _dress(f"[\n{lines}\n]" if found else "[]", rng, options.clean)


def evolve_answer(text: str, rng: random.Random, clean: bool, structured: bool, key: str) -> str:
    """Return the model's reply text for an evolution prompt."""
    items = evolve_items(text, rng)
    if structured:
        return json.dumps({key: items})
    if clean:
        return _dress(_layout(items, 2), rng, clean)
    if items and rng.random() < 0.05:
        # Models now and then write the answer key in the plural.
        item = rng.choice(items)
        item["answers"] = item.pop("answer")
    shown: Any = items[0] if len(items) == 1 and rng.random() < 0.3 else items
    raw = _layout(shown, rng.choice((2, 4)))
    if rng.random() < 0.3:
        # GPT-4o-mini often breaks multiple-choice options over real lines inside the string.
        raw = re.sub(r"\\n(?=[A-D]\. )", "\n", raw)
    return _dress(raw, rng, clean)


def _layout(value: Any, indent: int) -> str:
    """Lay items out as chat models do: one key a line, one step a line.

    This also keeps to the C JSON encoder; ``json.dumps(indent=...)`` runs in pure Python
    and would double the cost of an answer.
    """
    pad = " " * indent

    def item(entry: dict[str, Any], depth: int) -> str:
        lines = []
        for key, val in entry.items():
            text = json.dumps(val, ensure_ascii=False)
            if key == "steps" and val:
                steps = ",\n".join(
                    pad * (depth + 2) + json.dumps(s, ensure_ascii=False) for s in val
                )
                text = f"[\n{steps}\n{pad * (depth + 1)}]"
            lines.append(f'{pad * (depth + 1)}"{key}": {text}')
        return "{\n" + ",\n".join(lines) + f"\n{pad * depth}}}"

    if isinstance(value, dict):
        return item(value, 0)
    return "[\n" + ",\n".join(pad + item(v, 1) for v in value) + "\n]" if value else "[]"


def _dress(raw: str, rng: random.Random, clean: bool) -> str:
    """Fence the JSON the way GPT-4o-mini does, with the occasional sloppiness."""
    if not clean and rng.random() < 0.05:
        raw = re.sub(r"\}(\s*)\]\s*$", r"},\1]", raw)
    text = f"```json\n{raw}\n```"
    if clean:
        return text
    if rng.random() < 0.1:
        text = rng.choice(("Here is the JSON:\n\n", "Sure! Here you go:\n")) + text
    if rng.random() < 0.1:
        text += "\n\nEach entry follows the requested format."
    return text


# 200 answers that are not chat completions, as broken proxies and gateways send them:
# (content type, body). The client must take them for an unusable answer, not crash.
NOT_COMPLETIONS: dict[str, tuple[str, str]] = {
    "html": (
        "text/html",
        "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n<body><h1>Please sign in"
        '</h1><form action="/login"></form></body></html>\n',
    ),
    "no_choices": ("application/json", json.dumps({"id": "chatcmpl-empty", "choices": []})),
    "no_message": (
        "application/json",
        json.dumps(
            {
                "id": "chatcmpl-nomessage",
                "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": "stop"}],
            }
        ),
    ),
}


BLIND_GUESS = "From the question alone, the answer is most likely: "
BLIND_REFUSE = "I cannot answer this without seeing the image."


def answers_blind(question: str, options: SimOptions) -> bool:
    """Whether the simulated model answers ``question`` without its image (``blind_rate``).

    Drawn from the seed and the question alone, so a test can tell which items the blind
    gate will flag.
    """
    return make_rng(options.seed, "blind", question.strip()).random() < options.blind_rate


def blind_answer(text: str, options: SimOptions, structured: bool, key: str) -> str:
    """Answer a blind-gate prompt: a guess for a share of the questions, a refusal otherwise."""
    out = []
    for n, entry in enumerate(_json_list(_section(text, "blind_questions")), 1):
        question = str(entry.get("question", "")) if isinstance(entry, dict) else str(entry)
        number = entry.get("item", n) if isinstance(entry, dict) else n
        words = [w for w in re.findall(r"[a-z]+", question.lower()) if w not in _STOP]
        guess = BLIND_GUESS + (words[-1] if words else "yes") + "."
        out.append({"item": number, "answer": guess if answers_blind(question, options) else
                    BLIND_REFUSE})  # fmt: skip
    return json.dumps({key: out} if structured else out)


def blind_judge_answer(text: str, structured: bool, key: str) -> str:
    """Compare blind answers: a guess counts as answerable, anything else needs the image."""
    out = []
    for n, entry in enumerate(_json_list(_section(text, "blind_answers")), 1):
        entry = entry if isinstance(entry, dict) else {}
        answerable = str(entry.get("blind_answer", "")).startswith(BLIND_GUESS)
        out.append(
            {
                "item": entry.get("item", n),
                "verdict": "answerable" if answerable else "needs_image",
                "reason": "The blind answer names the reference's answer."
                if answerable
                else "The blind answer misses the reference's answer.",
            }
        )
    return json.dumps({key: out} if structured else out)
