"""Respect the endpoint: request and token rate limits, adaptive concurrency, a failure breaker.

The openai SDK already retries 429 and 5xx answers, honouring ``Retry-After``. What it
cannot do is slow the *other* calls down: the ``Governor`` sees every HTTP answer
(through an httpx response hook, retries included), halves the number of calls allowed
in flight when the endpoint pushes back and lets it grow again, one call at a time, as
answers come back fine. It also watches the final outcome of calls, so that a run whose
endpoint keeps failing stops instead of failing thousands of samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# Low-detail images cost a flat 85 tokens on OpenAI's price list.
LOW_DETAIL_IMAGE_TOKENS = 85
# A high-detail 512 px image is one 512 px tile: 85 + 170 tokens.
HIGH_DETAIL_IMAGE_TOKENS = 255


def estimate_tokens(text: str) -> int:
    """Estimate the tokens of a text: about 4 characters a token (the one rule for this)."""
    return math.ceil(len(text) / 4)


def estimate_prompt_tokens(text: str, images: int = 0, detail: str = "low") -> int:
    """Estimate the prompt tokens of a call before it is made: text and images."""
    per_image = LOW_DETAIL_IMAGE_TOKENS if detail == "low" else HIGH_DETAIL_IMAGE_TOKENS
    return estimate_tokens(text) + images * per_image


class TokenBucket:
    """Allow ``per_minute`` units a minute, refilled continuously; wait when empty."""

    def __init__(
        self,
        per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        """Start full, so a run does not crawl through its first minute."""
        self.rate = per_minute / 60.0
        self.capacity = per_minute
        self.level = per_minute
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self.lock = asyncio.Lock()

    async def take(self, amount: float) -> None:
        """Wait until ``amount`` units are available and take them."""
        # A single call larger than the whole minute's budget could never pass; let it
        # through on an empty bucket rather than hang.
        amount = min(amount, self.capacity)
        async with self.lock:
            while True:
                now = self.clock()
                self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
                self.updated = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await self.sleep((amount - self.level) / self.rate)


@dataclass
class Outcome:
    """The final result of one call, after the SDK's retries."""

    ok: bool
    error: str | None = None


class Governor:
    """Adaptive limit on calls in flight, plus a breaker on sustained failures."""

    def __init__(
        self,
        ceiling: int,
        window: int = 40,
        trip_share: float = 0.5,
        trip_min: int = 10,
        cooldown: float = 1.0,
    ):
        """Allow up to ``ceiling`` calls in flight; trip when failures dominate the window."""
        self.ceiling = max(1, ceiling)
        self.limit = float(self.ceiling)
        self.in_flight = 0
        self.waiting = 0
        self.cooldown = cooldown
        self._last_cut = 0.0
        self._changed = asyncio.Condition()
        self.outcomes: deque[Outcome] = deque(maxlen=window)
        self.trip_share = trip_share
        self.trip_min = trip_min
        self.pushbacks = 0
        self.tripped: str | None = None
        """Why the breaker tripped; None while it holds."""

    async def acquire(self) -> None:
        """Wait for a free place under the current limit."""
        async with self._changed:
            self.waiting += 1
            try:
                await self._changed.wait_for(lambda: self.in_flight < max(1, int(self.limit)))
            finally:
                self.waiting -= 1
            self.in_flight += 1

    async def release(self) -> None:
        """Give a place back."""
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def on_status(self, status: int) -> None:
        """Adjust the limit from one HTTP answer (called for retries too)."""
        if status == 429 or status >= 500:
            self.pushbacks += 1
            now = time.monotonic()
            # One cut per cooldown: a burst of 429s from one overload is one signal.
            if now - self._last_cut >= self.cooldown:
                self._last_cut = now
                self.limit = max(1.0, self.limit / 2)
        elif status < 400:
            before = int(self.limit)
            self.limit = min(float(self.ceiling), self.limit + 1.0 / max(self.limit, 1.0))
            # Only a new whole place can let a waiter in, and only if someone waits.
            if self.waiting and int(self.limit) > before:
                self._wake()

    def _wake(self) -> None:
        # Waiters re-check the limit when a place is released; growth alone does not
        # release one, so nudge them without blocking the caller.
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        try:
            asyncio.get_running_loop().create_task(notify())
        except RuntimeError:
            pass

    def on_outcome(self, outcome: Outcome) -> str | None:
        """Record a call's final outcome; return the reason when the breaker trips now."""
        self.outcomes.append(outcome)
        failures = [o for o in self.outcomes if not o.ok]
        if (
            self.tripped is None
            and len(failures) >= self.trip_min
            and len(failures) >= self.trip_share * len(self.outcomes)
        ):
            self.tripped = (
                f"{len(failures)} of the last {len(self.outcomes)} model calls failed "
                f"(last error: {failures[-1].error})"
            )
            return self.tripped
        return None


class Tally:
    """Model calls started and dollars spent by a run, for ``--max-calls`` and ``--max-cost``.

    ``calls_before`` and ``cost_before`` are what earlier invocations of the run recorded;
    the counts are this invocation's. One process keeps plain numbers. With worker
    processes the parent builds the tally on a multiprocessing context and hands it to
    every worker, so that the budgets count the calls of all of them.
    """

    def __init__(
        self, context: object | None = None, calls_before: int = 0, cost_before: float = 0.0
    ):
        """Keep the counts in this process, or in shared memory of ``context``."""
        self.calls_before = calls_before
        self.cost_before = cost_before
        self._shared = context is not None
        if context is None:
            self._calls: object = _Cell(0)
            self._cost: object = _Cell(0.0)
        else:
            self._calls = context.Value("q", 0)
            self._cost = context.Value("d", 0.0)

    def reserve_call(self, limit: int | None) -> bool:
        """Count one more call, unless the run's calls have reached ``limit``."""
        with self._lock(self._calls):
            if limit is not None and self.calls_before + self._calls.value >= limit:
                return False
            self._calls.value += 1
            return True

    def add_cost(self, dollars: float) -> float:
        """Add a call's cost and return the dollars of the whole run so far."""
        with self._lock(self._cost):
            self._cost.value += dollars
            return self.cost_before + self._cost.value

    def _lock(self, cell: object) -> object:
        return cell.get_lock() if self._shared else contextlib.nullcontext()


class _Cell:
    """A plain value with the ``.value`` attribute of ``multiprocessing.Value``."""

    __slots__ = ("value",)

    def __init__(self, value: float):
        self.value = value
