"""Prompt templates for the evolve and score nodes.

The templates are plain strings with ``str.format`` placeholders and no logic. Each
section of a prompt sits inside an XML-like tag (``<caption>``, ``<boxes>``,
``<given_items>``, ``<rewritten_items>`` ...). Models follow tagged sections well, and
the simulated endpoint in ``sim/`` finds the parts it needs by the same tags, so a tag
renamed here must be renamed there too.
"""

SKILLS = (
    "Vision-centred skills: Grounding (find the box of a described object), Referencing "
    "(describe what is inside a given box), Calculating (counting, sizes, distances), OCR "
    "(reading text in the image), Existence (whether something is present).\n"
    "Language-centred skills: Relationship Description, Context Understanding, Behavior "
    "Prediction, Knowledge Integration."
)

MANIPULATIONS = (
    "A solving step may name one manipulation, written as a pseudo-function that is never run:\n"
    "- grounding_i(tgt)->bbx_i: locate the target and return its box as bbx_i\n"
    "- referring_i(bbx)->tgt_i: zoom into a box and say what is there\n"
    "- calculate(tgt)->res_i: compute a count, size or other quantity\n"
    "- OCR_i(tgt)->txt_i: read the text of the target\n"
    'Use "None" when a step is plain reasoning. You may define another manipulation when '
    "none of these fits, in the same notation."
)

ITEM_SCHEMA = """Each item is a JSON object with exactly these keys:
{
  "image_position": "single",
  "objects": ["<visual object category>", ...],
  "skills": ["<atomic skill>", ...],
  "format": "<question form, e.g. Norm, multi_choice, fill_in_the_blank>",
  "question": "<the question>",
  "steps": [{"manipulation": "<pseudo-function or None>", "description": "<what this step does>"}],
  "answer": "<the answer, one string>"
}
Answer with a JSON list of such items and nothing else."""

EXAMPLES = """Example of a well-formed item (for an image of a kitchen counter):
{"image_position": "single", "objects": ["kettle", "mug"], "skills": ["Grounding", "Relationship Description"],
 "format": "Norm", "question": "Which object stands closer to the kettle, the mug or the cutting board?",
 "steps": [{"manipulation": "grounding_1(kettle)->bbx_1", "description": "Find the kettle."},
           {"manipulation": "grounding_2(mug)->bbx_2", "description": "Find the mug."},
           {"manipulation": "None", "description": "Compare the gaps between bbx_1 and the other two objects."}],
 "answer": "The mug is closer: it stands right beside the kettle, while the cutting board lies at the far end."}

Example of an item that uses a box from the list of boxes:
{"image_position": "single", "objects": ["dog"], "skills": ["Referencing", "Behavior Prediction"],
 "format": "Norm", "question": "What is the animal in the region [0.120, 0.400, 0.380, 0.910] likely to do next?",
 "steps": [{"manipulation": "referring_1([0.120, 0.400, 0.380, 0.910])->tgt_1", "description": "Zoom into the region: a dog crouching toward a ball."},
           {"manipulation": "None", "description": "A crouch aimed at a ball usually comes before a pounce."}],
 "answer": "The dog in that region is crouched and staring at the ball, so it is about to leap for it."}"""

ROLE = (
    "You are a visual assistant who writes question-answer training data about one image. "
    "You see the image itself. The caption and object boxes below were produced by other "
    "tools and may be wrong or incomplete: trust the image, check every detail against it, "
    "and never repeat a claim from the caption that the image does not support."
)

OBJECTIVES = {
    "perceptual": (
        "Fine-grained perceptual evolution. Write brand-new question-answer items about this "
        "image, in the same domain as the given items but about rarer, less obvious visual "
        "details. Each new item should be about as hard as the given ones and use about as "
        "many objects, skills and solving steps, but different objects and skills. Write as "
        "many new items as there are given items."
    ),
    "reasoning": (
        "Cognitive reasoning evolution. Rewrite every given item into a harder one: bring in "
        "one or two more object categories and atomic skills, require more solving steps, end "
        'the question with a reasoning cue such as "Let\'s think step by step.", and write an '
        "answer that walks through the steps before it concludes. Return one rewritten item "
        "for each given item, in the same order."
    ),
    "interactive": (
        "Interactive evolution. Rewrite every given item into a different instruction format "
        "so that the data covers many ways of asking. Pick, for each item, a format that suits "
        "its content from: region_selection, text_translation, text_image_matching, art_type, "
        "fill_in_the_blank, image_style_classification, rationales_generation, text_detection, "
        "missing_object_selection, depth_order, relative_distance, multi_choice, "
        "object_region_matching, completeness_of_response, coreference_resolution, "
        'creative_content_generation. Put the chosen format in the item\'s "format" key. '
        "Return one rewritten item for each given item, in the same order."
    ),
}

