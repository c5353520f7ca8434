"""The endpoints of a run: which one takes the next call, and resting the ones that fail.

A run may name several OpenAI-compatible endpoints serving the same models (``--base-url``
given more than once). Each new call goes to the usable endpoint with the fewest calls in
flight (ties: the one with fewer calls so far). A call that fails on an endpoint for the
endpoint's fault *rests* that endpoint: no new call goes there for ``FIRST_REST`` seconds,
then one real call tries it; if that call fails too the rest doubles (up to
``LONGEST_REST``), and once a call is answered there the endpoint is usable again. The
pool says so in a notice each time it rests an endpoint and when one comes back.

When every endpoint rests, a call still goes somewhere (the endpoint whose rest ends
first): the run behaves as with one failing endpoint, whose failures interrupt samples
and trip the failure breaker. A run with one endpoint never rests it.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FIRST_REST = 15.0
"""Seconds an endpoint rests after it failed a call."""
LONGEST_REST = 300.0
"""The longest rest: a rest doubles each time the call trying the endpoint again fails."""

# Endpoints that preflight found unusable in this process: URL -> (monotonic time, reason).
_FOUND_UNUSABLE: dict[str, tuple[float, str]] = {}


def display_url(url: str) -> str:
    """Return an endpoint's URL as recorded and shown: without credentials, query or fragment."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def note_unusable(url: str, reason: str, clock: Callable[[], float] = time.monotonic) -> None:
    """Remember that an endpoint failed its check, so that pools built soon after rest it."""
    _FOUND_UNUSABLE[url] = (clock(), reason)


@dataclass(eq=False)
class Endpoint:
    """One endpoint of the pool and what the pool knows about it."""

    url: str
    """The URL calls are sent to (as given)."""
    name: str
    """The URL as recorded and shown (``display_url``)."""
    in_flight: int = 0
    calls: int = 0
    resting_until: float | None = None
    """When its rest ends (monotonic seconds); None while it is usable."""
    rest: float = 0.0
    """The length of its latest rest (0 once a call is answered there)."""
    trying: bool = False
    """A call is trying it again after its rest."""


@dataclass(eq=False)
class Slot:
    """One call's use of an endpoint, handed back with ``EndpointPool.release``."""

    endpoint: Endpoint
    trial: bool
    """The call tries the endpoint after its rest (its failure makes the next rest longer)."""
    resting: bool
    """The endpoint rested when the call took it (a trial, or every endpoint rests)."""


class EndpointPool:
    """The endpoints of one model client: pick one per call, rest the failing ones.

    Example:
        pool = EndpointPool(settings.base_urls, on_notice=print)
        slot = pool.take()
        ...  # call slot.endpoint.url
        pool.release(slot, fault=None)  # or fault="APIConnectionError: ..."
    """

    def __init__(
        self,
        urls: Iterable[str],
        on_notice: Callable[[str], None] = lambda text: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """Start with every endpoint usable, but those preflight just found unusable."""
        self.endpoints = [Endpoint(url, display_url(url)) for url in urls]
        if not self.endpoints:
            raise ValueError("no endpoint given")
        self.on_notice = on_notice
        self.clock = clock
        now = clock()
        for endpoint in self.endpoints:
            found = _FOUND_UNUSABLE.get(endpoint.url)
            if self.several and found and now - found[0] < FIRST_REST:
                endpoint.rest = FIRST_REST
                endpoint.resting_until = found[0] + FIRST_REST

    @property
    def several(self) -> bool:
        """Whether there is more than one endpoint (else nothing ever rests)."""
        return len(self.endpoints) > 1

    def _usable(self, endpoint: Endpoint, now: float) -> bool:
        if endpoint.resting_until is None:
            return True
        return now >= endpoint.resting_until and not endpoint.trying

    def usable(self, exclude: Iterable[Endpoint] = ()) -> list[Endpoint]:
        """Return the endpoints a new call may go to now, leaving out ``exclude``."""
        now, skip = self.clock(), set(map(id, exclude))
        return [e for e in self.endpoints if id(e) not in skip and self._usable(e, now)]

    def take(self, exclude: Iterable[Endpoint] = ()) -> Slot | None:
        """Choose the endpoint of a new call, leaving out ``exclude`` (None: all left out).

        The usable endpoint with the fewest calls in flight; when every endpoint left
        rests, the one whose rest ends first.
        """
        exclude = list(exclude)
        candidates = self.usable(exclude)
        if candidates:
            endpoint = min(candidates, key=lambda e: (e.in_flight, e.calls))
        else:
            skip = set(map(id, exclude))
            left = [e for e in self.endpoints if id(e) not in skip]
            if not left:
                return None
            endpoint = min(left, key=lambda e: (e.resting_until or 0.0, e.in_flight))
        resting = endpoint.resting_until is not None
        trial = resting and bool(candidates)
        endpoint.trying = endpoint.trying or trial
        endpoint.in_flight += 1
        endpoint.calls += 1
        return Slot(endpoint, trial, resting)

    def release(self, slot: Slot, fault: str | None = None, done: bool = True) -> None:
        """Hand a call's endpoint back: answered (``fault`` None) or failed for ``fault``.

        ``done`` False: the call ended without a verdict on the endpoint (the run stopped
        while it waited); the endpoint stays as it was.
        """
        endpoint = slot.endpoint
        endpoint.in_flight -= 1
        if slot.trial:
            endpoint.trying = False
        if not done or not self.several:
            return
        if fault is None:
            if endpoint.resting_until is not None and slot.resting:
                endpoint.resting_until, endpoint.rest = None, 0.0
                self.on_notice(f"endpoint {endpoint.name} answers again: calls go to it again")
            elif endpoint.resting_until is None:
                endpoint.rest = 0.0
            return
        # A call that began before the endpoint was rested says nothing new about it.
        if endpoint.resting_until is None or slot.trial:
            self._rest(endpoint, fault)

    def _rest(self, endpoint: Endpoint, fault: str) -> None:
        rest = min(endpoint.rest * 2, LONGEST_REST) if endpoint.rest else FIRST_REST
        endpoint.rest = rest
        endpoint.resting_until = self.clock() + rest
        others = len(self.usable([endpoint]))
        where = (
            f"the other {others} endpoint(s) take the calls"
            if others
            else "no other endpoint is usable"
        )
        self.on_notice(
            f"endpoint {endpoint.name} failed a call ({_short(fault)}): resting it "
            f"{rest:g} s, {where}"
        )


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
