"""Encode sample images in a helper process, so Pillow never competes with the event loop.

A batch run sends each sample's image with every evolution call, downscaled and
re-encoded as a JPEG data URL (``mmevol.runtime.images.encode``). Done in a thread of the
orchestrating process, that work holds the GIL between Pillow's C calls: on a loaded
loop each hand-over stalls the loop, and a benchmark run spent ~10 ms of CPU per sample
on it, as much as a sixth of the orchestration. ``ImageEncoder`` instead hands the work
to one helper process (``python -m mmevol.runtime.encoder``) over its stdin and stdout, which
the event loop reads like any other pipe: no thread, no lock.

Protocol, one JSON object per line:
    request  ``{"id": 7, "path": "/abs/img.jpg", "relative": "img.jpg", "max_side": 512,
    "quality": 85}``
    answer   ``{"id": 7, "url": "data:image/jpeg;base64,..."}`` or
    ``{"id": 7, "problem": "image 'img.jpg' is not a readable image (...)"}``

The helper runs in its own session and ignores Ctrl-C (a first Ctrl-C lets in-flight
samples finish, and they still need their images); it exits when its stdin closes, so it
never outlives the process that started it, even one that is killed. If it cannot start
or dies, the encoder says so once and encodes in a thread for the rest of the run;
nothing fails because of it.

Encoded images are cached by file, modification time and settings (a sample sends the
same image in each round); two samples asking for the same image at once share one
encoding. Image bytes never reach graph state: they live in this cache and in requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from mmevol.runtime import images

log = logging.getLogger("mmevol")

LINE_LIMIT = 256 * 2**20
"""Longest answer line read from the helper: the data URL of a very large image."""

_Key = tuple[str, int, int, int]


class HelperGone(RuntimeError):
    """The helper process cannot take requests (it did not start, or it exited)."""


class ImageEncoder:
    """Encode images to data URLs, in a helper process or (fallback) in a thread.

    Example:
        async with ImageEncoder() as encoder:
            url = await encoder.data_url(Path("images"), "coco/1.jpg", 512, 85)
    """

    def __init__(
        self,
        *,
        helper: bool = True,
        cache_size: int = 256,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        """Prepare the encoder; the helper starts with ``start`` or on the first image.

        Args:
            helper: Encode in a helper process; False encodes in a thread (one sample at a
                time, as trace and replay run, gains nothing from a process).
            cache_size: Encoded images kept.
            on_notice: Told once when the helper fails and the thread takes over.
        """
        self.cache_size = cache_size
        self.on_notice = on_notice or (lambda text: log.warning(text))
        self._cache: collections.OrderedDict[_Key, asyncio.Future[str]] = collections.OrderedDict()
        # Where each (root, seed path) resolved to: a sample asks for its image every round.
        self._paths: collections.OrderedDict[tuple[Path, str], Path] = collections.OrderedDict()
        self._broken: str | None = None if helper else "not wanted"
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._start_lock: asyncio.Lock | None = None
        self._warming: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[str]] = {}
        self._next_id = 0

    @property
    def uses_helper(self) -> bool:
        """Return True while images go to the helper process."""
        return self._broken is None

    def start(self) -> None:
        """Start the helper now, in the background, rather than on the first image.

        Its interpreter takes a few hundred milliseconds to start; a run starts it while
        it opens its databases and reads the first rows.
        """
        if self._broken is None and self._warming is None:
            self._warming = asyncio.ensure_future(self._warm())

    async def _warm(self) -> None:
        with contextlib.suppress(HelperGone):  # noticed in _give_up; images use the thread
            await self._started()

    async def data_url(self, root: Path, relative: str, max_side: int, quality: int) -> str:
        """Return the image as a base64 JPEG data URL (see ``mmevol.runtime.images.encode``).

        Raises:
            ImageProblem: The image is missing, escapes the root or cannot be read.
        """
        path = self._resolve(root, relative)
        try:
            key = (str(path), path.stat().st_mtime_ns, max_side, quality)
        except OSError as err:  # removed or made unreadable a moment ago
            raise images.ImageProblem(f"image {relative!r} cannot be read ({err})") from err
        future = self._cache.get(key)
        if future is None:
            future = asyncio.ensure_future(self._encode(key, relative))
            future.add_done_callback(lambda done: self._forget_failure(key, done))
            self._cache[key] = future
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        # Shielded: a sample cancelled while waiting must not cancel a shared encoding.
        return await asyncio.shield(future)

    def _resolve(self, root: Path, relative: str) -> Path:
        """Resolve the image under the root once (names the sample's problem if it cannot)."""
        found = self._paths.get((root, relative))
        if found is None:
            found = images.resolve(root, relative)
            self._paths[(root, relative)] = found
            if len(self._paths) > self.cache_size:
                self._paths.popitem(last=False)
        return found

    def _forget_failure(self, key: _Key, done: asyncio.Future[str]) -> None:
        if (done.cancelled() or done.exception() is not None) and self._cache.get(key) is done:
            del self._cache[key]

    async def _encode(self, key: _Key, relative: str) -> str:
        path, _, max_side, quality = key
        if self._broken is None:
            try:
                return await self._ask_helper(path, relative, max_side, quality)
            except HelperGone:
                pass  # noticed once in _give_up; the thread below takes over
        return await asyncio.to_thread(images.encode, path, relative, max_side, quality)

    async def _ask_helper(self, path: str, relative: str, max_side: int, quality: int) -> str:
        proc = await self._started()
        self._next_id += 1
        request_id = self._next_id
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        request = {
            "id": request_id,
            "path": path,
            "relative": relative,
            "max_side": max_side,
            "quality": quality,
        }
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as err:
            self._pending.pop(request_id, None)
            self._give_up(f"the image helper stopped taking requests ({err})")
            raise HelperGone from err
        return await answer

    async def _started(self) -> asyncio.subprocess.Process:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._broken is not None:
                raise HelperGone(self._broken)
            if self._proc is None:
                try:
                    self._proc = await _spawn()
                except OSError as err:
                    self._give_up(f"the image helper could not start ({err})")
                    raise HelperGone from err
                self._reader = asyncio.create_task(self._read(self._proc))
            return self._proc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        why = "the image helper exited"
        try:
            while line := await proc.stdout.readline():
                message = json.loads(line)
                answer = self._pending.pop(message["id"], None)
                if answer is None or answer.done():
                    continue
                if "url" in message:
                    answer.set_result(message["url"])
                else:
                    answer.set_exception(images.ImageProblem(message["problem"]))
        except (ValueError, KeyError) as err:  # a garbled or over-long line
            why = f"the image helper sent an unreadable answer ({err})"
        finally:
            if self._proc is proc:
                self._give_up(why)

    def _give_up(self, why: str) -> None:
        """Stop using the helper: waiting requests go to the thread, and so will new ones."""
        if self._broken is not None:
            return
        self._broken = why
        self.on_notice(f"{why}; encoding images in a thread for the rest of the run")
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            if not answer.done():
                answer.set_exception(HelperGone(why))

    async def __aenter__(self) -> ImageEncoder:
        """Return the encoder; leaving the block stops its helper (see ``aclose``)."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the helper and wait for it."""
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the helper (it exits when its stdin closes) and wait for it."""
        if self._warming is not None:
            await self._warming
        proc, self._proc = self._proc, None
        if self._broken is None:
            self._broken = "closed"
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader


async def _spawn() -> asyncio.subprocess.Process:
    """Start ``python -P -m mmevol.runtime.encoder``.

    ``-P`` keeps the working folder off ``sys.path``, so a folder there that happens to
    be called ``mmevol`` cannot stand in for the installed package.
    """
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "mmevol.runtime.encoder",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=LINE_LIMIT,
        # Its own session: a Ctrl-C or a job control signal aimed at the terminal's
        # process group is for mmevol to act on, not for the helper.
        start_new_session=True,
    )


def serve(stdin=None, stdout=None) -> None:
    """Answer encoding requests from stdin until it closes (the helper's main loop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    for line in stdin:
        request = json.loads(line)
        answer: dict[str, object] = {"id": request["id"]}
        try:
            answer["url"] = images.encode(
                request["path"], request["relative"], request["max_side"], request["quality"]
            )
        except images.ImageProblem as err:
            answer["problem"] = str(err)
        stdout.write(json.dumps(answer).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    serve()
