"""Batch mode: model calls that go out in shards and come back within a day, at half price.

A sample in batch mode runs until it needs an answer that is not recorded; the model
client then adds the request to the shard being filled and the sample *parks*
(``Parked``): its state is checkpointed and it leaves memory. A shard is submitted when
it is full (``--batch-max-requests``, ``--batch-max-bytes``), when its first request has
waited ``--batch-flush`` seconds, or when every sample is parked (``BatchQueue.flush``).
When a batch finishes, each answer is recorded under its call key like an online answer
(``on_result``, the model client's), and the parked samples whose answers are all there
run on to their next call, which joins a new shard.

Shards go out one of two ways: the endpoint's Batch API (``/v1/files`` and ``/v1/batches``
through the openai SDK, ``ApiBackend``) or a folder (``--batch-dir``, ``DirBackend``) where
each shard is written as a batch JSONL file and the result file that ``vllm run-batch``
writes beside it is read when it is complete.

Never pay twice: each step of a submission is recorded before and after it happens, and
every batch carries the run's id and its shard number in its metadata. On start
(``BatchQueue.start``), a shard whose creation was cut short is looked up in the server's
list of batches and adopted when it is there; a shard never submitted is dropped, and its
samples ask again, into a new shard.

A batch the server no longer knows (404 on ``LOST_AFTER`` checks in a row: a server
restarted without its batch table) is *lost*: its shard ends with status "lost" and its
open requests are asked again, like those of an expired batch (online under
``--batch-fallback``). What it answered and the run recorded stays recorded.

A request is in one of these states (``batch_requests.state``): ``queued`` (in a shard not
yet submitted), ``submitted``, ``answered``, ``failed`` (its line came back with an error;
asked again in a later shard), ``missing`` (its batch expired, was cancelled or was lost
before running it; asked again) or ``online`` (``--batch-fallback``: asked through the
online API). A failed line and a missing one both count toward ``--retries``
(``batch_requests.failures``, counted when the batch ends); past them the request is
asked online when the run may (``online_allowed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import openai

from mmevol.graph.config import Settings
from mmevol.runtime.stops import StopReason, max_cost_reached
from mmevol.store.results import Store

log = logging.getLogger("mmevol")

ENDPOINT = "/v1/chat/completions"
OUT = ("queued", "submitted")
"""Request states of a request still out: a sample with one of these stays parked."""
FINISHED = frozenset({"completed", "expired", "cancelled", "failed"})
"""Batch statuses after which nothing more comes back."""
NEVER_RAN = frozenset({"batch_expired", "batch_cancelled"})
"""Error codes of result lines whose request never ran (nothing was paid for it)."""
LOST_AFTER = 3
"""Checks in a row that find no batch (404) before the batch counts as lost."""
NAMED_TWICE = 5
"""Custom ids answered twice, differently, named one by one per shard; the rest are counted."""

RequestState = Literal["answered", "failed", "missing"]


def online_allowed(settings: Settings) -> bool:
    """Whether the run may ask a batch request online (a --batch-dir run needs --batch-fallback)."""
    return settings.batch_dir is None or settings.batch_fallback is not None


class Parked(Exception):
    """A sample needs batch answers that are not recorded yet; it resumes when they are."""


class LineRefused(Exception):
    """The endpoint refused a batch request for what it holds (400, 413, 422): the sample fails."""


@dataclass(frozen=True)
class Result:
    """One line of a batch's output or error file."""

    key: str
    status: int | None
    """The HTTP status of the request's answer; None when the request never ran."""
    body: dict | None
    error: str | None


def read_results(path: Path) -> Iterator[Result]:
    """Yield the results of an output or error file (OpenAI's and vllm run-batch's shape).

    A line that is not JSON, or has no ``custom_id``, is skipped: its request counts as
    missing and is asked again.
    """
    with path.open("rb") as fh:
        for line in fh:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
                continue
            yield _result(data)


