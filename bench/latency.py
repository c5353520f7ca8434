"""Latency-bound efficiency: samples/s over the ideal when every call takes 500 ms.

With ``c`` samples in flight, ``k`` calls per sample and a latency of ``L`` seconds, no
client can finish more than ``c / (k * L)`` samples a second. mmevol should reach 0.9 of
that. ``k`` is measured (the results database's calls table), not assumed. The line
also gives the client CPU per sample, i.e. how many samples a second one core could
orchestrate, and the same figures for the bare asyncio loop as a reference.

The ideal is a steady-state rate: it assumes all ``c`` slots are busy. A finite run also
has a first wave (all samples start together, so their calls arrive in one burst) and a
tail (the seed is used up and the slots empty one by one); with 640 samples and 64 in
flight those cost any client ~5-10% of the whole-run rate, and nothing at 163k samples.
So each client's rate is measured twice: over the whole run, and in steady state, from
when the first ``c`` samples have finished to when the last sample starts (when sample
``n - c`` finishes), the stretch where ``c`` samples are always in flight (see
``Result.steady_rate``). The goal is judged on the steady-state figure; both are printed,
for mmevol and for the bare loop alike.

    python bench/latency.py             # 640 samples, 64 in flight, 500 ms: ~2-3 min
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


def efficiency(result: Result, concurrency: int, latency_s: float) -> tuple[float, float, float]:
    """Return (ideal samples/s, steady-state rate / ideal, whole-run rate / ideal).

    When the run is too short for a steady state, its whole-run figure stands in.
    """
    ideal = concurrency / (result.calls_per_sample * latency_s)
    steady = result.steady_rate(concurrency)
    whole = result.rate / ideal
    return ideal, (steady / ideal if steady is not None else whole), whole


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
        _, b_eff, b_whole = efficiency(bare, args.concurrency, latency_s)
        reference = f"; bare loop {b_eff:.3f} steady, {b_whole:.2f} whole run"
    missed = False
    for workers, result in ours.items():
        ideal, eff, whole = efficiency(result, args.concurrency, latency_s)
        missed = missed or eff < GOAL
        steady = result.steady_rate(args.concurrency)
        label = f"{workers} worker" + ("s" if workers > 1 else "")
        measured = (
            f"steady state {steady:.1f} samples/s" if steady is not None
            else f"{result.rate:.1f} samples/s (run too short for a steady state)"
        )  # fmt: skip
        print(
            f"latency: mmevol ({label}) {measured} = {eff:.3f} of the ideal {ideal:.1f} "
            f"(= {args.concurrency} / ({result.calls_per_sample:.2f} calls x {latency_s:.3f} s))"
            f" (goal >= {GOAL}) {verdict(eff >= GOAL)}; whole run {result.rate:.1f} samples/s"
            f" = {whole:.2f} [{args.samples} samples in {result.seconds:.1f} s{reference}]",
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
