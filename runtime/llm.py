"""The model client: ChatOpenAI from settings, multimodal messages, and a record of every call.

Every answer is written to the results database *before* the node that asked returns,
under a key made of the sample, round, node, attempt and chunk. When a step runs again
(after a crash, a kill or a resume) the client finds the answer under its key and
returns it without calling the endpoint, so no answer is paid for twice.

Whose fault a failed call is decides what happens to its sample. The endpoint's (a timeout,
a lost connection, a 5xx or 429 answer still failing after the retries, a refused key,
an unknown model): the call raises ``EndpointFailed``, the sample is *interrupted* and
the next run resumes it by itself. The sample's (``SAMPLE_FAULT_STATUSES``: the endpoint
refused what this request holds, e.g. an image it cannot read or a prompt over the
context window): the API error goes up and the sample *fails*. A 200 answer that is not
a chat completion (a proxy's HTML page, ``{"choices": []}``) is recorded as an unusable
answer of that call (``NOT_A_COMPLETION``), which the node asks again like any other.
So is an answer that is not valid text (a lone surrogate, ``INVALID_TEXT``): what the
model sends is always recorded, escaped where it must be, never lost to an encoding error.

With several endpoints (``--base-url`` given more than once) each call goes to one of them
(``runtime.endpoints``); a call that an endpoint fails goes on on another usable one
at once and the failing endpoint rests. Only when no other endpoint is usable does the
failure count as the call's (``EndpointFailed``, the failure breaker). Every call records
its endpoint (``calls.endpoint``, without credentials).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import functools
import http
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import openai
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletion

from mmevol.graph.config import Settings
from mmevol.runtime import endpoints
from mmevol.runtime.batchapi import (
    OUT,
    BatchQueue,
    LineRefused,
    Parked,
    Result,
    online_allowed,
)
from mmevol.runtime.endpoints import EndpointPool, Slot
from mmevol.runtime.limits import Governor, Outcome, Tally, TokenBucket, estimate_prompt_tokens
from mmevol.runtime.prices import PriceTable
from mmevol.runtime.stops import StopReason, max_calls_reached, max_cost_reached
from mmevol.store.results import Store

log = logging.getLogger("mmevol")


def _cache_langchain_block_types() -> None:
    """Memoise a pure helper that langchain-core recomputes for every multimodal message.

    ``_get_data_content_block_types`` derives a constant tuple from type hints; it ran
    once per image message and took about 8% of a run's CPU. Caching it changes nothing
    else; if a later langchain-core renames it, this does nothing.
    """
    from langchain_core.messages import content

    helper = getattr(content, "_get_data_content_block_types", None)
    if helper is not None and not hasattr(helper, "cache_info"):
        content._get_data_content_block_types = functools.cache(helper)


_cache_langchain_block_types()


class EndpointProblem(RuntimeError):
    """Raised before any sample starts when the endpoint or key cannot work."""


class RunStopped(Exception):
    """Raised instead of a new call once the run is stopping; the sample resumes later."""


class EndpointFailed(RunStopped):
    """Raised when the endpoint failed a call after its retries; the sample resumes later.

    A subclass of ``RunStopped``: the runner marks the sample interrupted, not failed, and
    the next run of the same command resumes it from its last checkpoint.
    """


SAMPLE_FAULT_STATUSES = frozenset({400, 413, 422})
"""HTTP statuses that name the request's own content (bad request, too large, unprocessable):
the sample fails. Every other API error is the endpoint's, and the sample is interrupted."""

RETRY_STATUSES = frozenset({408, 409, 429})
"""Besides every 5xx, the statuses that are retried (as the openai SDK does)."""

NOT_A_COMPLETION = "not_a_completion"
"""The finish reason recorded for a 200 answer that is not a chat completion."""

INVALID_TEXT = "invalid_text"
"""The finish reason recorded for an answer that is not valid text (see ``checked_text``)."""

_PROBLEMS = {
    "length": "the answer was cut off at the output token limit",
    NOT_A_COMPLETION: "the endpoint's answer was not a chat completion",
    INVALID_TEXT: "the answer is not valid text (it holds a lone surrogate, e.g. \\ud800)",
}

# The HTTP answers seen by the call running in this context (see ModelClient._observe).
_SEEN: contextvars.ContextVar[list | None] = contextvars.ContextVar("mmevol_seen", default=None)

_PLAIN_PARAMS = frozenset(
    {"model", "messages", "stream", "temperature", "max_tokens", "max_completion_tokens"}
)
"""Request parameters sent as they are (JSON values the SDK would not change)."""