CONSTRAINTS = (
    "- Every item must be consistent with the image.\n"
    "- Never invent coordinates: a box written in a question, step or answer must be one of "
    "the boxes listed above, copied exactly.\n"
    "{box_rule}"
    '- Never mention the given items or this task (no phrases such as "given Q&A" or '
    '"rewritten Q&A"); each item must stand on its own.\n'
    "- Write the answer as a single string."
)

NO_BOX_RULE = (
    "- No boxes are listed for this image: ask no question about locations by coordinates "
    "and no question that needs exact counting of boxes.\n"
)

EVOLVE_PROMPT = """<role>
{role}
</role>

<skills>
{skills}

{manipulations}
</skills>

<schema>
{schema}
</schema>

<examples>
{examples}
</examples>

<caption>
{caption}
</caption>

<boxes>
{boxes}
</boxes>

<objective operator="{operator}">
{objective}
</objective>

<constraints>
{constraints}
</constraints>

<given_items>
{given_items}
</given_items>
{feedback}"""

SCORE_PROMPT = """<role>
You judge whether rewritten question-answer items about an image are better training data
than the items they came from. You do not see the image; judge from the text.
</role>

<criteria>
An item counts as improved when it is better on some of these without being worse on the others:
- length: a fuller question and a more complete answer;
- semantic complexity: more objects, relations or reasoning steps involved;
- visual information: it asks for more, or finer, details of the image;
- format variation: a question form that adds variety;
- visual independence: it must need the image. An item that can be answered without looking at
  the image is not improved: give it "no" and score 0.
Score difficulty from 1 (trivial) to 10 (very hard).
</criteria>

<given_items>
{given_items}
</given_items>

<rewritten_items>
{rewritten_items}
</rewritten_items>

<output>
Return a JSON list with exactly {count} verdicts, one per rewritten item and in the same order,
each naming its item by its 1-based position in the list of rewritten items:
[{{"item": 1, "improved": "yes" or "no", "score": <integer 0-10>, "reason": "<one sentence>"}}, ...]
</output>
{feedback}"""

FEEDBACK = """
<feedback>
Your previous answer could not be used: {problem}
Answer again, following the format exactly.
</feedback>"""

# JSON schemas for endpoints that enforce structured output (--structured-output). The
# root must be an object, so the list sits under one key; the parser unwraps it.
_STEP = {
    "type": "object",
    "properties": {"manipulation": {"type": "string"}, "description": {"type": "string"}},
    "required": ["manipulation", "description"],
    "additionalProperties": False,
}
_ITEM = {
    "type": "object",
    "properties": {
        "image_position": {"type": "string"},
        "objects": {"type": "array", "items": {"type": "string"}},
        "skills": {"type": "array", "items": {"type": "string"}},
        "format": {"type": "string"},
        "question": {"type": "string"},
        "steps": {"type": "array", "items": _STEP},
        "answer": {"type": "string"},
    },
    "required": ["image_position", "objects", "skills", "format", "question", "steps", "answer"],
    "additionalProperties": False,
}
_VERDICT = {
    "type": "object",
    "properties": {
        "item": {"type": "integer"},
        "improved": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "integer"},
        "reason": {"type": "string"},
    },
    "required": ["item", "improved", "score", "reason"],
    "additionalProperties": False,
}


def response_format(name: str, key: str, item: dict) -> dict:
    """Return a strict JSON-schema response format: an object holding one list of ``item``."""
    schema = {
        "type": "object",
        "properties": {key: {"type": "array", "items": item}},
        "required": [key],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


ITEMS_SCHEMA = response_format("evolved_items", "items", _ITEM)
VERDICTS_SCHEMA = response_format("verdicts", "verdicts", _VERDICT)
