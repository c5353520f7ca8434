"""Model prices in US dollars per million tokens, and turning token counts into money.

The defaults are OpenAI's list prices for standard (non-batch) chat completions as of
late 2025; override or extend them with a JSON file given by ``--prices`` or
``$MMEVOL_PRICES``: ``{"my-model": {"input": 0.2, "output": 0.8}}``. A model with no
price (a local vLLM server, say) costs 0 and the run says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


@dataclass(frozen=True)
class Price:
    """Dollars per million input and output tokens."""

    input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """Return the dollars a call with these token counts costs."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


class PriceTable:
    """Look up a model's price, matching dated snapshots to their base name."""

    def __init__(self, path: Path | str | None = None):
        """Load the defaults, then the overrides of ``path`` or ``$MMEVOL_PRICES``."""
        self.prices = {m: Price(*p) for m, p in DEFAULT_PRICES.items()}
        path = path or os.environ.get("MMEVOL_PRICES")
        if path:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
                for model, value in data.items():
                    self.prices[model] = Price(float(value["input"]), float(value["output"]))
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"price file {str(path)!r} is not usable: {err}; expected "
                    '{"model": {"input": dollars_per_1M, "output": dollars_per_1M}}'
                ) from err

    def get(self, model: str) -> Price | None:
        """Return the model's price, or None when it has none."""
        if model in self.prices:
            return self.prices[model]
        # "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini": take the longest prefix.
        matches = [m for m in self.prices if model.startswith(m + "-")]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """Return the dollars of a call; 0 for a model with no price."""
        price = self.get(model)
        return price.cost(input_tokens, output_tokens) if price else 0.0
