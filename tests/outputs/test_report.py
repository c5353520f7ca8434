"""`mmevol report`: one offline HTML file, checked in a real (headless) Chromium.

Chromium is driven over the DevTools protocol through a websocket opened with aiohttp,
already a dependency of mmevol: no playwright, no selenium, no driver binary. The driver
records console errors, uncaught exceptions and every network request of the page, so the
test can check the page is quiet and fetched nothing.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.outputs.report import choose_samples, write_report
from mmevol.store.results import Store

V010 = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0_1_0"
INJECTION = "<img src=x onerror=\"document.title='pwned'\"></script><script>window.pwned=1</script>"


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    """Return the Chromium binary, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class Page:
    """One page of a headless Chromium, with what it logged and fetched."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str) -> None:
        self.ws = ws
        self.session = session
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                self.errors.append(
                    "console: " + " ".join(str(a.get("value", a)) for a in params["args"])
                )
            elif method == "Runtime.exceptionThrown":
                self.errors.append("exception: " + json.dumps(params["exceptionDetails"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.errors.append("log: " + params["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                self.requests.append(params["request"]["url"])
            elif method == "Page.loadEventFired":
                self.loaded.set()

    async def send(self, method: str, **params: Any) -> dict:
        """Send one command to the page and return its result."""
        n = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[n] = future
        await self.ws.send_str(
            json.dumps({"id": n, "method": method, "params": params, "sessionId": self.session})
        )
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its (JSON) value."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page."""
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


