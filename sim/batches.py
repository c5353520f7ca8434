"""Serve the sim's Files and Batch APIs: uploads kept on disk, batches answered lazily.

A batch's lines are answered when a call observes that their time has come (a retrieve, a
list, a cancel or a file download), a share ``elapsed / batch_turnaround`` of them, each by
the same code path as ``POST /v1/chat/completions`` (``SimServer.answer_line``). Answers are
computed on the server's event loop in short slices, so other requests are served meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from aiohttp import web

from mmevol.sim.errors import error_response
from mmevol.sim.options import SimOptions

ENDPOINT = "/v1/chat/completions"
"""The one endpoint batches may name: the only one the simulated server answers."""
FILE_PURPOSES = ("assistants", "batch", "batch_output", "fine-tune", "vision", "user_data")
DAY = 24 * 3600
MAX_ERRORS = 100
"""Validation errors listed per failed batch at most."""
SLICE_SECONDS = 0.02
"""Answer lines for at most this long at a time before letting other requests through."""
WAIT_SECONDS = 2.0
"""How long a call that observes a batch waits for its due lines before answering."""
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
CHUNK = 1 << 20


class Host(Protocol):
    """What the Files and Batch APIs need of the server (``SimServer``)."""

    options: SimOptions

    def clock(self) -> float:
        """Return the batches' time."""
        ...

    def answer_line(self, body: dict[str, Any], fail_rate: float = 0.0) -> Any:
        """Answer one line's body as the chat route does; return its ``Outcome``."""
        ...

    def count_batch_api(self, name: str) -> None:
        """Count a file upload ("files_created") or a batch ("batches_created")."""
        ...


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


