"""Footprint: peak memory and database bytes per finished sample, and flat memory as the
seed grows.

Each seed size runs in a fresh child process (so that ``ru_maxrss``, the peak resident set
size, belongs to that run alone) against the simulated endpoint (no latency) in another
process. Reported per size: peak RSS, RSS right before the run (imports done), and the
bytes of graph.sqlite (LangGraph checkpoints) and results.db per finished sample. Memory is
flat when peak RSS barely moves while the seed grows (goal: largest / smallest <= 1.25).

    python bench/footprint.py                        # 1,000 and 4,000 samples: ~8 min
    python bench/footprint.py --sizes 2500,10000     # the 10,000-sample figure: ~20 min
    python bench/footprint.py --smoke                # 30 and 90 samples: seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SimProcess, make_seed, peak_rss_mb, rss_mb, scratch, verdict  # noqa: E402

GOAL = 1.25


def watch_image_helper() -> list[float]:
    """Record the image helper's peak RSS (MB) as each run closes it.

    Read from /proc before it exits: the kernel's ``RUSAGE_CHILDREN`` figure would count
    the pages the helper shared with this process between fork and exec.
    """
    from mmevol.runtime.encoder import ImageEncoder

    peaks: list[float] = []
    close = ImageEncoder.aclose

    async def aclose(self: ImageEncoder) -> None:
        if self._proc is not None:
            for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        await close(self)

    ImageEncoder.aclose = aclose
    return peaks


def child(args: argparse.Namespace) -> int:
    """Run one seed in this process and print what it cost as one JSON line."""
    from _common import run_mmevol  # imports graph/ and nodes/ before the baseline

    import mmevol.run.runner  # noqa: F401

    helper_peaks = watch_image_helper()
    before = rss_mb()
    result = run_mmevol(
        None,
        args.base_url,
        Path(args.seed),
        Path(args.images),
        Path(args.workdir),
        concurrency=args.concurrency,
        keep=True,
        **({"keep_history": True} if args.keep_history else {}),
    )
    print(
        json.dumps(
            {
                "done": result.samples,
                "failed": result.failed,
                "seconds": result.seconds,
                "cpu": result.cpu,
                "calls": result.calls,
                "rss_before_mb": before,
                "rss_end_mb": rss_mb(),
                "peak_rss_mb": peak_rss_mb(),
                "helper_peak_rss_mb": max(helper_peaks, default=0.0),
                "run_dir": str(result.extra["run_dir"]),
            }
        ),
        flush=True,
    )
    return 0


def db_bytes(run_dir: Path, name: str) -> int:
    """Bytes of a SQLite database with its -wal and -shm files, if any are left."""
    return sum(p.stat().st_size for p in run_dir.glob(name + "*") if p.is_file())


def measure(size: int, sim: SimProcess, tmp: Path, concurrency: int, keep_history: bool) -> dict:
    """Run one seed size in a child process and return its figures."""
    seed, images = make_seed(tmp / f"seed{size}", size)
    work = tmp / f"run{size}"
    work.mkdir()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--seed",
        str(seed),
        "--images",
        str(images),
        "--workdir",
        str(work),
        "--base-url",
        sim.base_url,
        "--concurrency",
        str(concurrency),
    ] + (["--keep-history"] if keep_history else [])
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"footprint: the {size}-sample run failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["wall"] = time.perf_counter() - started
    run_dir = Path(figures["run_dir"])
    figures["graph_bytes"] = db_bytes(run_dir, "graph.sqlite")
    figures["results_bytes"] = db_bytes(run_dir, "results.db")
    figures["size"] = size
    if figures["failed"] or figures["done"] != size:
        raise SystemExit(f"footprint: {figures['done']} of {size} samples finished")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="1000,4000",
        help="comma-separated seed sizes, smallest first (default 1000,4000)",
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--keep-history",
        action="store_true",
        help="keep every checkpoint of finished samples (Settings.keep_history)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--seed", "--images", "--workdir", "--base-url"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.smoke:
        args.sizes, args.concurrency = "30,90", 16
    sizes = sorted(int(s) for s in args.sizes.split(","))

    runs = []
    with scratch("footprint") as tmp, SimProcess(latency_ms=0) as sim:
        for size in sizes:
            runs.append(measure(size, sim, tmp, args.concurrency, args.keep_history))
            # The run folders go as soon as they are measured: 10,000 samples take ~1 GB.
            for path in sorted((tmp / f"run{size}").rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()

    for r in runs:
        n = r["done"]
        print(
            f"footprint: {n} samples, peak RSS {r['peak_rss_mb']:.0f} MB (before run "
            f"{r['rss_before_mb']:.0f} MB, at end {r['rss_end_mb']:.0f} MB; image helper "
            f"{r['helper_peak_rss_mb']:.0f} MB), graph.sqlite "
            f"{r['graph_bytes'] / n / 1024:.1f} KiB/sample ({r['graph_bytes'] / 2**20:.1f} MB), "
            f"results.db {r['results_bytes'] / n / 1024:.1f} KiB/sample "
            f"({r['results_bytes'] / 2**20:.1f} MB) [{r['seconds']:.0f} s, "
            f"{n / r['seconds']:.1f} samples/s, concurrency {args.concurrency}"
            f"{', keep_history' if args.keep_history else ''}]",
            flush=True,
        )
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        grow = (large["peak_rss_mb"] - large["rss_before_mb"]) / max(
            1e-9, small["peak_rss_mb"] - small["rss_before_mb"]
        )
        print(
            f"footprint-flat: peak RSS {small['peak_rss_mb']:.0f} MB at {small['size']} samples, "
            f"{large['peak_rss_mb']:.0f} MB at {large['size']} samples "
            f"({large['size'] / small['size']:.1f}x the seed), ratio {ratio:.2f} "
            f"(goal <= {GOAL}) {verdict(ratio <= GOAL)} [growth during the run "
            f"{grow:.2f}x]",
            flush=True,
        )
        if args.strict and ratio > GOAL:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
