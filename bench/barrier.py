"""Barrier-free scheduling under heavy-tailed latency.

The same workload as bench/latency.py (64 samples in flight, 500 ms median per call) but
with lognormal latency (sigma 1: p90 ~3.6x, p99 ~10x the median, capped at 30x). Three
runs over the same seed:

- plain asyncio loop, barrier-free: each sample runs its 3 rounds on its own;
- the same plain loop with a barrier between rounds, as in the authors' engine (every
  sample finishes round r before any sample starts round r + 1);
- mmevol's runner (barrier-free by design).

Printed: (a) barrier-free / barrier for identical plain code, the scheduling effect
alone, and (b) mmevol / barrier baseline. Goal: mmevol beats the barrier baseline (> 1).

    python bench/barrier.py             # 640 samples: ~3-4 min
    python bench/barrier.py --smoke     # 48 samples, 16 in flight, 50 ms median: seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bare import run_bare  # noqa: E402
from _common import SimProcess, make_seed, run_mmevol, scratch, timed, verdict  # noqa: E402
from overhead import bare_result, check  # noqa: E402

GOAL = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=500.0, help="median latency")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.concurrency, args.latency_ms = 48, 16, 50.0
    conc = args.concurrency

    with scratch("barrier") as tmp, SimProcess(latency_ms=args.latency_ms, heavy=True) as sim:
        seed, images = make_seed(tmp / "seed", args.samples)
        warm, warm_images = make_seed(tmp / "warm", 4)
        url = sim.base_url
        run_mmevol(sim, url, warm, warm_images, tmp, concurrency=4)  # imports and caches
        free = timed(
            "plain barrier-free",
            bare_result("free"),
            sim,
            lambda: run_bare(url, seed, images, concurrency=conc),
        )
        check(free, args.samples)
        barrier = timed(
            "plain with barrier",
            bare_result("barrier"),
            sim,
            lambda: run_bare(url, seed, images, concurrency=conc, barrier=True),
        )
        check(barrier, args.samples)
        ours = run_mmevol(sim, url, seed, images, tmp, concurrency=conc)
        check(ours, args.samples)

    setup = (
        f"{args.samples} samples, concurrency {conc}, lognormal latency median "
        f"{args.latency_ms:.0f} ms"
    )
    effect = free.rate / barrier.rate
    print(
        f"barrier-scheduling: plain barrier-free {free.rate:.2f} samples/s, plain with barrier "
        f"{barrier.rate:.2f} samples/s, ratio {effect:.2f} "
        f"[{setup}; {free.seconds:.1f} s vs {barrier.seconds:.1f} s]",
        flush=True,
    )
    ratio = ours.rate / barrier.rate
    print(
        f"barrier: mmevol {ours.rate:.2f} samples/s, barrier baseline {barrier.rate:.2f} "
        f"samples/s, ratio {ratio:.2f} (goal > {GOAL:g}) {verdict(ratio > GOAL)} "
        f"[mmevol / plain barrier-free {ours.rate / free.rate:.2f}; calls/sample "
        f"{ours.calls_per_sample:.2f} vs {barrier.calls_per_sample:.2f}; mmevol CPU "
        f"{ours.cpu / ours.seconds:.0%} of a core]",
        flush=True,
    )
    return 1 if args.strict and ratio <= GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
