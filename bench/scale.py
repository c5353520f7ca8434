"""What one machine handles: samples/s per worker process, with 1 and 2 worker processes.

mmevol's runner (``Settings(workers=N)``, as ``mmevol run --workers N``) evolves a seed
against the simulated endpoint in its own process, twice per worker count:

- **no latency**: the endpoint answers at once, so the run is bound by the client's CPU
  alone: what one worker process orchestrates at most;
- **with latency** (default 1000 ms a call, 256 samples in flight: the endpoint could take
  ``256 / (6 calls x 1 s)`` = 43 samples/s, about twice what one process drives), so the
  run is again bound by the client, now with many calls waiting at once, as against a
  real endpoint. Its rate is measured in steady state (``Result.steady_rate``) and over
  the whole run.

Each line gives samples/s, samples/s per worker process and the client CPU per sample
(process time of the parent, its workers and their image helpers), from which the samples/s
one core would orchestrate if the process had it to itself (on a shared machine the rate
falls with the CPU share the process gets; the CPU per sample much less); the ratio lines
give 2 workers over 1, measured in the same run. With 2 cores the
endpoint's process, the parent and the workers share them, so 2 workers cannot double
anything here: the figures say what one process handles, which is what sizing a cluster
job needs. No goal: the numbers are the result.

    python bench/scale.py            # 300 + 1,200 samples per worker count: ~4 min
    python bench/scale.py --smoke    # seconds
    python bench/scale.py --latency-ms 3000 --concurrency 768 --samples 2400  # slower calls
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, SimProcess, make_seed, run_mmevol, scratch  # noqa: E402
from overhead import check  # noqa: E402


def measure(
    latency_ms: float, samples: int, concurrency: int, counts: list[int], tmp: Path
) -> dict[int, Result]:
    """Run the seed once per worker count against one endpoint with this latency."""
    with SimProcess(latency_ms=latency_ms) as sim:
        seed, images = make_seed(tmp / f"seed-{latency_ms:g}", samples)
        warm, warm_images = make_seed(tmp / f"warm-{latency_ms:g}", 4)
        url = sim.base_url
        for workers in counts:  # imports, caches, and the workers' fork server
            run_mmevol(sim, url, warm, warm_images, tmp, concurrency=4, workers=workers)
        results = {}
        for workers in counts:
            results[workers] = run_mmevol(
                sim, url, seed, images, tmp, concurrency=concurrency, workers=workers
            )
            check(results[workers], samples)
    return results


def rate_of(result: Result, concurrency: int, latency_ms: float) -> tuple[float, str]:
    """Return the rate to compare (steady state with latency, whole run without) and its name."""
    steady = result.steady_rate(concurrency) if latency_ms else None
    if steady is None:
        return result.rate, "whole run"
    return steady, "steady state"


def report(
    label: str, results: dict[int, Result], samples: int, concurrency: int, latency_ms: float
) -> None:
    """Print one line per worker count, then the ratio of the last count over the first."""
    rates = {}
    for workers, result in results.items():
        rate, kind = rate_of(result, concurrency, latency_ms)
        rates[workers] = rate
        name = f"{workers} worker" + ("s" if workers > 1 else "")
        whole = f"; whole run {result.rate:.1f}" if kind != "whole run" else ""
        per_core = 1000 / result.cpu_ms_per_sample if result.cpu_ms_per_sample else 0.0
        print(
            f"scale: {label}, {name}: {rate:.1f} samples/s ({kind}) = "
            f"{rate / workers:.1f} per worker process; client CPU "
            f"{result.cpu_ms_per_sample:.1f} ms/sample -> one core orchestrates "
            f"~{per_core:.0f} samples/s; used {result.cpu / result.seconds:.0%} of a core"
            f"{whole} [{samples} samples in {result.seconds:.1f} s, concurrency "
            f"{concurrency}, calls/sample {result.calls_per_sample:.2f}, "
            f"sim CPU busy {result.sim_busy:.0%}]",
            flush=True,
        )
    first, last = min(rates), max(rates)
    if first != last:
        ratio = rates[last] / rates[first]
        print(
            f"scale-ratio: {label}: {last} workers / {first} worker = {ratio:.2f} "
            f"({ratio * first / last:.2f} per worker process) "
            f"[{rates[last]:.1f} vs {rates[first]:.1f} samples/s]",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--samples-fast", type=int, default=300, help="samples, no latency")
    parser.add_argument("--concurrency-fast", type=int, default=32, help="in flight, no latency")
    parser.add_argument("--samples", type=int, default=1200, help="samples, with latency")
    parser.add_argument("--concurrency", type=int, default=256, help="in flight, with latency")
    parser.add_argument("--latency-ms", type=float, default=1000.0, help="latency of a call")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--strict", action="store_true", help="no goal here: accepted, unused")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples_fast, args.concurrency_fast = 24, 8
        args.samples, args.concurrency, args.latency_ms = 36, 8, 50.0
    counts = sorted({int(w) for w in args.workers.split(",")})

    with scratch("scale") as tmp:
        fast = measure(0.0, args.samples_fast, args.concurrency_fast, counts, tmp)
        slow = measure(args.latency_ms, args.samples, args.concurrency, counts, tmp)
    report("no latency", fast, args.samples_fast, args.concurrency_fast, 0.0)
    label = f"{args.latency_ms:g} ms latency"
    report(label, slow, args.samples, args.concurrency, args.latency_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
