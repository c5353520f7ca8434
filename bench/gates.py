"""Quality gates: the cost of each gate, and the export filters' time and memory at scale.

Gate cost: the same seed run without gates, then with ``--gates blind``, ``judge2`` and
both, against the simulated endpoint answering at once (its own process, blind share
0.3); each gate's extra calls and client CPU per 1,000 samples, as ratios of one run each.

Filters: ``--dedup`` and ``--decontaminate`` over synthetic items, through the export's own
indexes (``outputs/filters.py``: the benchmark check, the MinHash question index and the
image-hash index, in their scratch SQLite file, ``outputs/nearindex.py``), each size in a
child process so its peak RSS (VmHWM) is its own. Items are 4 per sample, with one image
hash per sample; 1 item in 20 repeats an earlier question with a word changed, 1 in 200
is a benchmark question; 5,000 benchmark questions.

    python bench/gates.py            # 300 samples per run; 25,000 and 100,000 items
    python bench/gates.py --smoke    # 16 samples; 1,000 and 4,000 items: seconds
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, SimProcess, make_seed, rss_mb, run_mmevol, scratch  # noqa: E402

BLIND_RATE = 0.3
BENCH_QUESTIONS = 5000
WORDS = (
    "what how many which where why colour object left right person table cup window dog car "
    "shirt sign text number holding standing sitting near behind front top bottom red blue "
    "green white black small large two three four animal building street sky tree"
).split()


def node_calls(results_db: Path) -> dict[str, int]:
    from mmevol.store.results import Store

    with Store(results_db) as store:
        return {
            r["node"]: r["n"]
            for r in store.db.query("select node, count(*) as n from calls group by node")
        }


def gate_costs(samples: int, concurrency: int) -> None:
    """Print each gate's extra calls and CPU per 1,000 samples against an ungated run."""
    with scratch("gates") as tmp, SimProcess(latency_ms=0, blind_rate=BLIND_RATE) as sim:
        seed, images = make_seed(tmp / "seed", samples)
        warm, warm_images = make_seed(tmp / "warm", 4, seed=1)
        run_mmevol(sim, sim.base_url, warm, warm_images, tmp, concurrency=concurrency)
        runs = {}
        for gates in (None, "blind", "judge2", "blind,judge2"):
            result = run_mmevol(
                sim, sim.base_url, seed, images, tmp, concurrency=concurrency, keep=True,
                gates=gates, label=gates or "none",
            )  # fmt: skip
            if result.samples != samples or result.failed:
                raise SystemExit(f"gates: {gates} finished {result.samples} of {samples}")
            runs[gates] = (result, node_calls(result.extra["run_dir"] / "results.db"))
    base, base_nodes = runs[None]
    per = 1000 / samples
    for gates in ("blind", "judge2", "blind,judge2"):
        result, nodes = runs[gates]
        extra = {n: c for n, c in nodes.items() if n not in base_nodes}
        more = result.calls - base.calls
        print(
            f"gates-cost: {gates} +{more * per:,.0f} calls per 1,000 samples "
            f"(+{more / base.calls:.0%} of {base.calls * per:,.0f}; "
            + ", ".join(f"{n} {c * per:,.0f}" for n, c in sorted(extra.items()))
            + f"), client CPU +{(result.cpu - base.cpu) * per:.1f} s per 1,000 samples "
            f"({result.cpu * per:.1f} vs {base.cpu * per:.1f} s) "
            f"[{samples} samples, concurrency {concurrency}, blind share {BLIND_RATE}]",
            flush=True,
        )


def question(rng: random.Random, n: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(8, 16))
    return f"Question {n}: " + " ".join(words) + "?"


