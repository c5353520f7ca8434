"""Serve a simulated OpenAI chat-completions endpoint on loopback, with scripted faults."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from mmevol.runtime.limits import estimate_prompt_tokens, estimate_tokens
from mmevol.sim.answers import NOT_COMPLETIONS, build_reply, classify, make_rng, read_messages
from mmevol.sim.batches import FilesAndBatches
from mmevol.sim.errors import error_body, error_response
from mmevol.sim.options import SimOptions

SCRIPT_KINDS = ("status", "content", "hang", "drop", *NOT_COMPLETIONS)
"""One-shot answers of ``enqueue``; "hang" without ``seconds`` also serves as a standing
behaviour (``set_behaviour``), which never answers until the behaviour is cleared."""
FAULTS = (
    "error", "rate_limit", "garbage", "truncate", "surrogate", "verdict_mismatch",
    "unauthorized", "bad_request", "scripted", "behaviour", "batch_failed",
)  # fmt: skip
BATCH_OPTIONS = (
    "batch_turnaround", "batch_failed_lines", "batch_expire_after",
    "batch_max_requests", "batch_max_bytes",
)  # fmt: skip
"""The ``SimOptions`` fields that ``set_batch`` (and ``POST /sim/batch``) change at run time."""
_error = error_response


def body_digest(raw: bytes, body: Any) -> str:
    """Name a request body: the same JSON body gets the same digest however it is spelled.

    So a batch line and an online request of the same body are one body to the server.
    """
    if isinstance(body, dict):
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass
class Outcome:
    """One chat answer computed from a body: what an online request or a batch line gets."""

    status: int
    payload: dict[str, Any]
    headers: dict[str, str] | None = None
    delay: float = 0.0
    """Seconds an online request waits before the answer is sent (batch lines do not)."""


class PortUnavailable(ValueError):
    """The port to serve on cannot be bound (in use, or privileged); the message says so."""


class SimServer:
    """An aiohttp server in a background thread that answers like an OpenAI endpoint.

    Example:
        with SimServer(SimOptions(seed=1)) as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="x")
    """

    def __init__(
        self, options: SimOptions | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        """Prepare the server; ``start`` binds and serves."""
        self.options = options or SimOptions()
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ids = 0
        self._behaviour: dict[str, Any] | None = None
        self._cleared: asyncio.Event | None = None
        self._in_flight = 0
        self._clock_offset = 0.0
        self._desk = FilesAndBatches(self)
        self.reset()

    @property
    def base_url(self) -> str:
        """Return the URL to give an OpenAI client, ending in /v1."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> SimServer:
        """Bind the port and serve from a background thread; return once listening."""
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as err:
            sock.close()
            raise PortUnavailable(
                f"cannot serve on {self.host}:{self.port} ({err.strerror or err}): the port is"
                " in use or not yours to take; choose another --port (0 picks a free one)"
            ) from None
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._desk.open()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._listen(sock))
            except BaseException as exc:  # handed to start() so the caller sees it
                failure.append(exc)
                return
            finally:
                ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="sim-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            self._desk.close()
            raise failure[0]
        return self

    async def _listen(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/sim/script", self._script)
        app.router.add_post("/sim/behaviour", self._set_behaviour)
        app.router.add_get("/sim/stats", self._stats)
        app.router.add_post("/sim/reset", self._reset)
        app.router.add_post("/sim/batch", self._set_batch)
        app.router.add_post("/sim/advance", self._advance)
        app.router.add_post("/sim/forget-batches", self._forget_batches)
        self._desk.add_routes(app)
        # No access log: benchmarks push thousands of requests a second through here.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        self._cleared = asyncio.Event()
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=2048).start()

    def stop(self) -> None:
        """Stop serving and join the thread; calls still in flight are cut off."""
        if self._thread is None or self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._desk.shutdown(), self._loop).result(60)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._thread = self._loop = self._runner = None
        self._desk.close()

    @property
    def files_dir(self) -> Path | None:
        """The temporary folder holding the uploaded and produced files (None when stopped)."""
        return self._desk.folder

    def clock(self) -> float:
        """The server's time for files and batches: the wall clock moved on by ``advance``."""
        return time.time() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the batches' clock forward, as if ``seconds`` had passed (turnaround, expiry)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._clock_offset += seconds

    def set_batch(self, **options: Any) -> None:
        """Change batch options at run time; they apply to running batches from now on.

        Args:
            **options: Any of ``BATCH_OPTIONS``: batch_turnaround, batch_failed_lines,
                batch_expire_after, batch_max_requests, batch_max_bytes.
        """
        unknown = set(options) - set(BATCH_OPTIONS)
        if unknown:
            raise ValueError(f"unknown batch options {sorted(unknown)}; use {BATCH_OPTIONS}")
        self.options = dataclasses.replace(self.options, **options)

    def forget_batches(self) -> int:
        """Lose every batch, as a restart without its batch table would; return how many.

        Retrieving, cancelling or listing them finds nothing from then on (404); the files
        stay. Also ``POST /sim/forget-batches``.
        """
        if self._loop is None:
            return 0
        forgetting = self._desk.forget_batches()
        return asyncio.run_coroutine_threadsafe(forgetting, self._loop).result(30)

    def count_batch_api(self, name: str) -> None:
        """Count an upload ("files_created") or a batch ("batches_created")."""
        with self._lock:
            self._batch_api[name] += 1

    def __enter__(self) -> SimServer:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()

    def enqueue(self, kind: str, **kw: Any) -> None:
        """Answer the next request (any request, first in first out) from a script.

        Args:
            kind: "status" (``status``, optional ``body`` and ``headers``), "content"
                (``content``, optional ``finish_reason``), "hang" (wait ``seconds``,
                then answer normally), "drop" (close the connection unanswered), or
                "html", "no_choices", "no_message" (200, but not a chat completion).
            **kw: The script's fields.
        """
        if kind not in SCRIPT_KINDS:
            raise ValueError(f"unknown script kind {kind!r}; use one of {SCRIPT_KINDS}")
        with self._lock:
            self._queue.append({"kind": kind, **kw})

    def set_behaviour(self, kind: str | None, *, models: bool = False, **kw: Any) -> None:
        """Answer every chat request the same way from now on, until called with None.

        This is an endpoint that goes away for a while: ``set_behaviour("status",
        status=503)`` is an outage, ``"drop"`` closes every connection unanswered,
        ``"hang"`` accepts requests and never answers (until cleared, or for ``seconds``),
        ``"html"``, ``"no_choices"`` and ``"no_message"`` answer 200 with something that
        is not a chat completion. Scripted answers (``enqueue``) still come first.

        Args:
            kind: One of ``SCRIPT_KINDS``, or None to answer normally again.
            models: Answer ``/v1/models`` that way too (a proxy in front of everything).
            **kw: The kind's fields, as for ``enqueue``.
        """
        if kind is not None and kind not in SCRIPT_KINDS:
            raise ValueError(f"unknown behaviour {kind!r}; use one of {SCRIPT_KINDS}")
        with self._lock:
            self._behaviour = None if kind is None else {"kind": kind, "models": models, **kw}
        if kind is None and self._loop is not None and self._cleared is not None:
            # Release the requests held by "hang".
            self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        assert self._cleared is not None
        self._cleared.set()
        self._cleared = asyncio.Event()

    def stats(self) -> dict[str, Any]:
        """Return a copy of the counters: requests, by_kind, faults and bodies.

        Also ``answered``, the chat requests answered 200 (whatever the content: these
        are the calls a client pays for, even when it is gone before the answer comes),
        and ``in_flight``, the chat requests being served right now (not reset).

        Batch lines count as chat requests (``requests``, ``by_kind``, ``bodies``, and
        ``answered`` when answered 200), and also in ``batch_lines_answered`` (200) or
        ``batch_lines_failed`` (any other status; lines never run are in neither).
        ``files_created`` counts uploads (not the output files), ``batches_created``
        the batches created, valid or not.
        """
        with self._lock:
            return {
                "requests": self._requests,
                "answered": self._answered,
                "in_flight": self._in_flight,
                "by_kind": dict(self._by_kind),
                "faults": dict(self._faults),
                "bodies": dict(self._bodies),
                "batch_lines_answered": self._batch_lines_answered,
                "batch_lines_failed": self._batch_lines_failed,
                **self._batch_api,
            }

    def reset(self) -> None:
        """Clear the counters, the script queue and the memory of bodies seen."""
        with self._lock:
            self._requests = 0
            self._answered = 0
            self._batch_lines_answered = 0
            self._batch_lines_failed = 0
            self._batch_api = dict.fromkeys(("files_created", "batches_created"), 0)
            self._by_kind = dict.fromkeys(("evolve", "score", "other"), 0)
            self._faults = dict.fromkeys(FAULTS, 0)
            self._bodies: dict[str, int] = {}
            self._queue.clear()
            # The prompt text of the latest requests, for tests that check what was sent.
            self.recent: collections.deque[str] = collections.deque(maxlen=200)

    def _count(self, fault: str) -> None:
        with self._lock:
            self._faults[fault] += 1

    async def _chat(self, request: web.Request) -> web.Response:
        with self._lock:
            self._in_flight += 1
        status = 0
        try:
            response = await self._serve_chat(request)
            status = response.status
            return response
        finally:
            with self._lock:
                self._in_flight -= 1
                # A 200 is paid for even when the client is gone before it arrives.
                self._answered += status == 200

    async def _serve_chat(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        digest = body_digest(raw, body)
        body = body if isinstance(body, dict) else {}
        text, images = read_messages(body)
        with self._lock:
            seen = self._note(digest, text)
            script = self._queue.popleft() if self._queue else None
            standing = self._behaviour
        if script is not None:
            if script["kind"] == "hang":
                await asyncio.sleep(float(script.get("seconds", 1.0)))
            else:
                self._count("scripted")
                return self._scripted(request, script, body, estimate_prompt_tokens(text, images))
        elif standing is not None:
            self._count("behaviour")
            if standing["kind"] != "hang":
                prompt = estimate_prompt_tokens(text, images)
                return self._scripted(request, standing, body, prompt)
            await self._hang(standing)
        opts = self.options
        if opts.api_key and request.headers.get("Authorization") != f"Bearer {opts.api_key}":
            self._count("unauthorized")
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        outcome = self._answer(body, digest, seen, text, images)
        if outcome.delay:
            await asyncio.sleep(outcome.delay)
        return web.json_response(outcome.payload, status=outcome.status, headers=outcome.headers)

    def _note(self, digest: str, text: str) -> int:
        """Count a chat request (under the lock); return how often its body was seen before."""
        self._requests += 1
        kind = classify(text)
        self._by_kind[kind] = self._by_kind.get(kind, 0) + 1
        seen = self._bodies.get(digest, 0)
        self._bodies[digest] = seen + 1
        self.recent.append(text)
        return seen

    def answer_line(self, body: dict[str, Any], fail_rate: float = 0.0) -> Outcome:
        """Answer one batch line's body as ``POST /v1/chat/completions`` answers it.

        The line counts as a request like an online one (``requests``, ``bodies``, and
        ``answered`` when it is answered 200). ``fail_rate`` is the share of lines that fail
        with a 500 instead, drawn from the seed, the body and how often it was seen before,
        so a retried line draws again.
        """
        digest = body_digest(b"", body)
        text, images = read_messages(body)
        with self._lock:
            seen = self._note(digest, text)
        if fail_rate and make_rng(self.options.seed, "batch", digest, seen).random() < fail_rate:
            self._count("batch_failed")
            message = "The server had an error while processing this request of the batch."
            outcome = Outcome(500, error_body(500, message))
        else:
            outcome = self._answer(body, digest, seen, text, images)
        with self._lock:
            self._answered += outcome.status == 200
            self._batch_lines_answered += outcome.status == 200
            self._batch_lines_failed += outcome.status != 200
        return outcome

    def _answer(
        self, body: dict[str, Any], digest: str, seen: int, text: str, images: int
    ) -> Outcome:
        """Compute the answer to a chat body: the one code path of online and batch answers."""
        opts = self.options
        problem = self._problem(body)
        if problem:
            self._count("bad_request")
            return Outcome(400, error_body(400, problem[1], problem[0], param=problem[0]))
        # A retry repeats the body; counting earlier sightings lets it draw fresh faults
        # while staying reproducible.
        rng = make_rng(opts.seed, digest, seen)
        delay = self._latency(rng)
        draw = rng.random()
        if draw < opts.rate_limit_rate:
            self._count("rate_limit")
            message = "Rate limit reached; try again shortly."
            payload = error_body(429, message, "rate_limit_exceeded")
            return Outcome(429, payload, headers=self._retry_headers())
        if draw < opts.rate_limit_rate + opts.error_rate:
            self._count("error")
            message = "The server had an error while processing your request."
            return Outcome(500, error_body(500, message), delay=delay)
        reply = build_reply(text, body, opts, rng)
        if reply.fault:
            self._count(reply.fault)
        prompt = estimate_prompt_tokens(text, images)
        payload = self._completion(body, reply.content, reply.finish_reason, prompt)
        return Outcome(200, payload, delay=delay)

    def _problem(self, body: dict[str, Any]) -> tuple[str, str] | None:
        """Return (parameter, message) when the request cannot be served, else None."""
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return "messages", "'messages' must be a non-empty list."
        if body.get("stream"):
            return "stream", "Streaming is not supported by this endpoint; send stream=false."
        fmt = body.get("response_format")
        structured = isinstance(fmt, dict) and fmt.get("type") == "json_schema"
        if structured and self.options.reject_structured:
            return "response_format", "response_format of type json_schema is not supported."
        return None

    def _retry_headers(self) -> dict[str, str]:
        # The openai SDK reads retry-after-ms first; other clients know only Retry-After.
        seconds = self.options.retry_after
        return {"Retry-After": f"{seconds:g}", "retry-after-ms": f"{seconds * 1000:g}"}

    def _latency(self, rng: random.Random) -> float:
        median = self.options.latency_ms / 1000
        if median <= 0:
            return 0.0
        if self.options.latency_dist == "fixed":
            return median
        # Lognormal with sigma 1: p90 is about 3.6 times the median, p99 about 10 times.
        return min(rng.lognormvariate(math.log(median), 1.0), 30 * median)

    async def _hang(self, behaviour: dict[str, Any]) -> None:
        """Hold a request for ``seconds``, or until the behaviour is cleared."""
        assert self._cleared is not None
        seconds = behaviour.get("seconds")
        limit = None if seconds is None else float(seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cleared.wait(), limit)

    def _scripted(
        self, request: web.Request, script: dict[str, Any], body: dict[str, Any], prompt: int
    ) -> web.Response:
        if script["kind"] == "drop":
            # Close the connection without a word, as a crashed server or a proxy does.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        if script["kind"] in NOT_COMPLETIONS:
            content_type, text = NOT_COMPLETIONS[script["kind"]]
            return web.Response(status=200, text=text, content_type=content_type)
        if script["kind"] == "content":
            content = str(script.get("content", ""))
            finish = script.get("finish_reason", "stop")
            return web.json_response(self._completion(body, content, finish, prompt))
        status = int(script.get("status", 500))
        headers = dict(script.get("headers") or {})
        if status == 429 and not headers:
            headers = self._retry_headers()
        if "body" not in script:
            return _error(status, f"Scripted error {status}.", headers=headers)
        payload = script["body"]
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, headers=headers)
        return web.json_response(payload, status=status, headers=headers)

    def _completion(
        self, body: dict[str, Any], content: str, finish_reason: str, prompt: int
    ) -> dict[str, Any]:
        completion = estimate_tokens(content)
        with self._lock:
            self._ids += 1
            number = self._ids
        message = {"role": "assistant", "content": content, "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
        if self.options.cached_share:
            cached = math.floor(prompt * self.options.cached_share)
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return {
            "id": f"chatcmpl-sim{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.options.model,
            "choices": [choice],
            "usage": {**usage, "total_tokens": prompt + completion},
        }

    async def _models(self, request: web.Request) -> web.Response:
        with self._lock:
            standing = self._behaviour
        if standing is not None and standing["models"]:
            if standing["kind"] == "hang":
                await self._hang(standing)
            else:
                return self._scripted(request, standing, {}, 0)
        model = {"id": self.options.model, "object": "model", "created": 0, "owned_by": "sim"}
        return web.json_response({"object": "list", "data": [model]})

    async def _script(self, request: web.Request) -> web.Response:
        try:
            script = await request.json()
            self.enqueue(**script)
        except (ValueError, TypeError) as exc:
            return _error(400, f"Bad script: {exc}")
        with self._lock:
            return web.json_response({"queued": len(self._queue)})

    async def _set_behaviour(self, request: web.Request) -> web.Response:
        try:
            fields = await request.json()
            self.set_behaviour(**fields)
        except (ValueError, TypeError) as exc:
            return _error(400, f"Bad behaviour: {exc}")
        return web.json_response({"behaviour": fields.get("kind")})

    async def _set_batch(self, request: web.Request) -> web.Response:
        try:
            fields = await request.json()
            self.set_batch(**fields)
        except (ValueError, TypeError) as exc:
            return _error(400, f"Bad batch options: {exc}")
        return web.json_response({name: getattr(self.options, name) for name in BATCH_OPTIONS})

    async def _advance(self, request: web.Request) -> web.Response:
        try:
            self.advance(float((await request.json())["seconds"]))
        except (ValueError, TypeError, KeyError) as exc:
            return _error(400, f'Bad advance: send {{"seconds": N}} ({exc})')
        return web.json_response({"clock": self.clock()})

    async def _forget_batches(self, request: web.Request) -> web.Response:
        return web.json_response({"forgotten": await self._desk.forget_batches()})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})


def serve_forever(
    options: SimOptions | None = None, host: str = "127.0.0.1", port: int = 0
) -> None:
    """Serve until Ctrl-C, printing the base URL once the port listens."""
    with SimServer(options, host, port) as server:
        print(server.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