class Chromium:
    """A headless Chromium started for one test, with a fresh profile."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.profile = tempfile.mkdtemp(prefix="mmevol-chromium-")
        self.proc: subprocess.Popen | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Chromium:
        self.proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = await asyncio.to_thread(self._devtools_url)
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(url, max_msg_size=0)
        return self

    def _devtools_url(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                # Keep reading its stderr, so a chatty browser never blocks on a full pipe.
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return found[1]
        raise RuntimeError("chromium exited before DevTools listened:\n" + "".join(lines))

    async def new_page(self, width: int = 1280, height: int = 900) -> Page:
        """Open a blank page with console, network and page events switched on."""
        assert self.ws is not None
        # Browser-level commands go without a session; their replies are read here.
        created = await self._browser("Target.createTarget", url="about:blank")
        attached = await self._browser(
            "Target.attachToTarget", targetId=created["targetId"], flatten=True
        )
        page = Page(self.ws, attached["sessionId"])
        for domain in ("Runtime", "Log", "Network", "Page"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page

    async def _browser(self, method: str, **params: Any) -> dict:
        assert self.ws is not None
        n = 1_000_000 + len(method) + id(params) % 1000
        await self.ws.send_str(json.dumps({"id": n, "method": method, "params": params}))
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("id") == n:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
        raise RuntimeError("the browser closed its DevTools connection")

    async def open(self, url: str) -> Page:
        """Open a page at ``url`` and wait for its load event."""
        page = await self.new_page()
        await page.send("Page.navigate", url=url)
        await asyncio.wait_for(page.loaded.wait(), 60)
        return page

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture
def hostile_run(demo_run, tmp_path):
    """A copy of the demo run whose first kept item and judge reason are HTML attacks."""
    folder = tmp_path / "checkpoints" / "demo"
    shutil.copytree(demo_run.checkpoints / "demo", folder)
    with Store(folder / "results.db") as store:
        sample = next(store.finished_samples())
        rnd = sample["rounds"][0]
        kept = [json.loads(i["item"]) | {"score": i["score"]} for i in sample["items"]
                if i["round"] == rnd["round"]]  # fmt: skip
        kept = kept or [{"question": "q", "answer": "a", "score": 9}]
        kept[0]["question"] = INJECTION
        kept[0]["answer"] = "{data} </SCRIPT> <!-- " + INJECTION
        rnd["kept"] = len(kept)
        store.save_round(sample["hash_id"], rnd, kept, [], reasons=[INJECTION] * len(kept))
    return folder / "results.db"


CROWD_LABEL = "a long label for one of many small objects"


@pytest.fixture
def crowded_run(demo_run, tmp_path):
    """A copy of the demo run where one finished sample has 40 boxes (hostile labels among
    them) in three tight clusters, a two-paragraph caption and 12 long kept items."""
    folder = tmp_path / "checkpoints" / "demo"
    shutil.copytree(demo_run.checkpoints / "demo", folder)
    with Store(folder / "results.db") as store:
        sample = max(store.finished_samples(), key=lambda s: len(s["items"]))
        seed = json.loads(sample["seed"])
        centres = (
            [(0.15, 0.2)] * 15 + [(0.9, 0.85)] * 15 + [(0.5 + 0.04 * n, 0.5) for n in range(10)]
        )
        seed["det"] = [
            {
                "label": INJECTION if n == 7 else f"{CROWD_LABEL} #{n + 1}",
                "bbox": [max(0, x - 0.08), max(0, y - 0.08), min(1, x + 0.09), min(1, y + 0.1)],
            }
            for n, (x, y) in enumerate(centres)
        ]
        seed["caption"] = [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": "First paragraph of a long caption. " * 8
             + "\n\nSECOND PARAGRAPH " + "more words of the caption " * 12},
        ]  # fmt: skip
        row = store.sample(sample["hash_id"])
        store.start_sample(row["hash_id"], row["idx"], row["source_id"], seed)
        store.finish_sample(sample["hash_id"], len(sample["rounds"]))
        rnd = sample["rounds"][0]
        kept = [
            {"question": f"Long question {k}: " + "why is this so? " * 20,
             "answer": "Because. " * 30, "format": "Norm", "skills": ["a"], "score": 7}
            for k in range(12)
        ]  # fmt: skip
        store.save_round(sample["hash_id"], rnd | {"kept": 12}, kept, [], reasons=["why"] * 12)
    return folder / "results.db", sample["hash_id"]


def test_the_report_is_one_offline_file(demo_run, tmp_path):
    out = tmp_path / "report.html"
    cli(
        "report",
        "--run",
        "demo",
        "--checkpoints",
        demo_run.checkpoints,
        "-o",
        out,
        "--min-score",
        6,
    )
    page = out.read_text()
    # Nothing to fetch: no external URL in any src, href or CSS url().
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "url(" not in page and "@import" not in page
    assert page.count("data:image/png;base64,") == 4
    assert page.count("data:image/jpeg;base64,") >= 8  # every finished sample, with its image


def test_model_text_cannot_inject_html(hostile_run, tmp_path):
    out = tmp_path / "report.html"
    write_report(hostile_run, out, samples=50)
    page = out.read_text()
    assert "<img src=x" not in page and "window.pwned=1</script>" not in page
    assert page.count("</script>") == 2  # the data block's and the script's own


def test_gallery_is_stratified_over_outcomes_and_operators(demo_run):
    with Store(demo_run.results_db) as store:
        chosen = choose_samples(store, 5)
        everything = choose_samples(store, 1000)
        statuses = {store.sample(h)["status"] for h in chosen}
    assert len(chosen) == 5 and len(set(chosen)) == 5
    assert "failed" in statuses and "done" in statuses  # small strata are dealt in
    assert len(everything) == 12  # 8 done + 4 failed rows, nothing twice
    assert chosen == sorted(chosen, key=everything.index)  # seed order


def test_a_run_made_by_0_1_0_reports_without_judge_reasons(tmp_path):
    shutil.copytree(V010, tmp_path / "old")
    out = tmp_path / "old.html"
    info = write_report(tmp_path / "old" / "checkpoints" / "v010" / "results.db", out)
    assert info.samples == 7  # 3 done + 4 failed; the 3 interrupted are not shown
    assert "judge_reason" not in out.read_text() or '"reason": null' in out.read_text()


@pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it",
)
def test_report_renders_in_headless_chromium(hostile_run, tmp_path):
    out = tmp_path / "report.html"
    write_report(hostile_run, out, samples=300)
    shot = asyncio.run(_browse(out, tmp_path))
    print(f"screenshot: {shot}")


async def _browse(report: Path, tmp_path: Path) -> Path:
    async with Chromium(chromium_path()) as browser:
        page = await browser.open(report.as_uri())
        js = page.evaluate
        # The charts decoded (a broken data URL has naturalWidth 0).
        charts = await js(
            "Array.from(document.querySelectorAll('#charts img')).map(i => i.naturalWidth)"
        )
        assert len(charts) == 4 and all(w > 300 for w in charts)
        assert await js("document.querySelectorAll('table.stats').length") == 5
        cards = await js("document.querySelectorAll('#cards .card').length")
        assert cards == 12
        images = await js(
            "Array.from(document.querySelectorAll('.pic img')).map(i => i.naturalWidth)"
        )
        assert len(images) == 8 and all(w > 0 for w in images)
        assert await js("document.querySelectorAll('.box').length") > 0
        assert await js("document.querySelectorAll('.card.failed').length") == 4
        # The attack is shown as text and ran nothing.
        assert await js("window.pwned === undefined && document.title !== 'pwned'")
        assert await js("document.querySelectorAll('#cards img[onerror]').length") == 0
        assert await js(f"document.body.innerText.includes({json.dumps(INJECTION)})")
        assert await js("document.querySelectorAll('.item .why').length") > 0
        # A filter: only samples that used "reasoning" in round 2.
        await js(
            "(() => { for (const [id, v] of [['f-round', '2'], ['f-operator', 'reasoning']]) {"
            " const s = document.getElementById(id); s.value = v;"
            " s.dispatchEvent(new Event('change')); } })()"
        )
        shown = await js(
            "Array.from(document.querySelectorAll('#cards .card')).map(c => c.dataset.operators)"
        )
        assert 0 < len(shown) < cards
        assert all(ops.split(",")[1] == "reasoning" for ops in shown)
        assert "matching" in await js("document.getElementById('shown').textContent")
        # Back to everything, then a screenshot to look at.
        await js(
            "(() => { for (const id of ['f-round', 'f-operator']) {"
            " const s = document.getElementById(id); s.value = '';"
            " s.dispatchEvent(new Event('change')); } })()"
        )
        shot = await page.screenshot(tmp_path / "report.png")
        artifacts = os.environ.get("MMEVOL_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(artifacts) / "report.png")
        assert page.errors == []
        assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests
        assert base64.b64encode(shot.read_bytes()[:8]) == base64.b64encode(b"\x89PNG\r\n\x1a\n")
        return shot


# What the browser laid out, measured in the page: every rectangle that must not collide.
LAYOUT = """(() => {
  const rect = e => { const r = e.getBoundingClientRect();
    return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; };
  const shown = e => e.checkVisibility();  // false inside a closed <details>
  const clipped = [];
  for (const e of document.querySelectorAll('#cards *')) {
    const style = getComputedStyle(e);
    const cuts = [style.overflowX, style.overflowY].some(o => o !== 'visible');
    const over = e.scrollHeight > e.clientHeight + 1 || e.scrollWidth > e.clientWidth + 1;
    if (shown(e) && cuts && over) {
      clipped.push(e.className || e.tagName);
    }
    if (style.maxHeight !== 'none') { clipped.push('max-height on ' + (e.className || e.tagName)); }
  }
  return {clipped, cards: Array.from(document.querySelectorAll('#cards .card')).map(c => {
    const frame = c.querySelector('.frame'), legend = c.querySelector('ol.labels');
    return {
      id: c.dataset.id, card: rect(c), pic: rect(c.querySelector('.pic')),
      body: rect(c.querySelector('.body')),
      frame: frame && rect(frame),
      boxes: c.querySelectorAll('.box').length,
      tags: Array.from(c.querySelectorAll('.tag')).filter(shown)
        .map(t => ({rect: rect(t), text: t.textContent})),
      legend: legend && shown(legend) ? Array.from(legend.children)
        .map(li => ({rect: rect(li), text: li.textContent, wide: li.scrollWidth > li.clientWidth}))
        : null,
      caption: c.querySelector('.caption') && rect(c.querySelector('.caption')),
      headers: Array.from(c.querySelectorAll('.version h4')).map(rect),
      items: Array.from(c.querySelectorAll('.item')).filter(shown).map(rect),
      closed: c.querySelectorAll('details:not([open])').length,
    };
  })};
})()"""
PLACED = """new Promise(done => { const start = Date.now(); (function wait() {
  const frames = Array.from(document.querySelectorAll('#cards .frame'));
  if (frames.every(f => f.dataset.placed) || Date.now() - start > 20000) { done(frames.length); }
  else { setTimeout(wait, 50); } })(); })"""


def overlap(a: dict, b: dict, slack: float = 0.5) -> bool:
    """Whether two rectangles share more than ``slack`` pixels each way."""
    return (
        min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > slack
        and min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > slack
    )


def inside(a: dict, b: dict, slack: float = 0.5) -> bool:
    """Whether rectangle ``a`` lies within ``b``."""
    return (
        a["x0"] >= b["x0"] - slack
        and a["y0"] >= b["y0"] - slack
        and a["x1"] <= b["x1"] + slack
        and a["y1"] <= b["y1"] + slack
    )


def check_layout(layout: dict) -> None:
    """Box tags apart and inside their image, labels in the picture column, nothing clipped."""
    assert layout["clipped"] == []
    cards = layout["cards"]
    for card in cards:
        assert not overlap(card["pic"], card["body"])
        assert card["pic"]["x1"] <= card["body"]["x0"]
        tags = card["tags"]
        for n, tag in enumerate(tags):
            assert inside(tag["rect"], card["frame"]), (card["id"], tag)
            for other in tags[n + 1 :]:
                assert not overlap(tag["rect"], other["rect"]), (card["id"], tag, other)
        whole = sum(1 for t in tags if " " in t["text"])
        if card["boxes"] and whole < card["boxes"]:
            # Some label is not on the image in full: the list under it names every box.
            assert card["legend"] is not None and len(card["legend"]) == card["boxes"]
        for li in card["legend"] or []:
            assert inside(li["rect"], card["pic"]) and not li["wide"], (card["id"], li)
        if card["caption"]:
            assert not any(overlap(card["caption"], h) for h in card["headers"])
            assert all(card["caption"]["y1"] <= h["y0"] for h in card["headers"])
        for item in card["items"]:
            assert inside(item, card["card"]), (card["id"], item)
    for a, b in itertools.pairwise(cards):
        assert a["card"]["y1"] <= b["card"]["y0"]


@pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it",
)
def test_a_crowded_image_and_a_long_card_lay_out_in_headless_chromium(crowded_run, tmp_path):
    results_db, crowded = crowded_run
    out = tmp_path / "report.html"
    write_report(results_db, out, samples=300)
    shot = asyncio.run(_layout(out, crowded, tmp_path))
    print(f"screenshot: {shot}")


async def _layout(report: Path, crowded: str, tmp_path: Path) -> Path:
    async with Chromium(chromium_path()) as browser:
        page = await browser.open(report.as_uri())
        js = page.evaluate
        assert await js(PLACED) == 8
        layout = await js(LAYOUT)
        check_layout(layout)
        card = next(c for c in layout["cards"] if c["id"] == crowded)
        # 40 boxes: many tags are numbers only or give way, and the list names all 40.
        assert card["boxes"] == 40 and 10 <= len(card["tags"]) < 40
        assert [li["text"] for li in card["legend"]][:2] == [
            f"1{CROWD_LABEL} #1",
            f"2{CROWD_LABEL} #2",
        ]
        assert card["legend"][7]["text"] == "8" + INJECTION  # a label is text, never markup
        assert await js("window.pwned === undefined && document.title !== 'pwned'")
        # The caption's second paragraph is shown whole, above the columns.
        assert await js(
            f"document.querySelector('.card[data-id={json.dumps(crowded)}] .caption')"
            ".textContent.includes('SECOND PARAGRAPH')"
        )
        # A long card shows a few items per version; the rest open from a <details>.
        assert card["closed"] > 0 and len(card["items"]) <= 3 * 4
        shown = len(card["items"])
        # Open everything, then measure again: every item of every card is shown, unclipped.
        await js("document.querySelectorAll('details').forEach(d => { d.open = true; })")
        opened = await js(LAYOUT)
        check_layout(opened)
        card = next(c for c in opened["cards"] if c["id"] == crowded)
        assert card["closed"] == 0 and len(card["items"]) >= shown + 12 - 3  # all 12 of v1
        shot = await page.screenshot(tmp_path / "crowded.png")
        artifacts = os.environ.get("MMEVOL_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(artifacts) / "crowded.png")
        assert page.errors == []
        return shot


@pytest.fixture
def hostile_gated_run(gated_demo_run, tmp_path):
    """A copy of the gated demo run whose first gate row's blind answer and reason attack."""
    folder = tmp_path / "checkpoints" / "gated"
    shutil.copytree(gated_demo_run.checkpoints / "gated", folder)
    with Store(folder / "results.db") as store, store.db.conn:
        store.db.conn.execute(
            "update gates set blind_answer = ?, judge2_reason = ? where rowid ="
            " (select min(rowid) from gates)",
            [INJECTION, INJECTION],
        )
    return folder / "results.db"