_CALL_FIELDS = ("key", "hash_id", "branch", "round", "node", "attempt", "chunk", "model")


def sample_at_fault(err: BaseException) -> bool:
    """Whether a failed call is the sample's fault (it fails) rather than the endpoint's."""
    return isinstance(err, openai.APIStatusError) and err.status_code in SAMPLE_FAULT_STATUSES


def answer_problem(finish_reason: str | None) -> str | None:
    """Why a recorded answer is unusable whatever its text says (cut off, not an answer)."""
    return _PROBLEMS.get(finish_reason or "")


def storable(text: str) -> str:
    r"""Return text that any UTF-8 encoder takes: lone surrogates escaped as ``\udXXX``.

    JSON may carry half of a UTF-16 pair alone (``"\ud800"``); Python decodes it into a
    str that SQLite, files and terminals refuse. Everything else is returned unchanged.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def checked_text(text: str, finish_reason: str | None) -> tuple[str, str | None]:
    """Return a model answer as it is recorded: storable text and its finish reason.

    An answer that is not valid text (a lone surrogate) is kept, escaped, and recorded as
    unusable (``INVALID_TEXT``): its node asks again, and a resume finds it like any other.
    """
    safe = storable(text)
    return (text, finish_reason) if safe is text else (safe, INVALID_TEXT)


class NotACompletion(Exception):
    """A 200 answer that the client could not read as a chat completion."""


@dataclass(frozen=True)
class CallKey:
    """Names one model call so that it can be found again."""

    hash_id: str
    round: int
    node: str
    attempt: int
    chunk: int = 0
    branch: str = "main"

    def __str__(self) -> str:
        """Return the key as stored in the calls table."""
        key = f"{self.hash_id}|r{self.round}|{self.node}|a{self.attempt}|c{self.chunk}"
        return key if self.branch == "main" else f"{key}|{self.branch}"


@dataclass(frozen=True)
class Answer:
    """A model answer and where it is recorded."""

    call_id: int
    text: str
    finish_reason: str | None
    reused: bool


@dataclass(frozen=True)
class Reply:
    """What the client reads from a model's answer (as ChatOpenAI's AIMessage has it)."""

    content: object
    usage_metadata: dict | None
    response_metadata: dict


def tracing_enabled() -> bool:
    """Whether LangSmith tracing is on (its usual environment variables)."""
    try:
        from langsmith.utils import tracing_is_enabled
    except ImportError:  # pragma: no cover - langsmith comes with langchain-core
        return False
    return bool(tracing_is_enabled())


def make_chat(
    settings: Settings,
    model: str,
    http_client: object | None = None,
    base_url: str | None = None,
) -> ChatOpenAI:
    """Build the ChatOpenAI client for one model (at ``base_url``: the run's first endpoint)."""
    return ChatOpenAI(
        http_async_client=http_client,
        model=model,
        base_url=base_url or settings.base_urls[0],
        api_key=settings.api_key or "unset",
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        timeout=settings.timeout,
        # ModelClient retries itself (settings.max_retries), so that a stop ends retries.
        max_retries=0,
    )


def user_message(text: str, image_url: str | None = None, detail: str = "low") -> HumanMessage:
    """Build a user message from prompt text and an optional image data URL."""
    if image_url is None:
        return HumanMessage(content=text)
    return HumanMessage(
        content=[
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image_url, "detail": detail}},
        ]
    )


@dataclass
class Usage:
    """What the run has spent so far (this invocation and, for money, earlier ones too)."""

    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    """Part of ``input_tokens`` answered from the endpoint's prompt cache."""
    output_tokens: int = 0
    cost: float = 0.0
    cost_before: float = 0.0
    """Dollars spent by earlier invocations of the same run."""
    calls_before: int = 0
    unpriced: set[str] = field(default_factory=set)
    rounds: dict[str, int] = field(default_factory=dict)
    """The round of each sample's latest call, for samples in flight."""

    @property
    def total_cost(self) -> float:
        """Return the dollars of the whole run so far."""
        return self.cost_before + self.cost


