"""Shared pieces of the benchmarks: seeds, the simulated endpoint in its own process,
a timed mmevol run, and a plain asyncio client making the same calls.

Nothing here is imported by the package: the benchmarks are run by hand or by a CI smoke
step, and each prints one line per result.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # `python bench/x.py` puts bench/ first on the path, not the repository root.
    sys.path.insert(0, str(REPO))

LOOPBACK = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")


def loopback_only() -> None:
    """Keep every request of this process (and its children) on 127.0.0.1.

    httpx honours proxy variables, and langchain sends traces when LangSmith tracing is on;
    neither may take a benchmark's traffic off the machine. (Setting NO_PROXY instead
    would make langchain-openai print a proxy warning.)
    """
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        os.environ.pop(name, None)
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        os.environ.pop(name, None)


loopback_only()


# -- seeds ------------------------------------------------------------------------------

POOL = 24
"""Distinct synthetic images drawn per seed. Each row still gets an image file of its own
(a hard link to a pool image, a copy where links are not possible): drawing 10,000 images
would take minutes and hundreds of MB, and a shared path would let mmevol's per-image
encoding cache serve one sample's image to another, which a real seed never allows."""


def make_seed(out_dir: Path, n: int, *, pool: int = POOL, seed: int = 0) -> tuple[Path, Path]:
    """Write an ``n``-row JSONL seed over ``pool`` drawn images; return (seed, image root).

    The demo seed's row 1 (25 items, three chunks) is left out so that every sample
    makes the method's 6 calls (3 rounds x evolve + score) when nothing is retried.
    Each row gets a unique hash_id and its own image path.
    """
    from mmevol.sim.demo_seed import MANY_ITEMS_INDEX, make_demo_seed

    out_dir = Path(out_dir)
    pool_seed, pool_images = make_demo_seed(out_dir / "pool", n=pool + 1, seed=seed)
    rows = [json.loads(line) for line in pool_seed.read_text(encoding="utf-8").splitlines()]
    rows = [r for i, r in enumerate(rows) if i != MANY_ITEMS_INDEX][:pool]
    images = out_dir / "images"
    (images / "rows").mkdir(parents=True, exist_ok=True)
    path = out_dir / f"seed_{n}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = dict(rows[i % len(rows)])
            source = pool_images / row["image"]
            row["image"] = f"rows/{i:06d}{source.suffix}"
            try:
                os.link(source, images / row["image"])
            except OSError:
                shutil.copyfile(source, images / row["image"])
            row["hash_id"] = f"{i}_{row['image'].replace('/', '_')}"
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path, images


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder removed on the way out, whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=f"mmevol-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the simulated endpoint, in its own process -------------------------------------------

_SIM_MAIN = """
import sys
from mmevol.sim.server import SimOptions, SimServer
import time
opts = SimOptions(**{options!r})
srv = SimServer(opts, host="127.0.0.1", port=0).start()
print(srv.base_url, flush=True)
try:
    while True:
        time.sleep(3600)
except KeyboardInterrupt:
    pass
finally:
    srv.stop()
"""


