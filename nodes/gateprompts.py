"""Prompt templates and response schemas of the quality gates (`--gates blind,judge2`).

As in ``mmevol.nodes.prompts``, each section sits in an XML-like tag that the simulated
endpoint (``sim/answers.py``) finds by name: ``<blind_questions>`` marks the blind call,
``<blind_answers>`` the comparison, ``<second_judge>`` the second judge.
"""

from mmevol.nodes.prompts import response_format

BLIND_PROMPT = """<role>
You answer questions about an image that you cannot see: only the questions are given.
</role>

<blind_questions>
{questions}
</blind_questions>

<output>
Answer every question as well as you can from the text alone. When a question cannot be
answered without seeing the image, say so in the answer ("cannot answer without the image").
Return a JSON list with exactly {count} entries, one per question and in the same order:
[{{"item": 1, "answer": "<your answer>"}}, ...]
</output>
{feedback}"""

BLIND_JUDGE_PROMPT = """<role>
You check whether questions about an image were answered correctly by someone who could not
see the image.
</role>

<rule>
Compare the blind answer with the reference answer of each item.
- "answerable": the blind answer reaches the same final answer as the reference (the same
  option, number, object, colour, yes or no, or the same main claim); wording, extra detail or
  missing explanation do not matter.
- "needs_image": the blind answer differs from the reference, guesses between options without
  committing, refuses, or says it cannot see or answer without the image.
</rule>

<blind_answers>
{items}
</blind_answers>

<output>
Return a JSON list with exactly {count} verdicts, one per item and in the same order:
[{{"item": 1, "verdict": "answerable" or "needs_image", "reason": "<one sentence>"}}, ...]
</output>
{feedback}"""

SECOND_JUDGE = """
<second_judge>
You give a second, independent opinion: judge each item on its own merits.
</second_judge>"""


BLIND_SCHEMA = response_format(
    "blind_answers",
    "answers",
    {
        "type": "object",
        "properties": {"item": {"type": "integer"}, "answer": {"type": "string"}},
        "required": ["item", "answer"],
        "additionalProperties": False,
    },
)
BLIND_JUDGE_SCHEMA = response_format(
    "blind_verdicts",
    "verdicts",
    {
        "type": "object",
        "properties": {
            "item": {"type": "integer"},
            "verdict": {"type": "string", "enum": ["answerable", "needs_image"]},
            "reason": {"type": "string"},
        },
        "required": ["item", "verdict", "reason"],
        "additionalProperties": False,
    },
)