class ModelClient:
    """Ask the evolution and judge models, recording each call in the results database.

    Every new call waits for the rate limits of its model and a place under the adaptive
    concurrency limit, is counted against ``max_calls`` and ``max_cost``, and feeds the
    failure breaker. Reaching a budget or tripping the breaker calls ``on_stop`` with the
    reason (the runner then stops cleanly) and no further call is made.

    Example:
        async with ModelClient(settings, store) as client:
            answer = await client.ask(key, text)
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        on_stop: Callable[[StopReason], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
        tally: Tally | None = None,
    ):
        """Build one ChatOpenAI per model role and endpoint, sharing one connection pool.

        langchain-openai otherwise shares a process-wide async HTTP client, which stays
        bound to the event loop of the first run and breaks the next ``asyncio.run``.
        The pool is the openai SDK's aiohttp transport (its ``aiohttp`` extra): httpx's
        own pool checks every idle connection's socket before each request, which with
        a hundred connections open took about a tenth of a run's CPU. ``tally`` counts
        calls and money for the budgets; worker processes pass one they all share.
        """
        self.settings = settings
        self.store = store
        self.on_stop = on_stop or (lambda reason: None)
        self.on_notice = on_notice or (lambda text: log.warning(text))
        self._stopped = asyncio.Event()
        self.stop_reason: StopReason | None = None
        self.governor = Governor(ceiling=settings.concurrency * 2)
        self.http = openai.DefaultAioHttpClient(
            limits=_limits(max(100, settings.concurrency * 4)),
            timeout=settings.timeout,
            event_hooks={"response": [self._observe]},
        )
        self.endpoints = EndpointPool(settings.base_urls, on_notice=self.on_notice)
        models = role_models(settings)
        self._chats = {
            (role, url): make_chat(settings, model, self.http, url)
            for role, model in models.items()
            for url in settings.base_urls
        }
        first = settings.base_urls[0]
        self.chats = {role: self._chats[role, first] for role in models}
        """The ChatOpenAI of each role on the first endpoint."""
        self.buckets = _buckets(settings)
        # The gates' calls wait on the limits of the role they stand beside.
        self.buckets |= {"blind": self.buckets["evolve"], "judge2": self.buckets["score"]}
        self.prices = PriceTable(settings.prices)
        self.tally = tally or spent_so_far(store, self.prices)
        self.usage = Usage(calls_before=self.tally.calls_before, cost_before=self.tally.cost_before)
        self.structured = settings.structured_output
        self.traced = tracing_enabled()
        """Calls go through ``ChatOpenAI.ainvoke`` so that LangSmith sees them."""
        self.batches: BatchQueue | None = None
        """Batch mode's queue (``--batch``): new calls go out in shards and their samples park."""
        if settings.batch:
            self.batches = BatchQueue(
                settings,
                store,
                on_result=self.record_result,
                spent=lambda: self.tally.add_cost(0.0),
                on_stop=self.stop,
                on_notice=self.on_notice,
            )

    async def aclose(self) -> None:
        """Close the batch queue, if any, and the connection pool."""
        if self.batches is not None:
            await self.batches.aclose()
        await self.http.aclose()

    async def __aenter__(self) -> ModelClient:
        """Return the client; leaving the block closes its connection pool."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the connection pool."""
        await self.aclose()

    @property
    def stopping(self) -> bool:
        """Whether the run stops: recorded answers are still served, no call or retry starts."""
        return self._stopped.is_set()

    @stopping.setter
    def stopping(self, value: bool) -> None:
        if value:
            self._stopped.set()  # wakes the calls waiting to retry

    async def _observe(self, response: object) -> None:
        self.governor.on_status(response.status_code)
        seen = _SEEN.get()
        if seen is not None:
            seen.append(response)

    def stop(self, reason: StopReason) -> None:
        """Make no new call from now on, and tell the runner why (once)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopping = True
            self.on_stop(reason)

    async def ask(
        self, key: CallKey, text: str, image_url: str | None = None, schema: dict | None = None
    ) -> Answer:
        """Return the answer recorded under ``key``, or ask the model and record it.

        ``schema`` is the ``response_format`` asked for when structured output is on.

        Raises:
            RunStopped: the run is stopping; no call was made.
            EndpointFailed: the endpoint failed the call after its retries, or the run
                stopped while it waited to retry (recorded); the sample resumes later.
            openai.APIStatusError: the endpoint refused the request for what it holds
                (``sample_at_fault``; recorded).
            Parked: batch mode queued the call (or it is still out); the sample resumes
                once the answer is recorded.
            LineRefused: batch mode: the endpoint refused the request for what it holds.
        """
        found = self.store.find_call(str(key))
        if found is not None:
            return Answer(found["id"], found["response"] or "", found["finish_reason"], True)
        if self.stopping:
            raise RunStopped(str(key))
        role = role_of(key.node)
        chat = self.chats[role]
        if self.batches is not None:
            await self._queue(key, chat, text, image_url, schema)  # returns to go online
        self._reserve_call(key)
        self.usage.rounds[key.hash_id] = key.round
        estimate = (
            estimate_prompt_tokens(text, 1 if image_url else 0, self.settings.image_detail)
            + self.settings.max_tokens
        )
        requests, tokens = self.buckets[role]
        if requests:
            await requests.take(1)
        if tokens:
            await tokens.take(estimate)
        await self.governor.acquire()
        if self.stopping:  # the stop may have come while this call waited its turn
            await self.governor.release()
            raise RunStopped(str(key))
        row = self._call_row(key, chat.model_name)
        message = user_message(text, image_url, self.settings.image_detail)
        tried: list = []  # the endpoints that failed this call
        try:
            while True:
                slot = self.endpoints.take(tried)
                chat = self._chats[role, slot.endpoint.url]
                row.update(model=chat.model_name, endpoint=slot.endpoint.name)
                started = time.perf_counter()
                self.usage.calls += 1
                try:
                    reply = await self._call(
                        chat, message, schema, lambda err, s=slot: self._elsewhere(err, s, tried)
                    )
                except openai.APIError as err:
                    self.usage.errors += 1
                    row.update(latency_ms=_ms(started), error=f"{error_name(err)}: {err}")
                    self._log(row)
                    if sample_at_fault(err):
                        self.endpoints.release(slot)  # it answered
                        self._outcome(False, row["error"])
                        raise
                    self.endpoints.release(slot, row["error"], done=not self.stopping)
                    tried.append(slot.endpoint)
                    if self._go_on(key, tried):
                        del row["error"]
                        continue  # on another endpoint, at once
                    self._outcome(False, row["error"])
                    raise EndpointFailed(f"{key}: {row['error']}") from err
                except NotACompletion as err:
                    # Recorded as an answer (found again on resume), unusable by its finish
                    # reason.
                    self.endpoints.release(slot)
                    self._outcome(False, f"not a chat completion: {err}")
                    text = storable(str(err))
                    row.update(
                        latency_ms=_ms(started), finish_reason=NOT_A_COMPLETION, response=text
                    )
                    return Answer(self._log(row), text, NOT_A_COMPLETION, False)
                except BaseException:
                    self.endpoints.release(slot, done=False)
                    raise
                self.endpoints.release(slot)
                break
        finally:
            await self.governor.release()
        self._outcome(True)
        usage = reply.usage_metadata or {}
        finish = reply.response_metadata.get("finish_reason")
        content = reply.content if isinstance(reply.content, str) else str(reply.content)
        content, finish = checked_text(content, finish)
        tokens_in = usage.get("input_tokens") or 0
        tokens_out = usage.get("output_tokens") or 0
        tokens_cached = cached_tokens(usage)
        self._count(chat.model_name, tokens_in, tokens_out, tokens_cached)
        row.update(
            latency_ms=_ms(started),
            input_tokens=tokens_in,
            cached_tokens=tokens_cached,
            output_tokens=tokens_out,
            finish_reason=finish,
            response=content,
        )
        return Answer(self._log(row), content, finish, False)

    async def _queue(
        self, key: CallKey, chat: ChatOpenAI, text: str, image_url: str | None, schema: dict | None
    ) -> None:
        """Batch mode: put the call in the shard being filled and park its sample.

        Returns (so that the call goes online) only for a request that ``--batch-fallback``
        sent online, or one that went unanswered more than ``--retries`` times: its line
        failed, or its batch ended (expired, cancelled, lost) before running it.

        Raises:
            Parked: the request is queued or still out.
            LineRefused: its batch line was refused for what it holds (400, 413, 422).
            RunStopped: ``--max-calls`` is reached, or the request went unanswered more
                than ``--retries`` times and the run may not ask online (``--batch-dir``
                without ``--batch-fallback``): the sample is interrupted.
        """
        assert self.batches is not None
        request = self.store.request(str(key))
        state = request["state"] if request else None
        if state in OUT:
            raise Parked(str(key))
        if state == "online":
            return
        failures = (request or {}).get("failures") or 0
        if state == "failed" and request["status"] in SAMPLE_FAULT_STATUSES:
            raise LineRefused(f"{key}: {request['error']}")
        # A failed line and a request its batch never ran (expired, cancelled, lost) both
        # count, when the batch ends (``BatchQueue._finish``).
        if state in ("failed", "missing") and failures > self.settings.max_retries:
            said = f"{key}: its batch request went unanswered {failures} times"
            said += f" ({request['error']})" if request["error"] else ""
            if not online_allowed(self.settings):
                self.on_notice(
                    f"{said}; there is no online endpoint to ask (--batch-dir without "
                    "--batch-fallback): the sample is interrupted (run again with "
                    "--batch-fallback, or a higher --retries)"
                )
                raise RunStopped(str(key))
            self.on_notice(f"{said}; asking online")
            return
        self._reserve_call(key)
        options = {"response_format": schema} if self.structured and schema is not None else {}
        body = chat._get_request_payload(
            [user_message(text, image_url, self.settings.image_detail)], **options
        )
        body.pop("stream", None)
        tokens = estimate_prompt_tokens(text, 1 if image_url else 0, self.settings.image_detail)
        estimate = self.prices.cost(chat.model_name, tokens, self.settings.max_tokens, batch=True)
        self.usage.calls += 1
        self.usage.rounds[key.hash_id] = key.round
        await self.batches.put(
            {**self._call_row(key, chat.model_name), "failures": failures}, body, estimate
        )
        raise Parked(str(key))

    def record_result(self, request: dict, result: Result) -> tuple[str, float]:
        """Record one line of a finished batch under its call key; return its state and cost.

        An answer is recorded like an online one (flagged ``batch``, priced at the batch
        price); a failed line is recorded as a failed call; a line whose request never ran
        (the batch expired or was cancelled first) records nothing and is asked again.
        """
        if result.status is None:
            return "missing", 0.0
        row = {name: request[name] for name in _CALL_FIELDS} | {"batch": 1}
        if result.status != 200:
            self.usage.errors += 1
            self._log(row | {"error": f"batch line: {result.error}"})
            return "failed", 0.0
        role = role_of(request["node"])
        try:
            generation = self.chats[role]._create_chat_result(result.body).generations[0]
            reply = generation.message
            content = reply.content if isinstance(reply.content, str) else str(reply.content)
        except (ValueError, TypeError, AttributeError, LookupError) as err:
            text = f"batch line: {type(err).__name__}: {json.dumps(result.body)[:200]}"
            self._log(row | {"finish_reason": NOT_A_COMPLETION, "response": text})
            return "answered", 0.0
        finish = (generation.generation_info or {}).get("finish_reason")
        content, finish = checked_text(content, finish)
        usage = reply.usage_metadata or {}
        tokens_in = usage.get("input_tokens") or 0
        tokens_out = usage.get("output_tokens") or 0
        cached = (usage.get("input_token_details") or {}).get("cache_read") or 0
        cost = self._count(request["model"], tokens_in, tokens_out, cached, batch=True)
        self._log(
            row
            | {
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "cached_tokens": cached,
                "finish_reason": finish,
                "response": content,
            }
        )
        return "answered", cost

    def _log(self, row: dict) -> int:
        """Record a call row, its text escaped where it is not valid text; return its id.

        Error messages may quote what the endpoint sent, so every text of the row is made
        storable: a paid answer is never lost to an encoding error.
        """
        return self.store.log_call(
            {k: storable(v) if isinstance(v, str) else v for k, v in row.items()}
        )

    @staticmethod
    def _call_row(key: CallKey, model: str) -> dict:
        return {
            "key": str(key),
            "hash_id": key.hash_id,
            "branch": key.branch,
            "round": key.round,
            "node": key.node,
            "attempt": key.attempt,
            "chunk": key.chunk,
            "model": model,
        }

    def _elsewhere(self, err: openai.APIError, slot: Slot, tried: list) -> bool:
        """Whether a failed request goes on on another endpoint rather than retried here.

        With several endpoints, a lost connection, a timeout or a 5xx answer is not retried
        on the same endpoint while another one is usable; 408, 409 and 429 (the endpoint
        asks to be called later) spend the call's retries on that endpoint first.
        """
        if not self.endpoints.several:
            return False
        if isinstance(err, openai.APIStatusError) and err.status_code < 500:
            return False
        return bool(self.endpoints.usable([slot.endpoint, *tried]))

    def _go_on(self, key: CallKey, tried: list) -> bool:
        """Whether a call that an endpoint failed goes on on another one (a new call).

        It does while the run goes on and another endpoint is usable; reaching
        ``max_calls`` here stops the run (the sample resumes later).
        """
        if self.stopping or not self.endpoints.usable(tried):
            return False
        self._reserve_call(key)
        return True

    def _reserve_call(self, key: CallKey) -> None:
        """Count one more call against ``--max-calls``, or stop the run when it is reached.

        Raises:
            RunStopped: the run has made its ``--max-calls`` calls; no call is made.
        """
        limit = self.settings.max_calls
        if not self.tally.reserve_call(limit):
            self.stop(max_calls_reached(limit))
            raise RunStopped(str(key))

    def _outcome(self, ok: bool, error: str | None = None) -> None:
        tripped = self.governor.on_outcome(Outcome(ok, error))
        if tripped:
            self.stop(StopReason("breaker", f"the endpoint keeps failing: {tripped}"))

    async def _call(
        self,
        chat: ChatOpenAI,
        message: HumanMessage,
        schema: dict | None,
        elsewhere: Callable[[openai.APIError], bool] = lambda err: False,
    ) -> object:
        """Call the model, retrying what the endpoint may answer better later.

        Timeouts, lost connections, 408, 409, 429 and 5xx answers are retried up to
        ``settings.max_retries`` times, after the ``Retry-After`` the endpoint asks for (up
        to a minute) or an exponential backoff. Once the run stops, nothing is retried: a
        call waiting to retry gives up at once; nor is a failure that ``elsewhere`` sends
        to another endpoint.

        Raises:
            openai.APIError: the last failure.
            NotACompletion: a 200 answer that is not a chat completion (never retried here:
                it is an unusable answer, which the node asks again).
        """
        for retry in range(self.settings.max_retries + 1):
            seen: list = []
            token = _SEEN.set(seen)
            try:
                return await self._invoke(chat, message, schema)
            except openai.APIError as err:
                if (
                    retry == self.settings.max_retries
                    or self.stopping
                    or not _retryable(err)
                    or elsewhere(err)
                ):
                    raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), _retry_delay(err, retry))
                if self.stopping:
                    raise
            except (ValueError, TypeError, AttributeError, LookupError) as err:
                # langchain-openai fails in many ways on a 200 that is no chat completion.
                raise NotACompletion(_describe(seen[-1] if seen else None, err)) from err
            finally:
                _SEEN.reset(token)
        raise AssertionError("unreachable")

    async def _invoke(self, chat: ChatOpenAI, message: HumanMessage, schema: dict | None) -> object:
        """Call the model, with the JSON schema when structured output is on and accepted."""
        if not self.structured or schema is None:
            return await self._generate(chat, message)
        try:
            return await self._generate(chat, message, response_format=schema)
        except openai.BadRequestError as err:
            if not self.structured:
                return await self._generate(chat, message)
            self.structured = False
            self.on_notice(
                "the endpoint rejected structured output (json_schema response format): "
                f"{err}; falling back to parsing text answers for the rest of the run"
            )
            return await self._generate(chat, message)

    async def _generate(self, chat: ChatOpenAI, message: HumanMessage, **options: object) -> Reply:
        """Ask one ChatOpenAI for one answer, by its shortest path unless a trace is kept.

        ``chat.ainvoke`` wraps the request in layers that do nothing for a run: merging
        the caller's config, a callback manager that inherits LangGraph's task config
        (and sends its events through a thread), the LLM cache check, and a thread hop to
        read the answer. The short path asks ChatOpenAI for the same request payload,
        sends it with the same openai client, and reads the answer with ChatOpenAI's own
        ``_create_chat_result``: the same request, answer and errors, less than half the
        CPU. With LangSmith tracing on (its environment variables), or for a model that
        ChatOpenAI sends to the Responses API, the whole ``ainvoke`` path runs instead.
        """
        if self.traced:
            reply = await chat.ainvoke([message], **options)
            return Reply(reply.content, reply.usage_metadata, reply.response_metadata)
        payload = chat._get_request_payload([message], **options)
        if "messages" not in payload:  # a Responses API model: ChatOpenAI's own path
            result = await chat._agenerate([message], **options)
        elif "response_format" in payload:
            payload.pop("stream", None)
            result = chat._create_chat_result(
                await chat.root_async_client.chat.completions.parse(**payload)
            )
        elif payload.keys() <= _PLAIN_PARAMS and not payload.get("stream"):
            # The SDK's documented raw POST: the same JSON body and answer type, without
            # create()'s walk of every message part against the params' type hints (an
            # identity for these plain parameters, and a fifth of the SDK's CPU per call).
            result = chat._create_chat_result(
                await chat.root_async_client.post(
                    "/chat/completions", body=payload, cast_to=ChatCompletion
                )
            )
        else:
            result = chat._create_chat_result(await chat.async_client.create(**payload))
        generation = result.generations[0]
        reply = generation.message
        return Reply(
            reply.content,
            reply.usage_metadata,
            {**(generation.generation_info or {}), **reply.response_metadata},
        )

    def _count(
        self, model: str, tokens_in: int, tokens_out: int, cached: int = 0, batch: bool = False
    ) -> float:
        """Count an answer's tokens and money (the one place that prices calls) and the budget.

        ``tokens_in`` includes the ``cached`` prompt tokens; ``batch``: a Batch API answer.
        """
        self.usage.input_tokens += tokens_in
        self.usage.cached_tokens += cached
        self.usage.output_tokens += tokens_out
        if self.prices.get(model) is None and model not in self.usage.unpriced:
            self.usage.unpriced.add(model)
            self.on_notice(
                f"no price known for model {model!r}: its cost counts as 0 (see --prices)"
            )
        cost = self.prices.cost(model, tokens_in, tokens_out, cached, batch)
        self.usage.cost += cost
        spent = self.tally.add_cost(cost)
        budget = self.settings.max_cost
        if budget is not None and spent >= budget:
            self.stop(max_cost_reached(budget, spent))
        return cost


def spent_so_far(store: Store, prices: PriceTable, context: object | None = None) -> Tally:
    """Return a tally that starts from the calls and money a run's database records."""
    spent = store.spent()
    return Tally(
        context,
        calls_before=spent["calls"],
        cost_before=sum(prices.row_cost(row) for row in spent["by_model"]),
    )


