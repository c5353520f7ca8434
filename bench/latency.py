"""Latency-bound efficiency: samples/s over the ideal when every call takes 500 ms.

With ``c`` samples in flight, ``k`` calls per sample and a latency of ``L`` seconds, no
client can finish more than ``c / (k * L)`` samples a second. mmevol should reach 0.9 of
that. ``k`` is measured (the results database's calls table), not assumed. The line
also gives the client CPU per sample, i.e. how many samples a second one core could
orchestrate, and the same figures for the bare asyncio loop as a reference.

The first and last waves of samples are not full (ramp-up and tail): with 640 samples
and 64 in flight they are ~10% of the run, with 64 samples nearly all of it. ``--samples``
trades run time (about samples / ideal rate seconds) for that accuracy.

    python bench/latency.py             # 640 samples, 64 in flight, 500 ms: ~1-2 min
    python bench/latency.py --smoke     # 48 samples, 16 in flight, 100 ms: seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bare import run_bare  # noqa: E402
from _common import Result, SimProcess, make_seed, run_mmevol, scratch, timed, verdict  # noqa: E402
from overhead import bare_result, check  # noqa: E402

GOAL = 0.9


def efficiency(result: Result, concurrency: int, latency_s: float) -> tuple[float, float]:
    """Return (ideal samples/s, measured / ideal)."""
    ideal = concurrency / (result.calls_per_sample * latency_s)
    return ideal, result.rate / ideal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument(
        "--workers",
        default="1,2",
        help="comma-separated worker counts to measure mmevol with (mmevol run --workers)",
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-loop reference")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.concurrency, args.latency_ms = 48, 16, 100.0
    latency_s = args.latency_ms / 1000

    with scratch("latency") as tmp, SimProcess(latency_ms=args.latency_ms) as sim:
        seed, images = make_seed(tmp / "seed", args.samples)
        warm, warm_images = make_seed(tmp / "warm", 4)
        url = sim.base_url
        counts = [int(w) for w in args.workers.split(",")]
        for workers in sorted(set(counts)):  # imports, caches, and the workers' fork server
            run_mmevol(sim, url, warm, warm_images, tmp, concurrency=4, workers=workers)
        ours = {}
        for workers in counts:
            ours[workers] = run_mmevol(
                sim, url, seed, images, tmp, concurrency=args.concurrency, workers=workers
            )
            check(ours[workers], args.samples)
        bare = None
        if not args.no_bare:
            bare = timed(
                "bare",
                bare_result("bare"),
                sim,
                lambda: run_bare(url, seed, images, concurrency=args.concurrency),
            )
            check(bare, args.samples)

    reference = ""
    if bare is not None:
        b_ideal, b_eff = efficiency(bare, args.concurrency, latency_s)
        reference = f", bare loop {bare.rate:.1f} samples/s = {b_eff:.2f} of its ideal"
    missed = False
    for workers, result in ours.items():
        ideal, eff = efficiency(result, args.concurrency, latency_s)
        missed = missed or eff < GOAL
        label = f"{workers} worker" + ("s" if workers > 1 else "")
        print(
            f"latency: mmevol ({label}) {result.rate:.1f} samples/s, ideal {ideal:.1f} "
            f"(= {args.concurrency} / ({result.calls_per_sample:.2f} calls x {latency_s:.3f} s)),"
            f" efficiency {eff:.2f} (goal >= {GOAL}) {verdict(eff >= GOAL)} "
            f"[{args.samples} samples in {result.seconds:.1f} s{reference}]",
            flush=True,
        )
        per_core = 1000 / result.cpu_ms_per_sample if result.cpu_ms_per_sample else float("inf")
        bare_cpu = f"; bare loop {bare.cpu_ms_per_sample:.1f} ms/sample" if bare else ""
        print(
            f"latency-cpu: mmevol ({label}) {result.cpu_ms_per_sample:.1f} ms CPU/sample "
            f"(process time, all threads and workers) -> one core orchestrates "
            f"~{per_core:.0f} samples/s; {result.rate:.1f} samples/s used "
            f"{result.cpu / result.seconds:.0%} of a core{bare_cpu} "
            f"[sim CPU busy {result.sim_busy:.0%}]",
            flush=True,
        )
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