class SimProcess:
    """The project's simulated endpoint served by a separate Python process.

    A separate process keeps the server's CPU work off the GIL of the client being
    measured (the machine has 2 cores: one for the client, one for the server).
    """

    def __init__(
        self, latency_ms: float = 0.0, heavy: bool = False, seed: int = 0, **options: Any
    ) -> None:
        """Remember the options (any other ``SimOptions`` field by name); ``start`` launches."""
        options = {
            "seed": seed,
            "latency_ms": float(latency_ms),
            "latency_dist": "heavy" if heavy else "fixed",
            **options,
        }
        self.code = _SIM_MAIN.format(options=options)
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> SimProcess:
        """Launch the server and wait until it prints its URL."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.code],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # a Ctrl-C on the benchmark does not hit it mid-request
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith(f"http://{LOOPBACK}:"):
            self.stop()
            raise RuntimeError(f"the simulated endpoint did not start (printed {line!r})")
        self.base_url = line
        return self

    def stop(self) -> None:
        """Stop the server process (terminate, then kill) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> SimProcess:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop the server."""
        self.stop()

    def _get(self, path: str, method: str = "GET", payload: dict | None = None) -> dict:
        root = self.base_url.removesuffix("/v1")
        data = None if method == "GET" else json.dumps(payload or {}).encode()
        req = urllib.request.Request(root + path, method=method, data=data)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict:
        """Return the server's counters (requests, by_kind, faults)."""
        stats = self._get("/sim/stats")
        stats.pop("bodies", None)
        return stats

    def behaviour(self, kind: str | None, **fields: Any) -> None:
        """Answer every chat request one way until called with None (``set_behaviour``)."""
        self._get("/sim/behaviour", "POST", {"kind": kind, **fields})

    def reset(self) -> None:
        """Clear the server's counters and its memory of request bodies."""
        self._get("/sim/reset", "POST")

    def cpu_seconds(self) -> float:
        """Return the CPU time the server process has used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


# -- measurements -----------------------------------------------------------------------


@dataclass
class Result:
    """What one timed run did."""

    label: str
    samples: int
    seconds: float
    cpu: float
    """CPU seconds of this process (all threads) during the run."""
    calls: int
    failed: int = 0
    sim_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    finished: list[float] = field(default_factory=list)
    """When each sample finished (``time.time()``), where the client records it."""

    @property
    def rate(self) -> float:
        """Samples per second."""
        return self.samples / self.seconds if self.seconds else 0.0

    def steady_rate(self, concurrency: int) -> float | None:
        """Samples per second while every one of ``concurrency`` slots was busy.

        A client that starts a new sample as soon as one finishes starts the last one when
        sample ``n - c`` finishes; before sample ``c`` finishes the first wave is still
        under way. Between those two finishes ``c`` samples are always in flight, which
        is the situation ``c / (calls per sample x latency)`` describes and what all but
        the first and last minutes of a long run look like. None when the run is too
        short to have such a stretch (fewer than ``2c + 2`` finishes recorded).
        """
        times = sorted(self.finished)
        n, c = len(times), concurrency
        if n < 2 * c + 2 or times[n - c - 1] <= times[c - 1]:
            return None
        return (n - 2 * c) / (times[n - c - 1] - times[c - 1])

    @property
    def calls_per_sample(self) -> float:
        """Model calls per finished sample."""
        return self.calls / self.samples if self.samples else 0.0

    @property
    def cpu_ms_per_sample(self) -> float:
        """Client CPU milliseconds per sample."""
        return 1000 * self.cpu / self.samples if self.samples else 0.0

    @property
    def sim_busy(self) -> float:
        """Share of the wall time the server process spent on a CPU."""
        return self.sim_cpu / self.seconds if self.seconds else 0.0


def timed(label: str, samples_fn, sim: SimProcess | None, fn) -> Result:
    """Call ``fn()`` and time it (wall, own and ended children's CPU, server CPU).

    When ``fn()`` returns a coroutine it is run on a fresh loop with mmevol's loop and
    garbage-collector settings (``run.eventloop``), so that the bare loop and mmevol
    run on the same loop and a ratio measures orchestration alone. The CPU of mmevol's
    worker processes, when it has any, is what their reports say (``worker_cpu`` in
    the result's ``extra``), added to this process's own.
    """
    import inspect

    from mmevol.run import eventloop
    from mmevol.run.workers import cpu_with_children

    if sim is not None:
        sim.reset()
        sim_before = sim.cpu_seconds()
    wall, cpu = time.perf_counter(), cpu_with_children()
    outcome = fn()
    if inspect.iscoroutine(outcome):
        outcome = eventloop.run(outcome)
    wall, cpu = time.perf_counter() - wall, cpu_with_children() - cpu
    result = samples_fn(outcome)
    result.label, result.seconds = label, wall
    result.cpu = cpu + result.extra.get("worker_cpu", 0.0)
    if sim is not None:
        result.sim_cpu = sim.cpu_seconds() - sim_before
        if not result.calls:
            result.calls = sim.stats()["requests"]
    return result


def run_mmevol(
    sim: SimProcess | None,
    base_url: str,
    seed: Path,
    images: Path,
    workdir: Path,
    *,
    concurrency: int,
    label: str = "mmevol",
    keep: bool = False,
    **settings: Any,
) -> Result:
    """Run the real runner over a seed (fresh run folder) and time it.

    ``workers=N`` in ``settings`` runs N worker processes, as ``mmevol run --workers N``.
    """
    from mmevol.graph.config import Settings
    from mmevol.run import runner

    checkpoints = Path(tempfile.mkdtemp(prefix="ckpt-", dir=workdir))
    config = Settings(
        run="bench",
        checkpoints=checkpoints,
        images=images,
        base_url=base_url,
        api_key="bench",
        concurrency=concurrency,
        max_retries=2,
        **settings,
    )

    def summarise(report) -> Result:
        return Result(
            label,
            report.done,
            0,
            0,
            count_calls(config.results_db),
            report.failed,
            extra={"run_dir": config.run_dir, "worker_cpu": report.worker_cpu},
            finished=finish_times(config.results_db),
        )

    try:
        return timed(label, summarise, sim, lambda: runner.run(config, seed))
    finally:
        if not keep:
            shutil.rmtree(checkpoints, ignore_errors=True)


def count_calls(results_db: Path) -> int:
    """Return the number of model calls a run recorded."""
    from mmevol.store.results import Store

    with Store(results_db) as store:
        return store.count("calls")


def finish_times(results_db: Path) -> list[float]:
    """Return when each finished sample of a run finished (``time.time()``)."""
    from mmevol.store.results import Store

    with Store(results_db) as store:
        return store.finish_times()


def peak_rss_mb() -> float:
    """Return this process's peak resident set size so far, in MB (Linux: KiB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Return this process's current resident set size, in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return statistics.median(values)


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"