def cached_tokens(usage: dict) -> int:
    """Return the prompt tokens an answer's usage says came from the prompt cache.

    langchain-openai maps OpenAI's ``usage.prompt_tokens_details.cached_tokens`` to
    ``usage_metadata["input_token_details"]["cache_read"]`` (``"priority_cache_read"``
    or ``"flex_cache_read"`` on those service tiers); an endpoint that reports none gives 0.
    """
    details = usage.get("input_token_details") or {}
    return sum(v or 0 for k, v in details.items() if k.endswith("cache_read"))


def role_of(node: str) -> str:
    """Return the model role of a call's node: score (score*), blind, judge2 or evolve."""
    if node.startswith("score"):
        return "score"
    return node if node in ("blind", "judge2") else "evolve"


def role_models(settings: Settings) -> dict[str, str]:
    """Return the model of each role the run calls (the gates' roles only with --gates)."""
    models = {"evolve": settings.model, "score": settings.judge_model}
    if "blind" in settings.gate_set:
        models["blind"] = settings.blind_model or settings.model
    if "judge2" in settings.gate_set:
        models["judge2"] = settings.judge2_model or settings.judge_model
    return models


def _buckets(settings: Settings) -> dict[str, tuple[TokenBucket | None, TokenBucket | None]]:
    """Return the (requests, tokens) buckets of each role; shared unless set per model."""
    shared = (
        TokenBucket(settings.rpm) if settings.rpm else None,
        TokenBucket(settings.tpm) if settings.tpm else None,
    )
    if settings.scorer_rpm is None and settings.scorer_tpm is None:
        return {"evolve": shared, "score": shared}
    scorer = (
        TokenBucket(settings.scorer_rpm) if settings.scorer_rpm else shared[0],
        TokenBucket(settings.scorer_tpm) if settings.scorer_tpm else shared[1],
    )
    return {"evolve": shared, "score": scorer}