def _gated_ids(results_db: Path) -> dict[str, set[str]]:
    """The samples with at least one kept item of each gate verdict, read from the store."""
    with Store(results_db) as store:
        rows = store.rows("gates")
    found: dict[str, set[str]] = {"needs_image": set(), "answerable": set(), "agrees": set(),
                                  "disagrees": set()}  # fmt: skip
    for row in rows:
        if row["blind_verdict"] in found:
            found[row["blind_verdict"]].add(row["hash_id"])
        if row["agreement"] is not None:
            found["agrees" if row["agreement"] >= 0.8 else "disagrees"].add(row["hash_id"])
    return found


@pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it",
)
def test_gate_marks_and_the_gate_filter_in_headless_chromium(hostile_gated_run, demo_run, tmp_path):
    gated = tmp_path / "gated.html"
    write_report(hostile_gated_run, gated, samples=300)
    plain = tmp_path / "plain.html"
    write_report(demo_run.results_db, plain, samples=300)
    page = gated.read_text()
    assert "<img src=x" not in page and page.count("</script>") == 2
    assert page.count("data:image/png;base64,") == 5  # the gates chart too
    expected = _gated_ids(hostile_gated_run)
    assert all(expected.values()), expected  # each verdict occurs, so each filter shows some
    asyncio.run(_browse_gates(gated, plain, expected))