def _answer_digest(result: Result) -> str:
    """Name what a result line answers, not when or under which id it was answered.

    The status, then each choice's message and finish reason (or the error): two runs of
    a line that agree get one name.
    """
    what: object = result.error
    if result.body is not None:
        choices = result.body.get("choices")
        what = (
            [
                {k: c.get(k) for k in ("message", "finish_reason")}
                for c in choices
                if isinstance(c, dict)
            ]
            if isinstance(choices, list)
            else result.body
        )
    text = json.dumps([result.status, what], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _result(data: dict) -> Result:
    key = data["custom_id"]
    response = data.get("response") if isinstance(data.get("response"), dict) else None
    error = data.get("error") if isinstance(data.get("error"), dict) else None
    if response is not None and isinstance(response.get("status_code"), int):
        status = response["status_code"]
        body = response.get("body")
        body = body if isinstance(body, dict) else None
        if status == 200:
            return Result(key, 200, body, None)
        detail = (body or {}).get("error") if isinstance(body, dict) else None
        message = detail.get("message") if isinstance(detail, dict) else json.dumps(body)
        return Result(key, status, None, f"HTTP {status}: {message}")
    if error is not None:
        code = str(error.get("code") or "error")
        message = f"{code}: {error.get('message') or ''}".strip()
        return Result(key, None if code in NEVER_RAN else 500, None, message)
    return Result(key, None, None, "no response in the result line")


class ApiBackend:
    """Shards through the endpoint's Files and Batches APIs (the openai SDK)."""

    mode = "api"

    def __init__(self, settings: Settings):
        """Open a client on the run's (first) endpoint (the SDK retries its management calls)."""
        self.client = openai.AsyncOpenAI(
            base_url=settings.base_urls[0],
            api_key=settings.api_key or "unset",
            timeout=max(settings.timeout, 600.0),
            max_retries=settings.max_retries,
        )

    async def aclose(self) -> None:
        """Close the client."""
        await self.client.close()

    async def upload(self, path: Path, name: str) -> str:
        """Upload a shard file; return its file id."""
        with path.open("rb") as fh:
            created = await self.client.files.create(file=(name, fh), purpose="batch")
        return created.id

    async def create(self, file_id: str, metadata: dict[str, str]) -> dict:
        """Create the batch of an uploaded file; return the fields to record."""
        batch = await self.client.batches.create(
            input_file_id=file_id,
            endpoint=ENDPOINT,
            completion_window="24h",
            metadata=metadata,
        )
        return _fields(batch)

    async def find(self, shard: dict, metadata: dict[str, str]) -> dict | None:
        """Return the recorded fields of the server's batch with this metadata, if any."""
        oldest = (shard.get("created_at") or 0) - 86400  # the list is newest first
        async for batch in self.client.batches.list(limit=100):
            if all((batch.metadata or {}).get(k) == v for k, v in metadata.items()):
                return _fields(batch)
            if batch.created_at < oldest:
                break
        return None

    async def check(self, shard: dict) -> dict:
        """Return a submitted shard's batch as it is now."""
        return _fields(await self.client.batches.retrieve(shard["batch_id"]))

    async def results(self, shard: dict, folder: Path) -> list[Path]:
        """Download a finished batch's output and error files; return their paths."""
        paths = []
        for kind in ("output_file_id", "error_file_id"):
            file_id = shard.get(kind)
            if not file_id:
                continue
            path = folder / f"{shard['name']}.{kind.split('_')[0]}.jsonl"
            part = path.with_suffix(".part")
            async with self.client.files.with_streaming_response.content(file_id) as answer:
                with part.open("wb") as fh:
                    async for chunk in answer.iter_bytes():
                        fh.write(chunk)
            part.replace(path)
            paths.append(path)
        return paths

    async def cancel(self, shard: dict) -> None:
        """Ask the server to cancel a batch (it keeps what it answered already)."""
        await self.client.batches.cancel(shard["batch_id"])

    async def forget(self, shard: dict) -> None:
        """Delete the uploaded file of a shard that was never submitted."""
        if shard.get("file_id"):
            with contextlib.suppress(openai.APIError):
                await self.client.files.delete(shard["file_id"])


def _fields(batch: object) -> dict:
    counts = batch.request_counts
    errors = getattr(batch, "errors", None)
    error = None
    if errors is not None and getattr(errors, "data", None):
        error = "; ".join(f"{e.code}: {e.message}" for e in errors.data)[:500]
    return {
        "batch_id": batch.id,
        "status": batch.status,
        "completed": counts.completed if counts else 0,
        "failed": counts.failed if counts else 0,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "error": error,
    }


class DirBackend:
    """Shards as batch JSONL files in a folder, answered by whoever runs them (vllm run-batch).

    Shard ``NAME`` is written as ``DIR/NAME.jsonl``; its results are read from
    ``DIR/NAME.output.jsonl`` (``vllm run-batch -i NAME.jsonl -o NAME.output.jsonl``) once
    that file has a complete line for every request, or once ``DIR/NAME.done`` exists (then
    the requests without a line are asked again in a later shard).
    """

    mode = "dir"

    def __init__(self, folder: Path):
        """Use ``folder`` (created when missing)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    async def aclose(self) -> None:
        """Nothing to close."""

    def output(self, shard: dict) -> Path:
        """Return where a shard's results are expected."""
        return self.folder / f"{shard['name']}.output.jsonl"

    async def put(self, path: Path, name: str) -> str:
        """Place a shard file in the folder (whole or not at all); return its path there."""
        target = self.folder / f"{name}.jsonl"
        part = self.folder / f".{name}.jsonl.part"
        with path.open("rb") as src, part.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        part.replace(target)
        return str(target)

    async def find(self, shard: dict, metadata: dict[str, str]) -> dict | None:
        """Return the shard's fields when its file is in the folder already, else None."""
        placed = self.folder / f"{shard['name']}.jsonl"
        return {"status": "submitted", "file_id": str(placed)} if placed.exists() else None

    async def check(self, shard: dict) -> dict:
        """Return the shard as "completed" once its result file is complete, else in progress."""
        output = self.output(shard)
        done = (self.folder / f"{shard['name']}.done").exists()
        lines = _complete_lines(output) if output.exists() else 0
        finished = done or lines >= shard["requests"]
        return {"status": "completed" if finished else "in_progress", "completed": lines}

    async def results(self, shard: dict, folder: Path) -> list[Path]:
        """Return the result file, if there is one."""
        output = self.output(shard)
        return [output] if output.exists() else []

    async def cancel(self, shard: dict) -> None:
        """A folder cannot be cancelled: later results of the shard are ignored."""

    async def forget(self, shard: dict) -> None:
        """Remove a shard file that will not be used."""
        if shard.get("file_id"):
            with contextlib.suppress(OSError):
                Path(shard["file_id"]).unlink()


def _complete_lines(path: Path) -> int:
    """Count the lines of a file that end with a newline (a writer may be mid-line)."""
    count = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
    return count


@dataclass
class _Filling:
    """The shard being filled."""

    id: int
    name: str
    path: Path
    fh: object
    requests: int = 0
    bytes: int = 0
    estimate: float = 0.0
    opened: float = 0.0


class BatchQueue:
    """Fill shards with requests, submit them, and record the answers when they come back.

    ``on_result(request, result)`` records one result line under its call key and says
    what became of the request ("answered", "failed" or "missing") and its cost; ``spent``
    returns the dollars the run has spent, for ``--max-cost``; ``on_stop`` stops the run.

    Example:
        queue = BatchQueue(settings, store, on_result=client.record_result, ...)
        await queue.start()
        ...
        await queue.aclose()
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        on_result: Callable[[dict, Result], tuple[RequestState, float]],
        spent: Callable[[], float],
        on_stop: Callable[[StopReason], None],
        on_notice: Callable[[str], None],
    ):
        """Prepare the queue; ``start`` reconciles with the server before anything is sent."""
        self.settings = settings
        self.store = store
        self.on_result = on_result
        self.spent = spent
        self.on_stop = on_stop
        self.on_notice = on_notice
        self.backend = (
            DirBackend(settings.batch_dir) if settings.batch_dir else ApiBackend(settings)
        )
        self.folder = settings.run_dir / "batches"
        self.progress = asyncio.Event()
        """Set whenever a shard finishes (answers recorded); cleared by ``wait``."""
        self._filling: _Filling | None = None
        self._lock = asyncio.Lock()
        self._sending: set[asyncio.Task] = set()
        self._uid = ""
        self._not_found: dict[int, int] = {}
        """Checks in a row that found no batch, by shard id (see ``LOST_AFTER``)."""

    # -- start and stop ---------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile the recorded shards with the server before anything new is sent.

        A shard cut short before its batch was created is dropped (and its uploaded file
        deleted); one cut short while its batch was being created is adopted when the
        server has a batch with its metadata, and dropped otherwise. Dropped shards'
        requests are forgotten, so their samples ask again.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self._uid = self.store.get_meta("batch_uid") or uuid.uuid4().hex
        self.store.set_meta("batch_uid", self._uid)
        for shard in self.store.shards("filling", "closed", "uploading", "uploaded", "creating"):
            found = None
            if shard["state"] == "creating" or (
                shard["state"] == "closed" and self.backend.mode == "dir"
            ):
                found = await self.backend.find(shard, self._metadata(shard))
            if found is not None:
                self._submitted(shard, found)
                self.on_notice(
                    f"batch shard {shard['name']} was submitted just before the last run "
                    "stopped; it is followed, not submitted again"
                )
                continue
            await self.backend.forget(shard)
            self._drop(shard)

    async def aclose(self) -> None:
        """Let submissions under way finish, then close the backend.

        The shard being filled is left as it is: the next run drops it and its samples
        ask again.
        """
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        if self._filling is not None:
            self._filling.fh.close()
        await self.backend.aclose()

    def _drop(self, shard: dict) -> None:
        self.store.drop_queued(shard["id"])
        self.store.update_shard(shard["id"], state="dropped", finished_at=time.time())
        with contextlib.suppress(OSError):
            Path(shard["path"]).unlink()

    def _metadata(self, shard: dict) -> dict[str, str]:
        return {
            "mmevol_run": self.settings.run,
            "mmevol_id": self._uid,
            "mmevol_shard": shard["name"],
        }

    # -- filling ------------------------------------------------------------------------

    async def put(self, request: dict, body: dict, estimate: float) -> None:
        """Add one request to the shard being filled (``request`` is its batch_requests row).

        A full shard is closed and submitted in the background; the request then opens
        the next one.
        """
        line = (
            json.dumps(
                {"custom_id": request["key"], "method": "POST", "url": ENDPOINT, "body": body},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            + "\n"
        ).encode()
        async with self._lock:
            shard = self._filling
            if shard is not None and (
                shard.requests + 1 > self.settings.batch_max_requests
                or shard.bytes + len(line) > self.settings.batch_max_bytes
            ):
                self._close()
                shard = None
            if len(line) > self.settings.batch_max_bytes:
                raise LineRefused(
                    f"{request['key']}: the request is {len(line):,} bytes, more than a whole "
                    f"batch shard may hold (--batch-max-bytes {self.settings.batch_max_bytes:,})"
                )
            if shard is None:
                shard = self._open()
            shard.fh.write(line)
            shard.requests += 1
            shard.bytes += len(line)
            shard.estimate += estimate
            self.store.add_request({**request, "shard": shard.id, "estimate": estimate})

    def _open(self) -> _Filling:
        index = len(self.store.shards()) + 1
        name = f"mmevol-{self.settings.run}-{self._uid[:8]}-{index:05d}"
        path = self.folder / f"{name}.jsonl"
        shard_id = self.store.new_shard(name, self.backend.mode, str(path))
        self._filling = _Filling(shard_id, name, path, path.open("wb"), opened=time.monotonic())
        return self._filling

    def _close(self) -> None:
        """Close the shard being filled and submit it in the background."""
        shard, self._filling = self._filling, None
        if shard is None:
            return
        shard.fh.close()
        self.store.update_shard(
            shard.id, state="closed", requests=shard.requests, bytes=shard.bytes,
            estimate=shard.estimate,
        )  # fmt: skip
        task = asyncio.get_running_loop().create_task(self._submit(shard.id))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def flush(self) -> None:
        """Submit the shard being filled now, and wait for every submission under way."""
        async with self._lock:
            self._close()
        if self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    def due(self) -> bool:
        """Whether the shard being filled has waited ``--batch-flush`` seconds."""
        shard = self._filling
        return shard is not None and time.monotonic() - shard.opened >= self.settings.batch_flush

    @property
    def queued(self) -> int:
        """Return the requests in the shard being filled."""
        return self._filling.requests if self._filling else 0

    # -- submitting ---------------------------------------------------------------------

    async def _submit(self, shard_id: int) -> None:
        shard = self.store.shard(shard_id)
        assert shard is not None
        budget = self.settings.max_cost
        if budget is not None:
            committed = self.spent() + self.store.outstanding_estimate() + shard["estimate"]
            if committed > budget:
                self.on_stop(
                    max_cost_reached(budget, self.spent())
                    if self.spent() >= budget
                    else StopReason(
                        "max_cost",
                        f"reached --max-cost ${budget:g}: the next batch shard would bring what "
                        f"is spent and submitted to ${committed:.4f}",
                    )
                )
                return  # left "closed": the next run drops it and its samples ask again
        try:
            if self.backend.mode == "dir":
                placed = await self.backend.put(Path(shard["path"]), shard["name"])
                self._submitted({**shard, "file_id": placed}, {"status": "submitted"})
            else:
                await self._create(shard)
        except (openai.APIError, OSError) as err:
            self.on_notice(
                f"batch shard {shard['name']} could not be submitted ({err}); its "
                f"{shard['requests']} requests go out again in the next run"
            )
            self.on_stop(StopReason("breaker", f"the batch endpoint failed: {err}"))

    async def _create(self, shard: dict) -> None:
        self.store.update_shard(shard["id"], state="uploading")
        file_id = await self.backend.upload(Path(shard["path"]), shard["name"] + ".jsonl")
        self.store.update_shard(shard["id"], state="uploaded", file_id=file_id)
        self.store.update_shard(shard["id"], state="creating")
        created = await self.backend.create(file_id, self._metadata(shard))
        self._submitted({**shard, "file_id": file_id}, created)

    def _submitted(self, shard: dict, fields: dict) -> None:
        keep = {k: v for k, v in fields.items() if k in ("batch_id", "status", "error")}
        self.store.update_shard(
            shard["id"], state="submitted", file_id=fields.get("file_id") or shard.get("file_id"),
            submitted_at=time.time(), **keep,
        )  # fmt: skip
        self.store.move_requests(shard["id"], "queued", "submitted")
        with contextlib.suppress(OSError):  # the copy on the server (or in the folder) counts
            if self.backend.mode == "api":
                Path(shard["path"]).unlink()

    # -- following submitted shards -----------------------------------------------------

    async def poll(self) -> int:
        """Check every submitted shard once; record what finished. Return answers recorded.

        Also submits the shard being filled when it is due (``--batch-flush``), cancels
        batches older than ``--batch-fallback`` hours, whose unanswered requests then go
        through the online API, and gives up batches the server no longer knows
        (``LOST_AFTER`` checks in a row answered 404).
        """
        if self.due():
            await self.flush()
        recorded = 0
        for shard in self.store.shards("submitted"):
            try:
                now = await self.backend.check(shard)
            except openai.NotFoundError as err:
                self._unknown(shard, err)
                continue
            except (openai.APIError, OSError) as err:
                self.on_notice(f"could not check batch shard {shard['name']}: {err}")
                continue
            fields = {k: now[k] for k in ("status", "completed", "failed", "error") if k in now}
            self.store.update_shard(shard["id"], **fields)
            shard = {**shard, **now}
            if now["status"] in FINISHED:
                try:
                    recorded += await self._finish(shard)
                except openai.NotFoundError as err:  # its result files are gone
                    self._unknown(shard, err)
                    continue
            elif self._too_old(shard) and not shard["fallback"]:
                self.store.update_shard(shard["id"], fallback=1)
                self.on_notice(
                    f"batch shard {shard['name']} is unanswered after --batch-fallback "
                    f"{self.settings.batch_fallback:g} h: cancelled, its open requests go online"
                )
                with contextlib.suppress(openai.APIError):
                    await self.backend.cancel(shard)
                if self.backend.mode == "dir":
                    recorded += await self._finish({**shard, "fallback": 1})
            self._not_found.pop(shard["id"], None)  # found: a later 404 counts from 1
        return recorded

    def _unknown(self, shard: dict, err: openai.NotFoundError) -> None:
        """Count a check that found no batch (404); the ``LOST_AFTER``-th in a row loses it."""
        strikes = self._not_found.get(shard["id"], 0) + 1
        self._not_found[shard["id"]] = strikes
        if strikes < LOST_AFTER:
            self.on_notice(
                f"batch shard {shard['name']}: the server does not know batch "
                f"{shard['batch_id']} ({strikes} of {LOST_AFTER} checks): {err}"
            )
            return
        self._not_found.pop(shard["id"], None)
        self._lose(shard)

    def _lose(self, shard: dict) -> None:
        """Give up a batch the server no longer knows: its open requests are asked again.

        They go online under ``--batch-fallback``, else into a later shard (each loss
        counts toward ``--retries``, as an expiry does). What the run recorded stays.
        """
        online = self.settings.batch_fallback is not None
        if online:
            left = self.store.move_requests(shard["id"], "submitted", "online")
        else:
            left = self._missed(shard["id"], f"batch {shard['batch_id']} was lost")
        self.store.update_shard(
            shard["id"], state="finished", status="lost", finished_at=time.time(),
            error=f"the server no longer knows batch {shard['batch_id']} (404 on "
            f"{LOST_AFTER} checks in a row)",
        )  # fmt: skip
        where = "online (--batch-fallback)" if online else "again in a later shard"
        self.on_notice(
            f"batch shard {shard['name']}: the server no longer knows batch "
            f"{shard['batch_id']} ({LOST_AFTER} checks in a row found nothing): it is lost; "
            f"its {left} open requests go {where}"
        )
        self.progress.set()

    def _too_old(self, shard: dict) -> bool:
        hours = self.settings.batch_fallback
        submitted = shard.get("submitted_at") or time.time()
        return hours is not None and time.time() - submitted >= hours * 3600

    async def _finish(self, shard: dict) -> int:
        """Record a finished shard's results; requests without one are asked again."""
        recorded, cost = 0, 0.0
        paths = await self.backend.results(shard, self.folder)
        seen: dict[str, str] = {}  # custom_id -> digest of its first answer
        twice = 0
        for path in paths:
            for result in read_results(path):
                request = self.store.request(result.key)
                if request is None or request["shard"] != shard["id"]:
                    continue  # not this shard's (or asked again since)
                digest, first = _answer_digest(result), seen.get(result.key)
                if first is not None:  # a second line for one custom_id: the first wins
                    if first != digest:
                        twice += 1
                        self._answered_twice(shard, path, result.key, twice)
                    continue
                seen[result.key] = digest
                if request["state"] != "submitted":
                    continue  # recorded before the last run stopped
                state, dollars = self.on_result(request, result)
                cost += dollars
                recorded += state == "answered"
                failures = (request["failures"] or 0) + (state != "answered")
                self.store.set_request(
                    result.key, state=state, status=result.status, error=result.error,
                    failures=failures,
                )  # fmt: skip
        if self.backend.mode == "api":  # downloads: the answers are recorded now
            for path in paths:
                path.unlink(missing_ok=True)
        left = "online" if shard.get("fallback") else "missing"
        if left == "online":
            unanswered = self.store.move_requests(shard["id"], "submitted", left)
        else:
            unanswered = self._missed(shard["id"], f"no result line (batch {shard['status']})")
        error = shard.get("error")
        if twice:
            note = (
                f"{twice} custom_id{'s' if twice > 1 else ''} answered twice, differently "
                "(the first answer of each was kept)"
            )
            error = f"{error}; {note}" if error else note
            if twice > NAMED_TWICE:
                self.on_notice(f"batch shard {shard['name']}: {note}")
        self.store.update_shard(
            shard["id"], state="finished", finished_at=time.time(),
            cost=(shard.get("cost") or 0.0) + cost, error=error,
        )  # fmt: skip
        if unanswered and left == "missing":
            self.on_notice(
                f"batch shard {shard['name']} ended {shard['status']} with {unanswered} "
                "requests unanswered; they go out again in a later shard"
            )
        self.progress.set()
        return recorded

    def _missed(self, shard_id: int, why: str) -> int:
        """Mark a shard's requests still out as missing; return how many.

        Their batch ended without running them: each is asked again in a later shard, and
        the miss counts toward ``--retries`` as a failed line does.
        """
        missed = self.store.shard_requests(shard_id, "submitted")
        for request in missed:
            failures = (request["failures"] or 0) + 1
            self.store.set_request(request["key"], state="missing", error=why, failures=failures)
        return len(missed)

    def _answered_twice(self, shard: dict, path: Path, key: str, count: int) -> None:
        if count <= NAMED_TWICE:
            more = " (more are counted, not named)" if count == NAMED_TWICE else ""
            self.on_notice(
                f"batch shard {shard['name']}: {path.name} answers custom_id {key!r} twice, "
                f"differently; the first answer is kept ({count} in this shard so far){more}"
            )

    async def keep_polling(self) -> None:
        """Poll every ``--batch-poll`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.settings.batch_poll)
            try:
                await self.poll()
            except (openai.APIError, OSError) as err:
                self.on_notice(f"checking the batches failed: {err}; trying again")

    async def wait(self, stopping: Callable[[], bool], step: float = 0.25) -> None:
        """Wait, with every sample parked, until a shard finishes or the run stops.

        A request queued meanwhile (by a sample's last chunk, say) is submitted at once:
        no sample runs that could fill its shard any further.
        """
        while not stopping() and not self.progress.is_set():
            if self.queued:
                await self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), step)
        self.progress.clear()


async def run_with(queue: BatchQueue, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` while ``queue`` is polled in the background."""
    poller = asyncio.get_running_loop().create_task(queue.keep_polling())
    try:
        await work()
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