@dataclass
class StoredFile:
    """An uploaded (or produced) file: its metadata here, its bytes on disk."""

    id: str
    filename: str
    purpose: str
    created_at: int
    size: int
    path: Path

    def view(self) -> dict[str, Any]:
        """Return the OpenAI file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class Batch:
    """One batch: its OpenAI fields, the index of its input lines and its open files."""

    id: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    handle: IO[bytes] | None
    status: str = "validating"
    lines: list[tuple[int, int, str]] = field(default_factory=list)
    """(offset, length, custom_id) of each request line of the input file."""
    done: int = 0
    completed: int = 0
    failed: int = 0
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    errors: list[dict[str, Any]] | None = None
    output: IO[str] | None = None
    error: IO[str] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, float] = field(default_factory=dict)
    """When each state began: in_progress, finalizing, completed, failed, ..."""
    task: asyncio.Task[None] | None = None

    def view(self, expires: float) -> dict[str, Any]:
        """Return the OpenAI batch object."""

        def at(name: str) -> int | None:
            value = self.times.get(name)
            return None if value is None else int(value)

        errors = None if self.errors is None else {"object": "list", "data": self.errors}
        usage = {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "model": self.model,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "in_progress_at": at("in_progress"),
            "expires_at": int(expires),
            "finalizing_at": at("finalizing"),
            "completed_at": at("completed"),
            "failed_at": at("failed"),
            "expired_at": at("expired"),
            "cancelling_at": at("cancelling"),
            "cancelled_at": at("cancelled"),
            "request_counts": {
                "total": len(self.lines),
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": usage,
            "metadata": self.metadata,
        }


def _problem(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def scan_input(
    handle: IO[bytes], max_requests: int, max_bytes: int
) -> tuple[list[tuple[int, int, str]], list[dict[str, Any]]]:
    """Check a batch input file line by line; return its line index and the problems found.

    Runs in a worker thread: it touches nothing but the file it is given.
    """
    size = os.fstat(handle.fileno()).st_size
    if size > max_bytes:
        message = f"The input file has {size} bytes; a batch may hold at most {max_bytes}."
        return [], [_problem("file_too_large", message, None)]
    lines: list[tuple[int, int, str]] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    handle.seek(0)
    offset = 0
    for number, raw in enumerate(handle, 1):
        start, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        if len(lines) >= max_requests:
            message = f"The input file has more than {max_requests} requests, the limit."
            problems.append(_problem("too_many_requests", message, number))
            break
        problem = _check_line(raw, seen)
        if problem is None:
            lines.append((start, len(raw), json.loads(raw)["custom_id"]))
            continue
        problems.append(_problem(*problem[:2], number, problem[2]))
        if len(problems) >= MAX_ERRORS:
            break
    if not lines and not problems:
        problems.append(_problem("empty_file", "The input file has no requests.", None))
    return lines, problems


def _check_line(raw: bytes, seen: set[str]) -> tuple[str, str, str | None] | None:
    """Return (code, message, param) of what is wrong with one input line, else None."""
    try:
        line = json.loads(raw)
    except ValueError:
        return "invalid_json_line", "This line is not valid JSON.", None
    if not isinstance(line, dict):
        return "invalid_json_line", "This line is not a JSON object.", None
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "The line has no custom_id.", "custom_id"
    if custom_id in seen:
        return "duplicate_custom_id", f"The custom_id {custom_id!r} is used twice.", "custom_id"
    seen.add(custom_id)
    if line.get("method") != "POST":
        return "invalid_method", "The method must be POST.", "method"
    if line.get("url") != ENDPOINT:
        message = f"The url {line.get('url')!r} is not the batch's endpoint {ENDPOINT}."
        return "invalid_url", message, "url"
    if not isinstance(line.get("body"), dict):
        return "invalid_body", "The body must be a JSON object.", "body"
    return None


class FilesAndBatches:
    """The Files and Batch APIs of one ``SimServer``; lives on the server's event loop."""

    def __init__(self, server: Host) -> None:
        """Serve for ``server``, which answers the lines and keeps the counters."""
        self.server = server
        self.folder: Path | None = None
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}

    def open(self) -> None:
        """Make the folder that holds the files' bytes."""
        self.folder = Path(tempfile.mkdtemp(prefix="mmevol-sim-files-"))

    async def shutdown(self) -> None:
        """Stop the batches' work on the event loop and wait for the validating thread."""
        tasks = [b.task for b in self.batches.values() if b.task and not b.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_default_executor()

    def close(self) -> None:
        """Close every file left open and remove the folder with all the files."""
        for batch in self.batches.values():
            for handle in (batch.handle, batch.output, batch.error):
                if handle is not None:
                    handle.close()
        self.files.clear()
        self.batches.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    async def forget_batches(self) -> int:
        """Lose every batch, as a server restarted without its batch table; return how many.

        The files stay (uploads and the output of finished batches); the lines a batch
        answered before it was forgotten count as answered, and nobody gets them. Asking
        for a forgotten batch is a 404.
        """
        batches = list(self.batches.values())
        self.batches.clear()
        tasks = [b.task for b in batches if b.task is not None and not b.task.done()]
        for batch in batches:
            batch.status = "forgotten"  # not ACTIVE: an observer waiting on it stops
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for batch in batches:
            for handle in (batch.handle, batch.output, batch.error):
                if handle is not None:
                    handle.close()
            if self.folder is not None:
                for kind in ("output", "error"):
                    (self.folder / f"{batch.id}.{kind}").unlink(missing_ok=True)
        return len(batches)

    def add_routes(self, app: web.Application) -> None:
        """Route /v1/files and /v1/batches to this object."""
        app.router.add_post("/v1/files", self._create_file)
        app.router.add_get("/v1/files", self._list_files)
        app.router.add_get("/v1/files/{id}", self._retrieve_file)
        app.router.add_delete("/v1/files/{id}", self._delete_file)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches", self._list_batches)
        app.router.add_get("/v1/batches/{id}", self._retrieve_batch)
        app.router.add_post("/v1/batches/{id}/cancel", self._cancel_batch)

    # ---- files

    def _denied(self, request: web.Request) -> web.Response | None:
        key = self.server.options.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return error_response(401, "Incorrect API key provided.", "invalid_api_key")
        return None

    def _file(self, request: web.Request) -> StoredFile | web.Response:
        file_id = request.match_info["id"]
        stored = self.files.get(file_id)
        if stored is None:
            return error_response(404, f"No such File object: {file_id}", None, "id")
        return stored

    def _store(self, path: Path, filename: str, purpose: str, file_id: str) -> StoredFile:
        now = int(self.server.clock())
        stored = StoredFile(file_id, filename, purpose, now, path.stat().st_size, path)
        self.files[file_id] = stored
        return stored

    async def _create_file(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        assert self.folder is not None
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return error_response(400, "Send the file as multipart/form-data.")
        purpose, upload = None, None
        while (part := await reader.next()) is not None:
            name = getattr(part, "name", None)
            if name == "purpose":
                purpose = (await part.text()).strip()  # type: ignore[union-attr]
            elif name == "file" and upload is None:
                file_id = _new_id("file-")
                path = self.folder / file_id
                with path.open("wb") as out:
                    while chunk := await part.read_chunk(CHUNK):  # type: ignore[union-attr]
                        out.write(chunk)
                upload = (file_id, path, part.filename or "upload.jsonl")  # type: ignore[union-attr]
            else:
                await part.release()
        if upload is None:
            return error_response(400, "No file was uploaded.", "missing_file", "file")
        if purpose not in FILE_PURPOSES:
            upload[1].unlink()
            message = f"The purpose {purpose!r} is not one of {', '.join(FILE_PURPOSES)}."
            return error_response(400, message, "invalid_purpose", "purpose")
        stored = self._store(upload[1], upload[2], purpose, upload[0])
        self.server.count_batch_api("files_created")
        return web.json_response(stored.view())

    async def _list_files(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        files = list(self.files.values())
        purpose = request.query.get("purpose")
        if purpose:
            files = [f for f in files if f.purpose == purpose]
        if request.query.get("order", "desc") == "desc":
            files.reverse()
        page = _page(request, files, default=10_000)
        if isinstance(page, web.Response):
            return page
        page["data"] = [stored.view() for stored in page["data"]]
        return web.json_response(page)

    async def _retrieve_file(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        stored = self._file(request)
        return stored if isinstance(stored, web.Response) else web.json_response(stored.view())

    async def _delete_file(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        stored = self._file(request)
        if isinstance(stored, web.Response):
            return stored
        del self.files[stored.id]
        # A batch reading this file keeps its open handle, so it still reads its lines.
        stored.path.unlink(missing_ok=True)
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        if denied := self._denied(request):
            return denied
        stored = self._file(request)
        if isinstance(stored, web.Response):
            return stored
        headers = {"Content-Type": "application/octet-stream"}
        return web.FileResponse(stored.path, headers=headers)

    # ---- batches

    def _expires(self, batch: Batch) -> float:
        after = self.server.options.batch_expire_after
        return batch.created + (DAY if after is None else after)

    async def _create_batch(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error_response(400, "The request body must be a JSON object.")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            message = "input_file_id is required."
            return error_response(400, message, "missing_required_parameter", "input_file_id")
        stored = self.files.get(file_id)
        if stored is None:
            return error_response(404, f"No such File object: {file_id}", None, "input_file_id")
        if stored.purpose != "batch":
            message = f"The file {file_id} has purpose {stored.purpose!r}, not 'batch'."
            return error_response(400, message, "invalid_purpose", "input_file_id")
        if body.get("endpoint") != ENDPOINT:
            message = f"The endpoint {body.get('endpoint')!r} is not served; use {ENDPOINT}."
            return error_response(400, message, "invalid_value", "endpoint")
        if body.get("completion_window") != "24h":
            message = "completion_window must be '24h'."
            return error_response(400, message, "invalid_value", "completion_window")
        metadata = body.get("metadata")
        good = isinstance(metadata, dict) and len(metadata) <= 16
        if metadata is not None and not (good and all(map(_short_strings, metadata.items()))):
            message = "metadata must map at most 16 keys to strings (keys 64, values 512 chars)."
            return error_response(400, message, "invalid_value", "metadata")
        batch = Batch(
            id=_new_id("batch_"),
            input_file_id=file_id,
            completion_window="24h",
            metadata=metadata,
            created=self.server.clock(),
            handle=stored.path.open("rb"),
        )
        self.batches[batch.id] = batch
        self.server.count_batch_api("batches_created")
        view = batch.view(self._expires(batch))
        batch.task = asyncio.get_running_loop().create_task(self._validate(batch))
        return web.json_response(view)

    async def _validate(self, batch: Batch) -> None:
        """Check the input file in a worker thread; the batch fails, or runs from creation."""
        assert batch.handle is not None
        opts = self.server.options
        loop = asyncio.get_running_loop()
        try:
            lines, problems = await loop.run_in_executor(
                None, scan_input, batch.handle, opts.batch_max_requests, opts.batch_max_bytes
            )
        except (OSError, ValueError) as exc:  # the server is stopping, or the disk failed
            message = f"Could not read the file: {exc}"
            lines, problems = [], [_problem("server_error", message, None)]
        if batch.handle.closed:
            return
        if problems:
            batch.errors = problems
            batch.status = "failed"
            batch.times["failed"] = self.server.clock()
            batch.handle.close()
            batch.handle = None
            return
        batch.lines = lines
        # Validation counts as instantaneous: the turnaround runs from creation.
        batch.times["in_progress"] = batch.created
        if batch.status == "validating":
            batch.status = "in_progress"

    async def _observe(self, batch: Batch) -> None:
        """Answer the lines whose time has come, waiting for them a short while at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        started = False
        while batch.status in ACTIVE and loop.time() < deadline:
            if batch.task is None or batch.task.done():
                if started:  # the work this call asked for is done
                    return
                # Work started earlier may have counted the lines due at an earlier time.
                batch.task, started = loop.create_task(self._work(batch)), True
            await asyncio.wait({batch.task}, timeout=deadline - loop.time())

    def _due(self, batch: Batch, now: float) -> int:
        """Return how many lines should be answered by ``now`` (never fewer than done)."""
        total = len(batch.lines)
        end = min(now, self._expires(batch))
        if "cancelling" in batch.times:
            end = min(end, batch.times["cancelling"])
        turnaround = self.server.options.batch_turnaround
        if turnaround <= 0:
            return total
        share = (end - batch.times["in_progress"]) / turnaround
        return max(batch.done, min(total, math.floor(total * max(0.0, share))))

    async def _work(self, batch: Batch) -> None:
        if batch.status == "validating":
            await self._validate(batch)
        if batch.status not in ("in_progress", "cancelling"):
            return
        assert self.folder is not None
        if batch.output is None:
            batch.output = (self.folder / f"{batch.id}.output").open("w", encoding="utf-8")
            batch.error = (self.folder / f"{batch.id}.error").open("w", encoding="utf-8")
        due = self._due(batch, self.server.clock())
        while batch.done < due:
            started = time.perf_counter()
            while batch.done < due and time.perf_counter() - started < SLICE_SECONDS:
                self._run_line(batch)
            await asyncio.sleep(0)
            if batch.handle is None or batch.handle.closed:  # the server stopped
                return
        now = self.server.clock()
        if batch.done >= len(batch.lines):
            await self._finish(batch, "completed", None)
        elif batch.status == "cancelling":
            await self._finish(batch, "cancelled", "batch_cancelled")
        elif now >= self._expires(batch):
            await self._finish(batch, "expired", "batch_expired")

    def _run_line(self, batch: Batch) -> None:
        assert batch.handle is not None and batch.output and batch.error
        offset, length, custom_id = batch.lines[batch.done]
        batch.handle.seek(offset)
        body = json.loads(batch.handle.read(length))["body"]
        outcome = self.server.answer_line(body, self.server.options.batch_failed_lines)
        response = {
            "status_code": outcome.status,
            "request_id": _new_id("req_"),
            "body": outcome.payload,
        }
        record = {"id": _new_id("batch_req_"), "custom_id": custom_id, "response": response}
        record["error"] = None
        if outcome.status == 200:
            batch.completed += 1
            batch.model = batch.model or outcome.payload.get("model")
            usage = outcome.payload.get("usage") or {}
            batch.input_tokens += usage.get("prompt_tokens", 0)
            batch.output_tokens += usage.get("completion_tokens", 0)
            batch.output.write(json.dumps(record) + "\n")
        else:
            batch.failed += 1
            batch.error.write(json.dumps(record) + "\n")
        batch.done += 1

    async def _finish(self, batch: Batch, status: str, unrun_code: str | None) -> None:
        """Write the error lines of the lines never run, publish the files, end the batch."""
        assert batch.output is not None and batch.error is not None and self.folder
        batch.status = "finalizing"
        batch.times["finalizing"] = self.server.clock()
        if unrun_code is not None:
            message = f"This request was not run: the batch was {status} first."
            for index, (_, _, custom_id) in enumerate(batch.lines[batch.done :], 1):
                error = {"code": unrun_code, "message": message}
                record = {"id": _new_id("batch_req_"), "custom_id": custom_id}
                record.update(response=None, error=error)
                batch.error.write(json.dumps(record) + "\n")
                if index % 2000 == 0:
                    await asyncio.sleep(0)
        for kind in ("output", "error"):
            handle = getattr(batch, kind)
            handle.close()
            path = self.folder / f"{batch.id}.{kind}"
            if path.stat().st_size:
                file_id = _new_id("file-")
                path = path.rename(self.folder / file_id)
                self._store(path, f"{batch.id}_{kind}.jsonl", "batch_output", file_id)
                setattr(batch, f"{kind}_file_id", file_id)
            else:
                path.unlink()
        if batch.handle is not None:
            batch.handle.close()
            batch.handle = None
        batch.status = status
        batch.times[status] = self.server.clock()

    def _batch(self, request: web.Request) -> Batch | web.Response:
        batch_id = request.match_info["id"]
        batch = self.batches.get(batch_id)
        if batch is None:
            return error_response(404, f"No such Batch object: {batch_id}", None, "batch_id")
        return batch

    async def _retrieve_batch(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        await self._observe(batch)
        return web.json_response(batch.view(self._expires(batch)))

    async def _list_batches(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        page = _page(request, list(reversed(self.batches.values())), default=20)
        if isinstance(page, web.Response):
            return page
        for batch in page["data"]:
            await self._observe(batch)
        page["data"] = [batch.view(self._expires(batch)) for batch in page["data"]]
        return web.json_response(page)

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        await self._observe(batch)
        if batch.status in ("validating", "in_progress"):
            batch.status = "cancelling"
            batch.times["cancelling"] = self.server.clock()
        elif batch.status not in ("cancelling", "cancelled"):
            message = f"Cannot cancel a batch with status {batch.status!r}."
            return error_response(409, message, "invalid_state", "batch_id")
        return web.json_response(batch.view(self._expires(batch)))


def _page(request: web.Request, items: list[Any], default: int) -> dict[str, Any] | web.Response:
    """Cut one page of a cursor-paginated list (``limit``, ``after``), its items not yet shown."""
    try:
        limit = int(request.query.get("limit", default))
    except ValueError:
        return error_response(400, "limit must be an integer.", "invalid_value", "limit")
    after = request.query.get("after")
    if after:
        ids = [item.id for item in items]
        if after not in ids:
            return error_response(404, f"No such object: {after}", None, "after")
        items = items[ids.index(after) + 1 :]
    page = items[: max(1, limit)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(items) > len(page),
    }


def _short_strings(pair: tuple[Any, Any]) -> bool:
    key, value = pair
    return isinstance(key, str) and isinstance(value, str) and len(key) <= 64 and len(value) <= 512
