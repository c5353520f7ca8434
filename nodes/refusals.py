"""What a refusal looks like: the one definition used by the parser, the checks and the sim.

Two strictnesses, on purpose:

- ``ANSWER_REFUSAL`` judges a whole model answer that holds no JSON. Any opening "I can't",
  "I cannot" or "Sorry," there means the model declined the task, since nothing else follows.
- ``ITEM_REFUSAL`` judges one evolved item's question or answer. Items about what the image
  does *not* show legitimately open with "I can't see a label on the box" or "I cannot find
  a dog here"; only openings that decline to answer ("I can't help", "... determine") are
  refusals there, or good existence and hallucination items would be dropped.

``mmevol.sim`` uses ``ANSWER_REFUSAL`` (the wider one) so that nothing it writes into an
item could read as a refusal.
"""

from __future__ import annotations

import re

# Openings that are a refusal wherever they appear.
_APOLOGY = r"i'?m sorry|i am sorry|i(?: am|'m) unable|as an ai"

ANSWER_REFUSAL = re.compile(rf"^\s*(?:{_APOLOGY}|sorry,|i can(?:no|')t)", re.IGNORECASE)
ITEM_REFUSAL = re.compile(
    rf"^\s*(?:{_APOLOGY}|i can(?:no|')t (?:help|assist|answer|determine))", re.IGNORECASE
)