def peak_mb() -> float:
    """Return this program's peak RSS in MB (VmHWM).

    Not ``ru_maxrss``: Linux carries that over from the parent that forked the child (here
    the gate-cost runs' process), so a small child would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def filter_child(items: int, out: Path) -> None:
    """Run the export's dedup and decontamination indexes over ``items`` synthetic items."""
    from mmevol.outputs.filters import Benchmarks, FilterOptions
    from mmevol.outputs.filters import normal_text as norm
    from mmevol.outputs.nearindex import HashIndex, QuestionIndex, Scratch, signature

    rng = random.Random(0)
    bench_file = out.parent / "bench.jsonl"
    bench_questions = [question(rng, -n) for n in range(BENCH_QUESTIONS)]
    bench_file.write_text("".join(json.dumps({"question": q}) + "\n" for q in bench_questions))
    options = FilterOptions(dedup=True, decontaminate=(bench_file,))
    with Scratch() as scratch:
        start = time.perf_counter()
        bench = Benchmarks(options, scratch)
        load = time.perf_counter() - start
        questions = QuestionIndex(options.question_similarity, scratch)
        images = HashIndex(options.image_distance, scratch)
        left = {"decontaminate": 0, "dedup": 0, "image": 0}
        written: list[str] = []  # the first 1,000 questions and image hashes, to copy
        hashes: list[int] = []
        rss_at = {}
        start = time.perf_counter()
        for n in range(items):
            if n == items // 4:
                rss_at[n] = rss_mb()
            if n % 4 == 0:  # a new sample: its image hash
                value = rng.getrandbits(64)
                if n % 400 == 200:  # a re-encoded copy of an earlier image: 2 bits differ
                    value = hashes[rng.randrange(len(hashes))] ^ 0b101
                if images.find_or_add(value, f"s{n // 4}"):
                    left["image"] += 1
                elif len(hashes) < 1000:
                    hashes.append(value)
            if n % 200 == 100:
                text = bench_questions[rng.randrange(BENCH_QUESTIONS)]
            elif n % 20 == 10 and written:
                text = rng.choice(written).replace("?", " please?")
            else:
                text = question(rng, n)
            text = norm(text)
            sig = signature(text)  # one MinHash for both indexes, as the export makes it
            if bench.question_match(text, sig):
                left["decontaminate"] += 1
                continue
            if questions.find_or_add(text, f"s{n // 4} item {n % 4}", sig):
                left["dedup"] += 1
                continue
            if len(written) < 1000:
                written.append(text)
        seconds = time.perf_counter() - start
        scratch.commit()
        disk = scratch.path.stat().st_size / 2**20
    rss_at[items] = rss_mb()
    peak = peak_mb()
    out.write_text(json.dumps({"seconds": seconds, "load": load, "peak": peak, "left": left,
                               "rss_at": rss_at, "disk": disk}))  # fmt: skip


def filter_scale(sizes: list[int]) -> None:
    """Print the filters' time and peak RSS at each size (each in its own process)."""
    found = {}
    with scratch("gates-filters") as tmp:
        for items in sizes:
            out = tmp / f"{items}.json"
            subprocess.run(
                [sys.executable, __file__, "--filter-child", str(items), str(out)],
                cwd=REPO, check=True,
            )  # fmt: skip
            found[items] = data = json.loads(out.read_text())
            left = data["left"]
            print(
                f"gates-filters: {items:,} items: {data['seconds']:.1f} s "
                f"({1e6 * data['seconds'] / items:.0f} us per item; benchmark index "
                f"{data['load']:.1f} s), peak RSS {data['peak']:.0f} MB; left out: "
                f"decontaminate {left['decontaminate']}, dedup {left['dedup']} questions, "
                f"{left['image']} images",
                flush=True,
            )
    small, large = sizes
    ratio = found[large]["peak"] / found[small]["peak"]
    growth = (found[large]["peak"] - found[small]["peak"]) / (large - small) * 10_000
    growth = round(growth, 1) + 0.0  # no "-0.0"
    quarter, whole = (found[large]["rss_at"][str(k)] for k in (large // 4, large))
    print(
        f"gates-filters-memory: peak RSS {found[small]['peak']:.0f} MB at {small:,} items, "
        f"{found[large]['peak']:.0f} MB at {large:,} (x{ratio:.2f}; within the {large:,} run "
        f"RSS {quarter:.0f} MB at {large // 4:,} items, {whole:.0f} MB at the end; "
        f"{growth:+.1f} MB per 10,000 items; the indexes live in a scratch SQLite file, "
        f"{found[large]['disk']:.0f} MB at {large:,} items, read through a 4 MB page cache)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--items", type=int, nargs=2, default=[25_000, 100_000])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--strict", action="store_true", help="accepted; no goal to miss")
    parser.add_argument("--filter-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.filter_child:
        filter_child(int(args.filter_child[0]), Path(args.filter_child[1]))
        return 0
    if args.smoke:
        args.samples, args.concurrency, args.items = 16, 8, [1000, 4000]
    gate_costs(args.samples, args.concurrency)
    filter_scale(args.items)
    return 0


if __name__ == "__main__":
    sys.exit(main())
