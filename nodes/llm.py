"""The model client: ChatOpenAI from settings, multimodal messages, and a record of every call.

Every answer is written to the results database *before* the node that asked returns,
under a key made of the sample, round, node, attempt and chunk. When a step runs again
(after a crash, a kill or a resume) the client finds the answer under its key and
returns it without calling the endpoint, so no answer is paid for twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import openai
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from graph.config import Settings
from graph.store import Store


class EndpointProblem(RuntimeError):
    """Raised before any sample starts when the endpoint or key cannot work."""


class RunStopped(Exception):
    """Raised instead of a new call once the run is stopping; the sample resumes later."""


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


def make_chat(settings: Settings, model: str, http_client: object | None = None) -> ChatOpenAI:
    """Build the ChatOpenAI client for one model from the settings."""
    return ChatOpenAI(
        http_async_client=http_client,
        model=model,
        base_url=settings.base_url,
        api_key=settings.api_key or "unset",
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
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


class ModelClient:
    """Ask the evolution and judge models, recording each call in the results database."""

    def __init__(self, settings: Settings, store: Store):
        """Build one ChatOpenAI per model role, sharing one connection pool of this run.

        langchain-openai otherwise shares a process-wide async HTTP client, which stays
        bound to the event loop of the first run and breaks the next ``asyncio.run``.
        """
        self.settings = settings
        self.store = store
        self.stopping = False
        """Set when the run stops: recorded answers are still served, new calls are not made."""
        self.http = openai.DefaultAsyncHttpxClient(
            limits=_limits(max(100, settings.concurrency * 4)), timeout=settings.timeout
        )
        self.chats = {
            "evolve": make_chat(settings, settings.model, self.http),
            "score": make_chat(settings, settings.judge_model, self.http),
        }

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def ask(self, key: CallKey, text: str, image_url: str | None = None) -> Answer:
        """Return the answer recorded under ``key``, or ask the model and record it.

        Raises:
            openai.APIError: the endpoint failed after the SDK's retries; the failure is
                recorded too.
        """
        found = self.store.find_call(str(key))
        if found is not None:
            return Answer(found["id"], found["response"] or "", found["finish_reason"], True)
        if self.stopping:
            raise RunStopped(str(key))
        role = "score" if key.node.startswith("score") else "evolve"
        chat = self.chats[role]
        message = user_message(text, image_url, self.settings.image_detail)
        row = {
            "key": str(key),
            "hash_id": key.hash_id,
            "branch": key.branch,
            "round": key.round,
            "node": key.node,
            "attempt": key.attempt,
            "chunk": key.chunk,
            "model": chat.model_name,
        }
        started = time.perf_counter()
        try:
            reply = await chat.ainvoke([message])
        except openai.APIError as err:
            row.update(latency_ms=_ms(started), error=f"{type(err).__name__}: {err}")
            self.store.log_call(row)
            raise
        usage = reply.usage_metadata or {}
        finish = reply.response_metadata.get("finish_reason")
        content = reply.content if isinstance(reply.content, str) else str(reply.content)
        row.update(
            latency_ms=_ms(started),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            finish_reason=finish,
            response=content,
        )
        return Answer(self.store.log_call(row), content, finish, False)


def _limits(connections: int) -> object:
    from langchain_openai._compat import httpx

    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def preflight(settings: Settings) -> None:
    """Fail with one clear sentence when the key is missing or the endpoint unreachable."""
    if not settings.api_key:
        raise EndpointProblem(
            "OPENAI_API_KEY is not set. Export it (any value, e.g. EMPTY, for a local "
            "vLLM or SGLang server) and run again."
        )
    client = openai.AsyncOpenAI(
        base_url=settings.base_url, api_key=settings.api_key, max_retries=1, timeout=15
    )
    try:
        await client.models.list()
    except openai.AuthenticationError as err:
        raise EndpointProblem(
            f"the endpoint {settings.base_url} rejected the API key ({err.status_code})"
        ) from err
    except (openai.APIConnectionError, openai.APITimeoutError) as err:
        raise EndpointProblem(f"cannot reach the endpoint {settings.base_url}: {err}") from err
    except openai.APIStatusError:
        # Some OpenAI-compatible proxies do not serve /models; the endpoint answered, so
        # it is reachable and the first real call will tell the rest.
        pass
    finally:
        await client.close()
