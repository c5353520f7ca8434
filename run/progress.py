"""Show a run's progress: a live display on a terminal, plain lines in logs and CI."""

from __future__ import annotations

import sys
import time
from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.text import Text

from mmevol.run.events import Aborting, Event, Notice, SampleEvent, Stopping, Total
from mmevol.runtime.llm import Usage

STOPPING = (
    "no new sample or call starts; answers on their way are recorded. "
    "Press Ctrl-C again to quit at once (still resumable)."
)
ABORTING = "Quitting now; everything recorded so far is kept."


class RunProgress:
    """A runner listener: counts samples by outcome and shows them with the run's usage.

    On a terminal it redraws two lines a few times a second; elsewhere (logs, CI) it
    prints one plain line every ``every`` seconds and a last one at the end.
    """

    def __init__(self, console: Console | None = None, every: float = 30.0):
        """Pick the display from whether stderr is a terminal."""
        self.console = console or Console(stderr=True)
        self.counts: Counter[str] = Counter()
        self.parked: set[str] = set()
        """Batch mode: the samples waiting for batch answers."""
        self.every = every
        self.total: int | None = None
        self.usage: Usage | None = None
        self.started = time.monotonic()
        self._last = time.monotonic()
        self._live: Live | None = None
        self.live = self.console.is_terminal and sys.stderr.isatty()

    def attach(self, usage: Usage) -> None:
        """Read calls, tokens, money and the rounds of samples in flight from the client."""
        self.usage = usage

    def __enter__(self) -> RunProgress:
        """Start the live display when there is one."""
        self.started = time.monotonic()
        if self.live:
            self._live = Live(
                Text(""), console=self.console, refresh_per_second=4, get_renderable=self.render
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the live display, or print the last line."""
        if self._live is not None:
            self._live.stop()
        elif self.counts:
            self._line()

    def __call__(self, event: Event) -> None:
        """Take one runner event."""
        match event:
            case Total(rows=rows):
                self.total = rows
            case Notice(text=text):
                self.console.print(f"note: {text}", highlight=False, markup=False)
            case Stopping(reason=reason):
                self.console.print(
                    f"Stopping ({reason.message}): {STOPPING}", highlight=False, markup=False
                )
            case Aborting():
                self.console.print(ABORTING, highlight=False)
            case SampleEvent(kind=kind, hash_id=hash_id):
                self.counts[kind] += 1
                if kind == "parked":
                    self.parked.add(hash_id)
                elif kind == "started":
                    self.parked.discard(hash_id)
                if self._live is None and time.monotonic() - self._last >= self.every:
                    self._line()

    def summary(self) -> str:
        """Return the progress as one line."""
        c = self.counts
        finished = c["done"] + c["failed"] + c["rejected"] + c["skipped"]
        in_flight = c["started"] - c["done"] - c["failed"] - c["interrupted"] - c["parked"]
        elapsed = max(time.monotonic() - self.started, 1e-9)
        parts = [
            f"samples {finished}" + (f"/{self.total}" if self.total else ""),
            f"done {c['done']}",
            f"failed {c['failed'] + c['rejected']}",
            *([f"skipped {c['skipped']}"] if c["skipped"] else []),
            f"in flight {in_flight}" + self._by_round(),
        ]
        if self.parked:
            parts.append(f"parked {len(self.parked)}")
        if self.usage is not None:
            u = self.usage
            parts.append(f"calls {u.calls} ({u.calls / elapsed:.1f}/s)")
            parts.append(f"tokens {u.input_tokens + u.output_tokens:,}")
            money = f"${u.total_cost:.2f}"
            projected = self._projected_cost()
            if projected is not None:
                money += f" (projected ${projected:.2f})"
            parts.append(money)
        eta = self._eta(elapsed)
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        return "  ".join(parts)

    def render(self) -> Text:
        """Return the live display."""
        return Text(self.summary())

    def _by_round(self) -> str:
        if self.usage is None or not self.usage.rounds:
            return ""
        per = Counter(self.usage.rounds.values())
        return " (" + ", ".join(f"r{r} {n}" for r, n in sorted(per.items())) + ")"

    def _remaining(self) -> int | None:
        if not self.total:
            return None
        c = self.counts
        return max(self.total - (c["done"] + c["failed"] + c["rejected"] + c["skipped"]), 0)

    def _eta(self, elapsed: float) -> float | None:
        remaining, done = self._remaining(), self.counts["done"] + self.counts["failed"]
        if remaining is None or done == 0:
            return None
        return remaining * elapsed / done

    def _projected_cost(self) -> float | None:
        remaining, done = self._remaining(), self.counts["done"]
        if remaining is None or done == 0 or self.usage is None:
            return None
        return self.usage.total_cost + self.usage.cost / done * remaining

    def _line(self) -> None:
        self._last = time.monotonic()
        self.console.print(self.summary(), highlight=False, markup=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
