"""Orchestration overhead: mmevol's runner vs a bare asyncio loop, same calls, no latency.

Both clients evolve the same seed over 3 rounds (an evolution call with the image as a
data URL, then a judge call, per round) against the simulated endpoint answering at once,
with the same number of samples in flight. The endpoint runs in its own process so that
its CPU is not taken from the client's GIL. Goal: mmevol >= 0.7 x the bare loop, whole
run (mmevol's start included: opening its databases, the image helper, the graph), at
each seed size. Each line also gives the ratio of CPU per sample (bare over mmevol),
which a shared machine disturbs less than the samples/s.

    python bench/overhead.py                    # 400 and 1,600 samples, about 5 minutes
    python bench/overhead.py --samples 300      # one size
    python bench/overhead.py --smoke            # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bare import run_bare  # noqa: E402
from _common import (  # noqa: E402
    Result,
    SimProcess,
    make_seed,
    median,
    run_mmevol,
    scratch,
    timed,
    verdict,
)

GOAL = 0.7


def bare_result(label: str):
    def summarise(outcome) -> Result:
        return Result(
            label,
            outcome.samples,
            0,
            0,
            outcome.calls,
            outcome.failed,
            extra={"empty_rounds": outcome.empty_rounds, "errors": outcome.errors[:3]},
            finished=outcome.finished,
        )

    return summarise


def check(result: Result, expected: int) -> None:
    if result.failed or result.samples != expected:
        detail = result.extra.get("errors") or ""
        raise SystemExit(
            f"overhead: {result.label} finished {result.samples} of {expected} samples "
            f"({result.failed} failed) {detail}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[400, 1600],
        help="seed sizes, comma-separated; one line each",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate mmevol and bare this many times; report medians",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=16,
        help="samples run by each client first, untimed (imports, caches)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.concurrency, args.repeats, args.warmup = [24], 8, 1, 4

    missed = False
    with scratch("overhead") as tmp, SimProcess(latency_ms=0) as sim:
        url = sim.base_url
        warm, warm_images = make_seed(tmp / "warm", args.warmup)
        run_mmevol(sim, url, warm, warm_images, tmp, concurrency=args.concurrency)
        timed(
            "bare",
            bare_result("bare"),
            sim,
            lambda: run_bare(url, warm, warm_images, concurrency=args.concurrency),
        )
        for size in args.samples:
            seed, images = make_seed(tmp / f"seed{size}", size)
            ratio = measure(args, sim, url, seed, images, size, tmp)
            missed = missed or ratio < GOAL
    return 1 if args.strict and missed else 0


def measure(args, sim: SimProcess, url: str, seed, images, size: int, tmp) -> float:
    """Run mmevol and the bare loop back to back ``--repeats`` times; print one line."""
    ours: list[Result] = []
    bare: list[Result] = []
    for _ in range(args.repeats):
        ours.append(run_mmevol(sim, url, seed, images, tmp, concurrency=args.concurrency))
        check(ours[-1], size)
        bare.append(
            timed(
                "bare",
                bare_result("bare"),
                sim,
                lambda: run_bare(url, seed, images, concurrency=args.concurrency),
            )
        )
        check(bare[-1], size)
    m_rate = median([r.rate for r in ours])
    b_rate = median([r.rate for r in bare])
    ratio = m_rate / b_rate
    m, b = ours[len(ours) // 2], bare[len(bare) // 2]
    cpu_ratio = b.cpu_ms_per_sample / m.cpu_ms_per_sample if m.cpu_ms_per_sample else 0.0
    print(
        f"overhead: mmevol {m_rate:.1f} samples/s, bare {b_rate:.1f} samples/s, "
        f"ratio {ratio:.2f} (goal >= {GOAL}) {verdict(ratio >= GOAL)} "
        f"[{size} samples x {args.repeats}, concurrency {args.concurrency}, "
        f"calls/sample {m.calls_per_sample:.2f} vs {b.calls_per_sample:.2f}, "
        f"client CPU {m.cpu_ms_per_sample:.1f} vs {b.cpu_ms_per_sample:.1f} ms/sample "
        f"(CPU ratio {cpu_ratio:.2f}), "
        f"sim CPU busy {m.sim_busy:.0%} vs {b.sim_busy:.0%}]",
        flush=True,
    )
    return ratio


if __name__ == "__main__":
    sys.exit(main())