async def _browse_gates(gated: Path, plain: Path, expected: dict[str, set[str]]) -> None:
    async with Chromium(chromium_path()) as browser:
        page = await browser.open(gated.as_uri())
        js = page.evaluate
        cards = await js("document.querySelectorAll('#cards .card').length")
        assert cards == 12
        assert await js("document.getElementById('gate-filter').hidden") is False
        options = await js(
            "Array.from(document.querySelectorAll('#f-gate option')).map(o => o.value)"
        )
        assert options == ["", "needs_image", "answerable", "agrees", "disagrees"]
        # Every kept item carries its marks: one per gate.
        items = await js("document.querySelectorAll('#cards .item .gates').length")
        marks = await js("document.querySelectorAll('#cards .item .gates .mark').length")
        assert items > 0 and marks == 2 * items
        for cls in ("needs_image", "answerable", "agrees", "disagrees"):
            assert await js(f"document.querySelectorAll('.mark.{cls}').length") > 0, cls
        # The attack sits in a mark's title as text, and ran nothing.
        titles = await js("Array.from(document.querySelectorAll('.mark')).map(m => m.title)")
        assert any(INJECTION in t for t in titles)
        assert await js("window.pwned === undefined && document.title !== 'pwned'")
        for want, ids in expected.items():
            await js(
                "(() => { const s = document.getElementById('f-gate');"
                f" s.value = {json.dumps(want)}; s.dispatchEvent(new Event('change')); }})()"
            )
            shown = await js(
                "Array.from(document.querySelectorAll('#cards .card')).map(c => c.dataset.id)"
            )
            assert set(shown) == ids, want
            # Each card shown holds an item with that mark.
            assert await js(
                "Array.from(document.querySelectorAll('#cards .card')).every("
                f"c => c.querySelector('.mark.{want}'))"
            )
        await js(
            "(() => { const s = document.getElementById('f-gate'); s.value = '';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        assert await js("document.querySelectorAll('#cards .card').length") == cards
        assert page.errors == []
        assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests
        # A run without gates shows no gate filter and no mark.
        page.loaded.clear()
        await page.send("Page.navigate", url=plain.as_uri())
        await asyncio.wait_for(page.loaded.wait(), 60)
        assert await js("document.querySelectorAll('#cards .card').length") == 12
        assert await js("document.getElementById('gate-filter').hidden") is True
        assert await js("document.querySelectorAll('.mark').length") == 0
        assert page.errors == []
