"""Show a run's progress: a rich bar on a terminal, plain lines in logs and CI."""

from __future__ import annotations

import sys
import time
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

MESSAGES = {
    "stopping": "no new sample or call starts; answers on their way are recorded. "
    "Press Ctrl-C again to quit at once (still resumable).",
    "aborting": "Quitting now; everything recorded so far is kept.",
}


class RunProgress:
    """A runner listener that counts samples by outcome and shows them."""

    def __init__(self, console: Console | None = None, every: float = 10.0):
        """Pick the display: live bar when stderr is a terminal, else a line every ``every`` s."""
        self.console = console or Console(stderr=True)
        self.counts: Counter[str] = Counter()
        self.every = every
        self._last = 0.0
        self._bar: Progress | None = None
        self._task = None
        self.live = self.console.is_terminal and sys.stderr.isatty()

    def __enter__(self) -> RunProgress:
        """Start the live display when there is one."""
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]evolving"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task("run", total=None, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the live display, or print the last line."""
        if self._bar is not None:
            self._bar.stop()
        elif self.counts:
            self._line()

    def __call__(self, event: str, hash_id: str) -> None:
        """Take one runner event."""
        if event == "total":
            if self._bar is not None and hash_id:
                self._bar.update(self._task, total=int(hash_id))
            return
        if event == "notice":
            self.console.print(f"note: {hash_id}", highlight=False, markup=False)
            return
        if event == "stopping":
            self.console.print(
                f"Stopping ({hash_id}): {MESSAGES['stopping']}", highlight=False, markup=False
            )
            return
        if event in MESSAGES:
            self.console.print(MESSAGES[event], highlight=False)
            return
        self.counts[event] += 1
        if self._bar is not None:
            finished = sum(self.counts[k] for k in ("done", "failed", "rejected", "skipped"))
            self._bar.update(self._task, completed=finished, detail=self._detail())
        elif time.monotonic() - self._last >= self.every:
            self._line()

    def _detail(self) -> str:
        c = self.counts
        in_flight = c["started"] - c["done"] - c["failed"] - c["interrupted"]
        return (
            f"done {c['done']}  failed {c['failed'] + c['rejected']}  "
            f"skipped {c['skipped']}  in flight {in_flight}"
        )

    def _line(self) -> None:
        self._last = time.monotonic()
        self.console.print(self._detail(), highlight=False)
