"""Model prices in US dollars per million tokens, and turning token counts into money.

The defaults are OpenAI's list prices for standard chat completions as of late 2025:
input, output and cached input (a prompt prefix the endpoint answered from its prompt
cache; OpenAI reports it as ``usage.prompt_tokens_details.cached_tokens``). Answers
of the Batch API cost ``batch`` times each price (0.5: half). Override or extend them
with a JSON file given by ``--prices`` or ``$MMEVOL_PRICES``::

    {"my-model": {"input": 0.2, "output": 0.8, "cached_input": 0.05, "batch": 0.5}}

``cached_input`` defaults to ``input`` (no discount) and ``batch`` to 0.5. A model with
no price (a local vLLM server, say) costs 0 and the run says so.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PRICES: dict[str, tuple[float, float, float]] = {
    # model: (input, output, cached input), dollars per million tokens
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
}
BATCH_FACTOR = 0.5
"""What the Batch API charges of every online price (OpenAI: half)."""


@dataclass(frozen=True)
class Price:
    """Dollars per million input, output and cached input tokens, and the batch factor."""

    input: float
    output: float
    cached_input: float | None = None
    """None: the same as ``input`` (the endpoint gives no discount for cached tokens)."""
    batch: float = BATCH_FACTOR

    def __post_init__(self) -> None:
        """Fill the cached-input price and check every number."""
        if self.cached_input is None:
            object.__setattr__(self, "cached_input", self.input)
        for name in ("input", "output", "cached_input", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number of at least 0, not {value!r}")

    def cost(
        self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, batch: bool = False
    ) -> float:
        """Return the dollars a call with these token counts costs.

        ``input_tokens`` includes the ``cached_tokens`` (as OpenAI's ``prompt_tokens``
        does); those are charged at ``cached_input`` instead of ``input``. ``batch``
        multiplies the whole by the batch factor.
        """
        cached = min(max(cached_tokens or 0, 0), input_tokens)
        dollars = (
            (input_tokens - cached) * self.input
            + cached * self.cached_input
            + output_tokens * self.output
        ) / 1_000_000
        return dollars * self.batch if batch else dollars


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
                    self.prices[model] = _read_price(model, value)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(
                    f"price file {str(path)!r} is not usable: {err}; expected "
                    '{"model": {"input": dollars_per_1M, "output": dollars_per_1M}} with '
                    'optional "cached_input" (dollars per 1M) and "batch" (a factor, 0.5)'
                ) from err

    def get(self, model: str) -> Price | None:
        """Return the model's price, or None when it has none."""
        if model in self.prices:
            return self.prices[model]
        # "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini": take the longest prefix.
        matches = [m for m in self.prices if model.startswith(m + "-")]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        batch: bool = False,
    ) -> float:
        """Return the dollars of a call; 0 for a model with no price (see ``Price.cost``)."""
        price = self.get(model)
        return price.cost(input_tokens, output_tokens, cached_tokens, batch) if price else 0.0

    def row_cost(self, row: Mapping[str, Any]) -> float:
        """Return the dollars of a row of summed tokens, as the results database groups them.

        Keys: ``model``, ``input_tokens``, ``output_tokens`` and, when known,
        ``cached_tokens`` and ``batch`` (missing or None: none cached, online).
        """
        return self.cost(
            row.get("model") or "",
            row.get("input_tokens") or 0,
            row.get("output_tokens") or 0,
            row.get("cached_tokens") or 0,
            bool(row.get("batch")),
        )


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """Return (input, output, cached input) tokens of an OpenAI ``usage`` object as JSON.

    For answers read without langchain (a Batch API output line's ``response.body.usage``);
    the input tokens include the cached ones, as ``PriceTable.cost`` expects.
    """
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )


def _read_price(model: str, value: Any) -> Price:
    """Read one model's entry of a price file."""
    if not isinstance(value, dict):
        raise ValueError(f"the entry of {model!r} is not an object")
    unknown = set(value) - {"input", "output", "cached_input", "batch"}
    if unknown:
        raise ValueError(f"the entry of {model!r} has unknown keys {sorted(unknown)}")
    try:
        cached = value.get("cached_input")
        return Price(
            input=_number(value["input"]),
            output=_number(value["output"]),
            cached_input=None if cached is None else _number(cached),
            batch=_number(value.get("batch", BATCH_FACTOR)),
        )
    except KeyError as err:
        raise ValueError(f"the entry of {model!r} has no {err.args[0]!r}") from err
    except (TypeError, ValueError) as err:
        raise ValueError(f"the entry of {model!r}: {err}") from err


def _number(value: Any) -> float:
    """Read a price: a JSON number (or a string holding one, as 0.1.0 accepted)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{value!r} is not a number")
    return float(value)
