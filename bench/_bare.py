"""A plain asyncio client making mmevol's calls with the openai SDK directly.

Per sample and round: one evolution call (the prompt rendered by mmevol's own
``render_evolve_prompt``, with the image as a base64 JPEG data URL, ``detail: low``), then
one judge call (``render_score_prompt`` over the rewritten items); the items judged
improved are the next round's input. Items stay plain dicts: the renderers only call
``model_dump`` on them, which a tiny wrapper provides.
It has no checkpoints, no results database, no pydantic models, no constraint checks and
no retry of unusable answers: it is the least work that makes the same calls, and the
yardstick of mmevol's orchestration overhead.

With ``barrier=True`` every sample must finish a round before any sample starts the next,
as in the authors' engine; otherwise each sample runs its three rounds on its own.
Either way at most ``concurrency`` samples are in flight.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import openai
from langchain_openai._compat import httpx  # the httpx flavour this openai SDK uses

from mmevol.nodes.evolve import render_evolve_prompt
from mmevol.nodes.parsing import UnusableAnswer, extract_json
from mmevol.nodes.score import render_score_prompt
from mmevol.nodes.select_operator import pick_operator
from mmevol.run.seed import read_seed
from mmevol.runtime import images


@dataclass
class BareSample:
    """One sample's running state in the plain client."""

    hash_id: str
    image: str
    caption: str
    boxes: list
    items: list[dict]
    image_url: str | None = None
    empty_rounds: int = 0


@dataclass
class BareOutcome:
    """What a plain run did."""

    samples: int = 0
    calls: int = 0
    failed: int = 0
    empty_rounds: int = 0
    errors: list[str] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    """When each sample finished its last round (``time.time()``), barrier-free runs only."""


def load(seed: Path, limit: int | None = None) -> list[BareSample]:
    """Read a seed into plain dicts (validated by the project's seed reader)."""
    out = []
    for row in read_seed(seed):
        if limit is not None and row.index >= limit:
            break
        if row.sample is None:
            continue
        s = row.sample
        out.append(
            BareSample(
                hash_id=s.hash_id,
                image=s.image,
                caption=s.caption,
                boxes=s.boxes,
                items=[i.model_dump() for i in s.seed_items],
            )
        )
    return out


class _Item:
    """A plain dict item that the project's prompt renderers can print (they call model_dump)."""

    __slots__ = ("data",)

    def __init__(self, data: dict):
        self.data = data

    def model_dump(self, **_: object) -> dict:
        return self.data


def _wrap(items: list[dict]) -> list[_Item]:
    return [_Item(i) for i in items]


def _entries(text: str, key: str) -> list[dict]:
    try:
        value, _ = extract_json(text)
    except UnusableAnswer:
        return []
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if key not in value and len(lists) == 1 else [value]
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


class BareClient:
    """The plain client: one AsyncOpenAI with mmevol's connection limits and settings."""

    def __init__(
        self,
        base_url: str,
        images_root: Path,
        *,
        concurrency: int,
        seed: int = 0,
        model: str = "gpt-4o-mini",
        max_retries: int = 2,
        timeout: float = 120.0,
    ):
        """Build the SDK client (same pool size, timeout and retries as mmevol's)."""
        connections = max(100, concurrency * 4)
        self.http = openai.DefaultAioHttpClient(
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=timeout,
        )
        self.client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="bench",
            max_retries=max_retries,
            timeout=timeout,
            http_client=self.http,
        )
        self.images_root = images_root
        self.model = model
        self.seed = seed
        self.outcome = BareOutcome()

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.close()

    async def _ask(self, content: str | list[dict]) -> str:
        reply = await self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": content}],
            temperature=1.0,
            max_tokens=4096,
        )
        self.outcome.calls += 1
        return reply.choices[0].message.content or ""

    async def round(self, s: BareSample, rnd: int) -> None:
        """Run one round of one sample: evolve with the image, judge, keep the improved."""
        if s.image_url is None:
            # Encoded once per sample, as a hand-written loop would (mmevol re-encodes per round).
            s.image_url = images.data_url(self.images_root, s.image)
        view = SimpleNamespace(
            operator=pick_operator(self.seed, s.hash_id, rnd, 1),
            caption=s.caption,
            boxes=s.boxes,
            problem=None,
        )
        prompt = render_evolve_prompt(view, _wrap(s.items))
        text = await self._ask(
            [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": s.image_url, "detail": "low"}},
            ]
        )
        candidates = [c for c in _entries(text, "question") if "question" in c]
        if not candidates:
            s.empty_rounds += 1
            return
        judge = render_score_prompt(_wrap(s.items), _wrap(candidates))
        verdicts = _entries(await self._ask(judge), "improved")
        kept = [
            c
            for c, v in zip(candidates, verdicts, strict=False)
            if str(v.get("improved", "")).strip().lower().startswith("y")
        ]
        if kept:
            s.items = kept
        else:
            s.empty_rounds += 1

    async def sample(self, s: BareSample, rounds: int) -> None:
        """Run every round of one sample."""
        for rnd in range(1, rounds + 1):
            await self.round(s, rnd)
        s.image_url = None  # let the bytes go once the sample is finished
        self.outcome.finished.append(time.time())

    async def _guarded(self, coro) -> None:
        try:
            await coro
        except openai.APIError as err:
            self.outcome.failed += 1
            self.outcome.errors.append(f"{type(err).__name__}: {err}")


async def run_bare(
    base_url: str,
    seed: Path,
    images_root: Path,
    *,
    concurrency: int,
    rounds: int = 3,
    barrier: bool = False,
) -> BareOutcome:
    """Run a seed through the plain client; see the module docstring."""
    bare = BareClient(base_url, images_root, concurrency=concurrency)
    samples = load(seed)
    slots = asyncio.Semaphore(concurrency)
    try:
        if barrier:
            for rnd in range(1, rounds + 1):
                await _spread(bare, slots, [bare.round(s, rnd) for s in samples])
            for s in samples:
                s.image_url = None
        else:
            await _spread(bare, slots, [bare.sample(s, rounds) for s in samples])
    finally:
        await bare.close()
    bare.outcome.samples = len(samples) - bare.outcome.failed
    bare.outcome.empty_rounds = sum(s.empty_rounds for s in samples)
    return bare.outcome


async def _spread(bare: BareClient, slots: asyncio.Semaphore, coros: list) -> None:
    """Run coroutines at most ``slots`` at a time, starting each as a slot frees up."""
    running: set[asyncio.Task] = set()
    for coro in coros:
        await slots.acquire()
        task = asyncio.create_task(bare._guarded(coro))
        running.add(task)
        task.add_done_callback(lambda t: (running.discard(t), slots.release()))
    if running:
        await asyncio.gather(*running)
