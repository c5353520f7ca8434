"""Estimate a run's calls, tokens and cost from the seed alone, without calling anything.

Round 1 prompts are rendered exactly as the run would render them (averaged over the
three operators, whose prompts differ only in their objective). Later rounds start from
the items kept by the round before: their count follows the authors' share of items
judged improved (METHOD.md: 0.68 in round 1, 0.85 in round 2) and their size that of
evolved items. Output sizes come from the authors' recorded GPT-4o-mini answers: about
228 tokens per evolved item and 54 per judge verdict.

Every cost is given twice: online (the chat completions API, no prompt-cache discount
assumed) and in batch mode (the Batch API: the price table's batch factor, half on OpenAI,
with answers within 24 hours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from mmevol.graph.config import Settings
from mmevol.graph.state import OPERATORS, SampleState
from mmevol.nodes.evolve import chunked, render_evolve_prompt
from mmevol.nodes.score import render_score_prompt
from mmevol.run.seed import raw_rows, seed_row, shard_rows
from mmevol.runtime.limits import estimate_prompt_tokens
from mmevol.runtime.prices import PriceTable

KEPT_SHARE = {1: 0.68, 2: 0.85, 3: 0.91}
"""Share of rewritten items judged improved in each round (authors' GPT-4o-mini runs)."""
TOKENS_PER_ITEM = 228
"""Tokens of one evolved item, as the model writes it and as later prompts show it."""
TOKENS_PER_VERDICT = 54


@dataclass
class RoundEstimate:
    """Expected work of one round over the whole seed."""

    round: int
    items_in: float = 0.0
    evolve_calls: float = 0.0
    judge_calls: float = 0.0
    evolve_in: float = 0.0
    evolve_out: float = 0.0
    judge_in: float = 0.0
    judge_out: float = 0.0
    cost: float = 0.0
    batch_cost: float = 0.0
    """The same calls through the Batch API."""

    @property
    def calls(self) -> float:
        """Return the expected model calls."""
        return self.evolve_calls + self.judge_calls

    @property
    def input_tokens(self) -> float:
        """Return the expected prompt tokens."""
        return self.evolve_in + self.judge_in

    @property
    def output_tokens(self) -> float:
        """Return the expected completion tokens."""
        return self.evolve_out + self.judge_out


@dataclass
class ModelEstimate:
    """Expected work of one model over the whole run (both roles when they share it)."""

    model: str
    calls: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cost: float = 0.0
    batch_cost: float = 0.0


@dataclass
class Estimate:
    """Expected work of a run."""

    samples: int = 0
    skipped: int = 0
    rounds: list[RoundEstimate] = field(default_factory=list)
    models: list[ModelEstimate] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)

    @property
    def total_cost(self) -> float:
        """Return the expected dollars of the whole run, online."""
        return sum(r.cost for r in self.rounds)

    @property
    def total_batch_cost(self) -> float:
        """Return the expected dollars of the whole run through the Batch API."""
        return sum(r.batch_cost for r in self.rounds)

    def as_dict(self) -> dict:
        """Return the estimate as `mmevol estimate --json` prints it (snake_case keys, as stats).

        Counts are rounded to whole calls and tokens, dollars to cents.
        """
        rounds = [
            {"round": r.round, "items_in": round(r.items_in), **_work(r)} for r in self.rounds
        ]
        models = [{"model": m.model, **_work(m)} for m in self.models]
        return {
            "samples": self.samples,
            "skipped": self.skipped,
            "rounds": rounds,
            "models": models,
            "total_cost": round(self.total_cost, 2),
            "total_batch_cost": round(self.total_batch_cost, 2),
            "batch_within_hours": BATCH_WITHIN_HOURS,
            "unpriced": self.unpriced,
        }

    def total_row(self) -> dict:
        """Return the row adding up the models of ``as_dict``, as `mmevol estimate` shows it."""
        models = self.as_dict()["models"]
        return (
            {"model": "total"}
            | {k: sum(m[k] for m in models) for k in ("calls", "input_tokens", "output_tokens")}
            | {
                "cost_usd": round(self.total_cost, 2),
                "batch_cost_usd": round(self.total_batch_cost, 2),
            }
        )

    def summary(self, model: str, judge_model: str) -> str:
        """Return one line: the samples, and the expected cost online and in batch mode."""
        return (
            f"{self.samples} samples ({self.skipped} invalid rows left out); expected cost "
            f"${self.total_cost:.2f} online, ${self.total_batch_cost:.2f} in batch mode "
            f"(--batch: answers within 24 h) with {model} / {judge_model}"
        )

    def notes(self) -> list[str]:
        """Return a line per model whose price is unknown."""
        return [
            f"note: no price known for {name!r}; its cost counts as 0 (see --prices)"
            for name in self.unpriced
        ]


