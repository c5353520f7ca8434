"""Estimate a run's calls, tokens and cost from the seed alone, without calling anything.

Round 1 prompts are rendered exactly as the run would render them (averaged over the
three operators, whose prompts differ only in their objective). Later rounds start from
the items kept by the round before: their count follows the authors' share of items
judged improved (METHOD.md: 0.68 in round 1, 0.85 in round 2) and their size that of
evolved items. Output sizes come from the authors' recorded GPT-4o-mini answers: about
228 tokens per evolved item and 54 per judge verdict.

With ``--gates`` the gates' calls are added per round (``RoundEstimate.gates``): one
``blind`` call (the blind model, text only) and one ``score_blind`` comparison (the judge)
per chunk of kept items, and one ``judge2`` call (the second judge) per judge chunk that
kept an item. The estimate assumes the blind model attempts every question, so every chunk
gets its comparison: an upper bound, since a chunk whose blind answers all refuse skips it.
Questions and answers are sized from the authors' recorded items (about 31 and 82 tokens).

Every cost is given twice: online (the chat completions API, no prompt-cache discount
assumed) and in batch mode (the Batch API: the price table's batch factor, half on OpenAI,
with answers within 24 hours).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from mmevol.graph.config import Settings
from mmevol.graph.state import OPERATORS, SampleState
from mmevol.nodes import gateprompts
from mmevol.nodes.evolve import chunked, render_evolve_prompt
from mmevol.nodes.score import render_score_prompt
from mmevol.run.seed import raw_rows, seed_row, shard_rows
from mmevol.runtime.limits import estimate_prompt_tokens
from mmevol.runtime.llm import role_models, role_of
from mmevol.runtime.prices import PriceTable

KEPT_SHARE = {1: 0.68, 2: 0.85, 3: 0.91}
"""Share of rewritten items judged improved in each round (authors' GPT-4o-mini runs)."""
TOKENS_PER_ITEM = 228
"""Tokens of one evolved item, as the model writes it and as later prompts show it."""
TOKENS_PER_VERDICT = 54
TOKENS_PER_QUESTION = 31
"""Tokens of one evolved item's question (the authors' recorded round-1 items)."""
TOKENS_PER_ANSWER = 82
"""Tokens of one evolved item's answer; a blind answer is assumed as long."""
GATE_NODES = {"blind": ("blind", "score_blind"), "judge2": ("judge2",)}
"""The nodes that call the model for each gate."""


@dataclass
class NodeWork:
    """Expected calls and tokens of one gate node in one round."""

    calls: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cost: float = 0.0
    batch_cost: float = 0.0

    def add(self, calls: float, tin: float, tout: float) -> None:
        """Add one sample's share."""
        self.calls += calls
        self.input_tokens += tin
        self.output_tokens += tout


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
    gates: dict[str, NodeWork] = field(default_factory=dict)
    """The gates' nodes (``blind``, ``score_blind``, ``judge2``), with ``--gates`` only."""

    @property
    def calls(self) -> float:
        """Return the expected model calls, the gates' included."""
        return self.evolve_calls + self.judge_calls + sum(g.calls for g in self.gates.values())

    @property
    def input_tokens(self) -> float:
        """Return the expected prompt tokens."""
        return self.evolve_in + self.judge_in + sum(g.input_tokens for g in self.gates.values())

    @property
    def output_tokens(self) -> float:
        """Return the expected completion tokens."""
        return self.evolve_out + self.judge_out + sum(g.output_tokens for g in self.gates.values())


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
    gates: tuple[str, ...] = ()

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
            {"round": r.round, "items_in": round(r.items_in), **_work(r)}
            | ({"gates": {node: _work(w) for node, w in r.gates.items()}} if self.gates else {})
            for r in self.rounds
        ]
        models = [{"model": m.model, **_work(m)} for m in self.models]
        gates = {"gates": list(self.gates)} if self.gates else {}
        return gates | {
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

    def gate_rows(self) -> list[dict]:
        """Return a row per round and gate node, as `mmevol estimate --gates` shows them."""
        return [
            {"round": r.round, "node": node, **_work(work)}
            for r in self.rounds
            for node, work in r.gates.items()
        ]

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


def _work(part: RoundEstimate | ModelEstimate | NodeWork) -> dict:
    return {
        "calls": round(part.calls),
        "input_tokens": round(part.input_tokens),
        "output_tokens": round(part.output_tokens),
        "cost_usd": round(part.cost, 2),
        "batch_cost_usd": round(part.batch_cost, 2),
    }


def estimate(settings: Settings, seed: Path) -> Estimate:
    """Render every sample's prompts and add up the expected calls, tokens and cost."""
    result = Estimate(
        rounds=[RoundEstimate(r) for r in range(1, settings.rounds + 1)], gates=settings.gate_set
    )
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
    roles = role_models(settings)
    price_of = {name: prices.get(name) for name in roles.values()}
    result.unpriced = sorted(name for name, price in price_of.items() if price is None)
    models = {name: ModelEstimate(name) for name in roles.values()}
    for r in result.rounds:
        work = [
            (roles["evolve"], r.evolve_calls, r.evolve_in, r.evolve_out, None),
            (roles["score"], r.judge_calls, r.judge_in, r.judge_out, None),
        ] + [
            (roles[role_of(node)], w.calls, w.input_tokens, w.output_tokens, w)
            for node, w in r.gates.items()
        ]
        for name, calls, tin, tout, node in work:
            price = price_of[name]
            online = price.cost(tin, tout) if price else 0.0
            batch = price.cost(tin, tout, batch=True) if price else 0.0
            r.cost += online
            r.batch_cost += batch
            if node is not None:
                node.cost += online
                node.batch_cost += batch
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
    gates = settings.gate_set
    for r in rounds:
        for gate in gates:
            for node in GATE_NODES[gate]:
                r.gates.setdefault(node, NodeWork())
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
        kept = count * KEPT_SHARE.get(r.round, KEPT_SHARE[3])
        _add_gates(r, gates, chunks, kept, given_tokens, settings.chunk_size)
        # The next round starts from what this one kept; never from nothing, since an
        # empty round hands the latest non-empty items on.
        count = max(1.0, kept)


def _add_gates(
    r: RoundEstimate,
    gates: tuple[str, ...],
    judge_chunks: int,
    kept: float,
    given_tokens: float,
    chunk_size: int,
) -> None:
    """Add one sample's gate calls of a round that keeps ``kept`` items."""
    if not gates or kept <= 0:
        return
    kept_chunks = math.ceil(kept / chunk_size)
    if "blind" in gates:
        question = _GATE_SIZES["question"] + TOKENS_PER_QUESTION
        r.gates["blind"].add(
            kept_chunks,
            kept_chunks * _GATE_SIZES["blind"] + kept * question,
            kept * (_GATE_SIZES["answer"] + TOKENS_PER_ANSWER),
        )
        compared = _GATE_SIZES["compared"] + TOKENS_PER_QUESTION + 2 * TOKENS_PER_ANSWER
        r.gates["score_blind"].add(
            kept_chunks,
            kept_chunks * _GATE_SIZES["score_blind"] + kept * compared,
            kept * TOKENS_PER_VERDICT,
        )
    if "judge2" in gates:
        # The judge's prompt of each chunk that kept an item, with only its kept candidates.
        r.gates["judge2"].add(
            judge_chunks,
            judge_chunks * _GATE_SIZES["judge2"] + given_tokens + kept * TOKENS_PER_ITEM,
            kept * TOKENS_PER_VERDICT,
        )


def _gate_sizes() -> dict[str, int]:
    """Return the fixed tokens of each gate prompt, and the framing of one listed entry."""
    blind = gateprompts.BLIND_PROMPT.format(questions="[]", count=0, feedback="")
    compare = gateprompts.BLIND_JUDGE_PROMPT.format(items="[]", count=0, feedback="")
    one_question = json.dumps([{"item": 1, "question": ""}], indent=1)
    one_compared = json.dumps(
        [{"item": 1, "question": "", "reference_answer": "", "blind_answer": ""}], indent=1
    )
    one_answer = json.dumps({"answers": [{"item": 1, "answer": ""}]})
    return {
        "blind": estimate_prompt_tokens(blind),
        "score_blind": estimate_prompt_tokens(compare),
        "judge2": estimate_prompt_tokens(render_score_prompt([], []) + gateprompts.SECOND_JUDGE),
        "question": estimate_prompt_tokens(one_question),
        "compared": estimate_prompt_tokens(one_compared),
        "answer": estimate_prompt_tokens(one_answer),
    }


_GATE_SIZES = _gate_sizes()


def _mean_evolve_tokens(state: SampleState, chunk: list, settings: Settings) -> float:
    return sum(
        estimate_prompt_tokens(
            render_evolve_prompt(state.model_copy(update={"operator": op}), chunk),
            images=1,
            detail=settings.image_detail,
        )
        for op in OPERATORS
    ) / len(OPERATORS)