def _retryable(err: openai.APIError) -> bool:
    if isinstance(err, openai.APIConnectionError):  # timeouts too
        return True
    if not isinstance(err, openai.APIStatusError):
        return False
    hint = err.response.headers.get("x-should-retry")
    if hint in ("true", "false"):
        return hint == "true"
    return err.status_code in RETRY_STATUSES or err.status_code >= 500


def _retry_delay(err: openai.APIError, retry: int) -> float:
    """Seconds before retry ``retry + 1``: the endpoint's Retry-After, else a backoff."""
    if isinstance(err, openai.APIStatusError):
        headers = err.response.headers
        wanted = None
        with contextlib.suppress(TypeError, ValueError):
            if headers.get("retry-after-ms"):
                wanted = float(headers["retry-after-ms"]) / 1000
            elif headers.get("retry-after"):
                value = headers["retry-after"]
                try:
                    wanted = float(value)
                except ValueError:
                    when = email.utils.parsedate_to_datetime(value)
                    wanted = when.timestamp() - time.time()
        if wanted is not None and 0 <= wanted <= 60:
            return wanted
    return min(0.5 * 2**retry, 8.0) * (1 - 0.25 * random.random())


def _describe(response: object | None, err: BaseException | None = None) -> str:
    """Say in one line what an HTTP answer was: status, content type and its start."""
    if response is None:
        return f"{type(err).__name__}: {err}"[:300]
    kind = (response.headers.get("content-type") or "no content type").split(";")[0]
    try:
        text = " ".join(response.text.split())
    except Exception:  # the body was never read
        text = ""
    excerpt = text[:200] + ("..." if len(text) > 200 else "") if text else "(empty body)"
    return f"HTTP {response.status_code} {kind}: {excerpt}"