BATCH_WITHIN_HOURS = 24
"""The Batch API's completion window."""


def _work(part: RoundEstimate | ModelEstimate) -> dict:
    return {
        "calls": round(part.calls),
        "input_tokens": round(part.input_tokens),
        "output_tokens": round(part.output_tokens),
        "cost_usd": round(part.cost, 2),
        "batch_cost_usd": round(part.batch_cost, 2),
    }


def estimate(settings: Settings, seed: Path) -> Estimate:
    """Render every sample's prompts and add up the expected calls, tokens and cost."""
    result = Estimate(rounds=[RoundEstimate(r) for r in range(1, settings.rounds + 1)])
    for item in shard_rows(raw_rows(Path(seed)), settings.shard_of):
        row = seed_row(*item)
        if settings.limit is not None and row.index >= settings.limit:
            break
        if row.sample is None:
            result.skipped += 1
            continue
        result.samples += 1
        _add_sample(result.rounds, SampleState(**row.sample.model_dump()), settings)
    prices = PriceTable(settings.prices)
    evolver, judge = prices.get(settings.model), prices.get(settings.judge_model)
    result.unpriced = sorted(
        {m for m, p in ((settings.model, evolver), (settings.judge_model, judge)) if p is None}
    )
    models = {m: ModelEstimate(m) for m in (settings.model, settings.judge_model)}
    for r in result.rounds:
        for name, price, calls, tin, tout in (
            (settings.model, evolver, r.evolve_calls, r.evolve_in, r.evolve_out),
            (settings.judge_model, judge, r.judge_calls, r.judge_in, r.judge_out),
        ):
            online = price.cost(tin, tout) if price else 0.0
            batch = price.cost(tin, tout, batch=True) if price else 0.0
            r.cost += online
            r.batch_cost += batch
            m = models[name]
            m.calls += calls
            m.input_tokens += tin
            m.output_tokens += tout
            m.cost += online
            m.batch_cost += batch
    result.models = list(models.values())
    return result


def _add_sample(rounds: list[RoundEstimate], state: SampleState, settings: Settings) -> None:
    seed_items = list(state.seed_items)
    # The fixed part of each prompt: everything but the items.
    evolve_base = _mean_evolve_tokens(state, [], settings)
    judge_base = estimate_prompt_tokens(render_score_prompt([], []))
    count = float(len(seed_items))
    for r in rounds:
        chunks = max(1, math.ceil(count / settings.chunk_size))
        if r.round == 1:
            # Round 1 is rendered exactly: the seed items are known.
            evolve_in = sum(
                _mean_evolve_tokens(state, chunk, settings)
                for chunk in chunked(seed_items, settings.chunk_size)
            )
            given_tokens = evolve_in - chunks * evolve_base
        else:
            given_tokens = count * TOKENS_PER_ITEM
            evolve_in = chunks * evolve_base + given_tokens
        r.items_in += count
        r.evolve_calls += chunks
        r.judge_calls += chunks
        r.evolve_in += evolve_in
        r.evolve_out += count * TOKENS_PER_ITEM
        # The judge sees the given items and the rewritten ones (about one per given item).
        r.judge_in += chunks * judge_base + given_tokens + count * TOKENS_PER_ITEM
        r.judge_out += count * TOKENS_PER_VERDICT
        # The next round starts from what this one kept; never from nothing, since an
        # empty round hands the latest non-empty items on.
        count = max(1.0, count * KEPT_SHARE.get(r.round, KEPT_SHARE[3]))


def _mean_evolve_tokens(state: SampleState, chunk: list, settings: Settings) -> float:
    return sum(
        estimate_prompt_tokens(
            render_evolve_prompt(state.model_copy(update={"operator": op}), chunk),
            images=1,
            detail=settings.image_detail,
        )
        for op in OPERATORS
    ) / len(OPERATORS)
