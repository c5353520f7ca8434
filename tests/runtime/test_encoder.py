import asyncio
import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from mmevol.runtime.encoder import ImageEncoder, serve
from mmevol.runtime.images import MAX_DECODED_PIXELS, ImageProblem, encode


@pytest.fixture
def pictures(tmp_path):
    Image.new("RGB", (800, 600), "red").save(tmp_path / "a.jpg")
    Image.new("RGBA", (300, 200), (0, 0, 255, 128)).save(tmp_path / "b.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    return tmp_path


@pytest.fixture
def helper_cannot_start(monkeypatch):
    async def cannot_start():
        raise OSError("no such interpreter")

    monkeypatch.setattr("mmevol.runtime.encoder._spawn", cannot_start)


def run(coro):
    return asyncio.run(coro)


def test_the_helper_encodes_exactly_what_the_thread_would(pictures):
    async def go():
        encoder = ImageEncoder()
        try:
            urls = [await encoder.data_url(pictures, name, 512, 85) for name in ("a.jpg", "b.png")]
            assert encoder.uses_helper and encoder._proc is not None
            return urls, encoder._proc
        finally:
            await encoder.aclose()

    urls, proc = run(go())
    assert urls == [encode(pictures / "a.jpg", "a.jpg"), encode(pictures / "b.png", "b.png")]
    assert proc.returncode == 0  # closing stdin ended it


def test_each_image_is_encoded_once_even_when_asked_at_once(pictures):
    async def go():
        encoder = ImageEncoder()
        try:
            urls = await asyncio.gather(
                *(encoder.data_url(pictures, "a.jpg", 512, 85) for _ in range(5))
            )
            await encoder.data_url(pictures, "a.jpg", 512, 85)
            await encoder.data_url(pictures, "a.jpg", 256, 85)  # other settings, other entry
            return urls, encoder._next_id
        finally:
            await encoder.aclose()

    urls, requests = run(go())
    assert len(set(urls)) == 1 and requests == 2


def test_a_replaced_image_is_encoded_again(pictures):
    async def go():
        encoder = ImageEncoder()
        try:
            first = await encoder.data_url(pictures, "a.jpg", 512, 85)
            path = pictures / "a.jpg"
            Image.new("RGB", (32, 32), "green").save(path)
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
            return first, await encoder.data_url(pictures, "a.jpg", 512, 85)
        finally:
            await encoder.aclose()

    first, second = run(go())
    assert second != first and second == encode(pictures / "a.jpg", "a.jpg")


def test_a_bad_image_fails_alone_and_the_helper_goes_on(pictures):
    notices = []

    async def go():
        encoder = ImageEncoder(on_notice=notices.append)
        try:
            with pytest.raises(ImageProblem, match="'bad.jpg' is not a readable image"):
                await encoder.data_url(pictures, "bad.jpg", 512, 85)
            with pytest.raises(ImageProblem, match="not found"):
                await encoder.data_url(pictures, "gone.jpg", 512, 85)
            assert await encoder.data_url(pictures, "a.jpg", 512, 85)
            # A failure is not cached: a repaired file is read again.
            Image.new("RGB", (10, 10), "green").save(pictures / "bad.jpg", "JPEG")
            assert await encoder.data_url(pictures, "bad.jpg", 512, 85)
            return encoder.uses_helper
        finally:
            await encoder.aclose()

    assert run(go()) is True
    assert notices == []


def test_when_the_helper_dies_the_thread_takes_over_and_says_so_once(pictures):
    notices = []

    async def go():
        encoder = ImageEncoder(on_notice=notices.append)
        try:
            first = await encoder.data_url(pictures, "a.jpg", 512, 85)
            encoder._proc.kill()
            await encoder._proc.wait()
            await asyncio.sleep(0.05)  # the reader sees the pipe close
            second = await encoder.data_url(pictures, "b.png", 512, 85)
            third = await encoder.data_url(pictures, "a.jpg", 300, 85)
            return first, second, third, encoder.uses_helper
        finally:
            await encoder.aclose()

    first, second, third, uses_helper = run(go())
    assert second == encode(pictures / "b.png", "b.png")
    assert third == encode(pictures / "a.jpg", "a.jpg", 300)
    assert first and not uses_helper
    assert len(notices) == 1 and "image helper exited" in notices[0]


def test_requests_waiting_on_a_dying_helper_are_still_answered(pictures):
    notices = []

    async def go():
        encoder = ImageEncoder(on_notice=notices.append)
        try:
            await encoder.data_url(pictures, "b.png", 512, 85)  # started
            asks = [
                asyncio.ensure_future(encoder.data_url(pictures, "a.jpg", side, 85))
                for side in (100, 200, 300, 400)
            ]
            encoder._proc.kill()
            return await asyncio.gather(*asks)
        finally:
            await encoder.aclose()

    urls = run(go())
    assert urls == [encode(pictures / "a.jpg", "a.jpg", side) for side in (100, 200, 300, 400)]
    assert len(notices) <= 1  # the helper may have answered all four before it died


def test_a_helper_that_cannot_start_is_replaced_by_the_thread(pictures, helper_cannot_start):
    notices = []

    async def go():
        encoder = ImageEncoder(on_notice=notices.append)
        try:
            return await encoder.data_url(pictures, "a.jpg", 512, 85)
        finally:
            await encoder.aclose()

    assert run(go()) == encode(pictures / "a.jpg", "a.jpg")
    assert notices == [
        "the image helper could not start (no such interpreter); "
        "encoding images in a thread for the rest of the run"
    ]


def test_without_the_helper_no_process_starts(pictures):
    async def go():
        encoder = ImageEncoder(helper=False)
        url = await encoder.data_url(pictures, "a.jpg", 512, 85)
        await encoder.aclose()
        return url, encoder._proc

    url, proc = run(go())
    assert url == encode(pictures / "a.jpg", "a.jpg") and proc is None


def test_the_helper_survives_ctrl_c(pictures):
    async def go():
        encoder = ImageEncoder()
        try:
            await encoder.data_url(pictures, "a.jpg", 512, 85)
            # A Ctrl-C reaches the whole foreground process group; samples still in
            # flight after the first one need their images.
            os.kill(encoder._proc.pid, signal.SIGINT)
            await asyncio.sleep(0.2)
            url = await encoder.data_url(pictures, "b.png", 512, 85)
            return url, encoder.uses_helper
        finally:
            await encoder.aclose()

    url, uses_helper = run(go())
    assert uses_helper and url == encode(pictures / "b.png", "b.png")


def test_serve_answers_each_line_and_names_the_problem(pictures):
    lines = [
        b'{"id": 1, "path": "%s", "relative": "a.jpg", "max_side": 64, "quality": 80}\n'
        % str(pictures / "a.jpg").encode(),
        b'{"id": 2, "path": "%s", "relative": "bad.jpg", "max_side": 64, "quality": 80}\n'
        % str(pictures / "bad.jpg").encode(),
    ]
    out = io.BytesIO()
    previous = signal.getsignal(signal.SIGINT)
    try:
        serve(io.BytesIO(b"".join(lines)), out)
    finally:
        signal.signal(signal.SIGINT, previous)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert answers[0] == {"id": 1, "url": encode(pictures / "a.jpg", "a.jpg", 64, 80)}
    assert answers[1]["id"] == 2 and "'bad.jpg' is not a readable image" in answers[1]["problem"]


def test_a_decompression_bomb_is_a_problem_of_its_sample(pictures, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageProblem, match="'a.jpg' is too large to decode"):
        encode(pictures / "a.jpg", "a.jpg")


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_helper_does_not_outlive_a_killed_run(pictures):
    script = (
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from mmevol.runtime.encoder import ImageEncoder\n"
        "async def main():\n"
        "    encoder = ImageEncoder()\n"
        f"    await encoder.data_url(Path({str(pictures)!r}), 'a.jpg', 512, 85)\n"
        "    print(encoder._proc.pid, flush=True)\n"
        "    time.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        helper = int(run.stdout.readline())
        assert _alive(helper)
        run.kill()
        run.wait()
        deadline = time.monotonic() + 5
        while _alive(helper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(helper)
    finally:
        run.kill()
        run.wait()


def test_start_brings_the_helper_up_before_the_first_image(pictures):
    async def go():
        encoder = ImageEncoder()
        encoder.start()
        await asyncio.sleep(0)
        for _ in range(200):  # its interpreter is starting; no image has been asked for
            if encoder._proc is not None:
                break
            await asyncio.sleep(0.01)
        started = encoder._proc
        url = await encoder.data_url(pictures, "a.jpg", 512, 85)
        same = encoder._proc is started
        await encoder.aclose()
        return started, same, url

    started, same, url = run(go())
    assert started is not None and same and url == encode(pictures / "a.jpg", "a.jpg")


def test_start_of_a_helper_that_cannot_run_only_notices(pictures, helper_cannot_start):
    notices = []

    async def go():
        encoder = ImageEncoder(on_notice=notices.append)
        encoder.start()
        await encoder.aclose()
        return encoder._proc

    assert run(go()) is None
    assert len(notices) == 1 and "could not start" in notices[0]


def test_the_helper_refuses_an_image_too_large_to_decode_and_goes_on(pictures):
    side = math.isqrt(MAX_DECODED_PIXELS) + 1
    Image.new("1", (side, side)).save(pictures / "huge.png")  # 1 bit a pixel: small file

    async def go():
        encoder = ImageEncoder()
        try:
            with pytest.raises(ImageProblem, match=r"'huge.png' is \d+x\d+ pixels, more than"):
                await encoder.data_url(pictures, "huge.png", 512, 85)
            url = await encoder.data_url(pictures, "a.jpg", 512, 85)
            return url, encoder.uses_helper
        finally:
            await encoder.aclose()

    url, uses_helper = run(go())
    assert uses_helper and url == encode(pictures / "a.jpg", "a.jpg")


def test_leaving_an_async_with_block_stops_the_helper(pictures):
    async def go():
        async with ImageEncoder() as encoder:
            url = await encoder.data_url(pictures, "a.jpg", 512, 85)
            proc = encoder._proc
        return url, proc, encoder

    url, proc, encoder = run(go())
    assert url == encode(pictures / "a.jpg", "a.jpg")
    assert proc is not None and proc.returncode == 0  # its stdin closed, it exited
    assert not encoder.uses_helper