def error_name(err: BaseException) -> str:
    """Name an API error by its openai SDK class (langchain-openai subclasses them)."""
    for cls in type(err).__mro__:
        if cls.__module__.startswith("openai"):
            return cls.__name__
    return type(err).__name__


def _limits(connections: int) -> object:
    from langchain_openai._compat import httpx

    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def preflight(settings: Settings) -> list[str]:
    """Check the key and every endpoint; fail with one clear sentence when none can work.

    Unusable: unreachable, refusing the key, or answering ``/models`` with something that
    is not an API answer (a proxy's or a portal's web page, JSON of another shape). With
    several endpoints, the unusable ones start the run rested (see
    ``runtime.endpoints``) and a warning for each is returned; the run refuses to
    start only when none is usable.

    Raises:
        EndpointProblem: the key is missing, or no endpoint is usable.
    """
    if not settings.api_key:
        raise EndpointProblem(
            "OPENAI_API_KEY is not set. Export it (any value, e.g. EMPTY, for a local "
            "vLLM or SGLang server) and run again."
        )
    urls = settings.base_urls
    found = await asyncio.gather(*(_endpoint_problem(settings, url) for url in urls))
    problems = {url: problem for url, problem in zip(urls, found, strict=True) if problem}
    if len(problems) == len(urls):
        if len(urls) == 1:
            raise EndpointProblem(problems[urls[0]])
        raise EndpointProblem(
            f"none of the {len(urls)} endpoints is usable: " + "; ".join(problems.values())
        )
    for url, problem in problems.items():
        endpoints.note_unusable(url, problem)
    return [
        f"{problem}; the run goes on with the other endpoints and tries it again later"
        for problem in problems.values()
    ]


