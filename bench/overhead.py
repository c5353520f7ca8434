"""Orchestration overhead: mmevol's runner vs a bare asyncio loop, same calls, no latency.

Both clients evolve the same seed over 3 rounds (an evolution call with the image as a
data URL, then a judge call, per round) against the simulated endpoint answering at once,
with the same number of samples in flight. The endpoint runs in its own process so that
its CPU is not taken from the client's GIL. Goal: mmevol >= 0.5 x the bare loop.

    python bench/overhead.py            # 300 samples, about a minute
    python bench/overhead.py --smoke    # a few seconds, for CI
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

GOAL = 0.5


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
    parser.add_argument("--samples", type=int, default=300)
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
        args.samples, args.concurrency, args.repeats, args.warmup = 24, 8, 1, 4

    with scratch("overhead") as tmp, SimProcess(latency_ms=0) as sim:
        seed, images = make_seed(tmp / "seed", args.samples)
        warm, warm_images = make_seed(tmp / "warm", args.warmup)
        url = sim.base_url
        run_mmevol(sim, url, warm, warm_images, tmp, concurrency=args.concurrency)
        timed(
            "bare",
            bare_result("bare"),
            sim,
            lambda: run_bare(url, warm, warm_images, concurrency=args.concurrency),
        )
        ours: list[Result] = []
        bare: list[Result] = []
        for _ in range(args.repeats):
            ours.append(run_mmevol(sim, url, seed, images, tmp, concurrency=args.concurrency))
            check(ours[-1], args.samples)
            bare.append(
                timed(
                    "bare",
                    bare_result("bare"),
                    sim,
                    lambda: run_bare(url, seed, images, concurrency=args.concurrency),
                )
            )
            check(bare[-1], args.samples)

    m_rate = median([r.rate for r in ours])
    b_rate = median([r.rate for r in bare])
    ratio = m_rate / b_rate
    m, b = ours[len(ours) // 2], bare[len(bare) // 2]
    print(
        f"overhead: mmevol {m_rate:.1f} samples/s, bare {b_rate:.1f} samples/s, "
        f"ratio {ratio:.2f} (goal >= {GOAL}) {verdict(ratio >= GOAL)} "
        f"[{args.samples} samples x {args.repeats}, concurrency {args.concurrency}, "
        f"calls/sample {m.calls_per_sample:.2f} vs {b.calls_per_sample:.2f}, "
        f"client CPU {m.cpu_ms_per_sample:.1f} vs {b.cpu_ms_per_sample:.1f} ms/sample, "
        f"sim CPU busy {m.sim_busy:.0%} vs {b.sim_busy:.0%}]",
        flush=True,
    )
    return 1 if args.strict and ratio < GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
