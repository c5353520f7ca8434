"""How a run stops: one mechanism for a single process, each worker and the workers' parent.

A stop has a reason (``StopReason``); the first one wins and later ones change nothing.
Stopping is clean: whoever registered with ``on_stop`` makes sure no new sample or model
call starts, and answers already on their way are received and recorded. A signal while
the run is already stopping (a second Ctrl-C) aborts instead: whoever registered with
``on_abort`` quits at once; what was recorded and checkpointed so far is kept, so the run
still resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from mmevol.run.events import Aborting, Listener, Stopping
from mmevol.runtime.stops import SIGNAL, StopReason

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """The stop of one run in one process; see the module docstring."""

    def __init__(self, notify: Listener):
        """Tell ``notify`` when the run stops and when it aborts."""
        self.notify = notify
        self.reason: StopReason | None = None
        self.aborting = False
        self._on_stop: list[Callable[[StopReason], None]] = []
        self._on_abort: list[Callable[[], None]] = []

    @property
    def stopping(self) -> bool:
        """Return True once the run stops (cleanly or not)."""
        return self.reason is not None

    def on_stop(self, hook: Callable[[StopReason], None]) -> None:
        """Call ``hook`` with the reason when the run stops (now, if it already has)."""
        self._on_stop.append(hook)
        if self.reason is not None:
            hook(self.reason)

    def on_abort(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` each time the run is told to quit at once."""
        self._on_abort.append(hook)

    def stop(self, reason: StopReason) -> None:
        """Stop cleanly for ``reason``, unless the run is stopping already."""
        if self.reason is not None:
            return
        self.reason = reason
        self.notify(Stopping(reason))
        for hook in list(self._on_stop):
            hook(reason)

    def signal(self) -> None:
        """Take Ctrl-C or SIGTERM: stop cleanly the first time, abort after that."""
        if self.reason is None:
            self.stop(SIGNAL)
        else:
            self.abort()

    def abort(self) -> None:
        """Quit at once: every ``on_abort`` hook runs."""
        self.aborted()
        for hook in list(self._on_abort):
            hook()

    def aborted(self) -> None:
        """Note that the run quits at once (here or in another process); say so once."""
        if not self.aborting:
            self.aborting = True
            self.notify(Aborting())

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM with ``signal()`` inside the block.

        On the running event loop when there is one (the handler then runs between
        callbacks, where it may cancel tasks), otherwise with Python's own handlers.
        Signals can be handled only in the main thread; elsewhere this does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self.signal)
            try:
                yield
            finally:
                for sig in SIGNALS:
                    loop.remove_signal_handler(sig)
            return
        previous = {sig: signal.signal(sig, lambda signum, frame: self.signal()) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