async def _endpoint_problem(settings: Settings, url: str) -> str | None:
    """Say in one sentence why one endpoint cannot work, or return None."""
    name = endpoints.display_url(url)
    client = openai.AsyncOpenAI(base_url=url, api_key=settings.api_key, max_retries=1, timeout=15)
    try:
        answer = (await client.models.with_raw_response.list()).http_response
        try:
            body = answer.json()
        except ValueError:
            body = None
        if not (isinstance(body, dict) and isinstance(body.get("data"), list)):
            return (
                f"the endpoint {name} does not answer like an OpenAI-compatible "
                f"API: GET /models gave {_describe(answer)}"
            )
    except openai.AuthenticationError as err:
        return f"the endpoint {name} rejected the API key ({err.status_code})"
    except (openai.APIConnectionError, openai.APITimeoutError) as err:
        return f"cannot reach the endpoint {name}: {err}"
    except openai.NotFoundError as err:
        # A URL without its /v1 answers 404 to every call; the run would only interrupt
        # samples. Other 404s are proxies that do not serve /models (see below).
        with_v1 = await _v1_instead(settings, url)
        if with_v1 is not None:
            return (
                f"the endpoint {name} answered GET /models with HTTP {err.status_code} "
                f"{_reason(err.status_code)}; the API answers at {with_v1}: run again with "
                f"--base-url {with_v1}"
            )
    except openai.APIStatusError:
        # Some OpenAI-compatible proxies do not serve /models; the endpoint answered, so
        # it is reachable and the first real call will tell the rest.
        pass
    finally:
        await client.close()
    return None


async def _v1_instead(settings: Settings, url: str) -> str | None:
    """Return the URL with /v1 added (as shown) when the API answers there, else None."""
    parts = urllib.parse.urlsplit(url)
    if parts.path.rstrip("/").endswith("/v1"):
        return None
    candidate = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/v1"))
    client = openai.AsyncOpenAI(
        base_url=candidate, api_key=settings.api_key, max_retries=0, timeout=15
    )
    try:
        body = (await client.models.with_raw_response.list()).http_response.json()
    except openai.AuthenticationError:
        body = {"data": []}  # the API is there; the key is another problem, told next time
    except (openai.APIError, ValueError):
        return None
    finally:
        await client.close()
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return endpoints.display_url(candidate)
    return None


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
