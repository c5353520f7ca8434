"""Where mmevol's CPU goes: one run sampled by py-spy, its own time summed by package.

The same workload as ``overhead.py`` (the endpoint in its own process, no latency, 3
rounds of evolve + judge per sample, 32 samples in flight) run by a child process under
``py-spy record`` (``pip install py-spy``), start-up and imports included. Each sample
of the client's stack is charged to the package of its innermost Python frame
(``mmevol.<folder>`` for the project, the top-level name for an installed package,
``stdlib <module>`` for Python's own); time in C is charged to the Python code that
called it. Idle time (the loop waiting for sockets) is not sampled.

    python bench/cpuprofile.py                  # 600 samples
    python bench/cpuprofile.py --top 25         # also the 25 functions with most own time
    python bench/cpuprofile.py --keep out.txt   # keep py-spy's collapsed stacks
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, SimProcess, make_seed, run_mmevol, scratch  # noqa: E402


def package_of(filename: str) -> str:
    """Name the package a source file belongs to."""
    path = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
    root = str(REPO).replace("\\", "/") + "/"
    if path.startswith(root):
        rel = path[len(root) :].split("/")
        return "mmevol." + rel[0].removesuffix(".py") if len(rel) > 1 else "mmevol"
    if path.startswith("<frozen "):
        return "python import system"
    if "/lib/python3" in path:
        parts = path.split("/lib/python3", 1)[1].split("/")
        return "stdlib " + (parts[1].removesuffix(".py") if len(parts) > 1 else "?")
    return path or "?"


def _frame(text: str) -> tuple[str, str]:
    """Split py-spy's ``function (file:line)`` into (function, file)."""
    name, _, where = text.rpartition(" (")
    return name, where.rstrip(")").rsplit(":", 1)[0]


def summarise(collapsed: str) -> tuple[Counter, Counter, Counter, int]:
    """Return own samples by package, by function, samples under each package, and total.

    "Under" counts a stack once for every package anywhere on it (inclusive time).
    """
    own: Counter = Counter()
    functions: Counter = Counter()
    under: Counter = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        name, file = frames[-1]
        own[package_of(file)] += n
        functions[f"{name} ({package_of(file)})"] += n
        for package in {package_of(f) for _, f in frames}:
            under[package] += n
        total += n
    return own, functions, under, total


def workload(samples: int, concurrency: int) -> None:
    """Run the profiled workload: a warm-up, then one mmevol run."""
    with scratch("profile") as tmp, SimProcess(latency_ms=0) as sim:
        seed, images = make_seed(tmp / "seed", samples)
        warm, warm_images = make_seed(tmp / "warm", 16)
        run_mmevol(sim, sim.base_url, warm, warm_images, tmp, concurrency=concurrency)
        result = run_mmevol(sim, sim.base_url, seed, images, tmp, concurrency=concurrency)
        if result.samples != samples or result.failed:
            raise SystemExit(f"profile: {result.samples} of {samples} samples finished")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest functions")
    parser.add_argument("--keep", type=Path, help="keep the collapsed stacks in this file")
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload:
        workload(args.samples, args.concurrency)
        return 0
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("profile: py-spy is not installed (pip install py-spy)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        command = [spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(out), "--"]
        command += [sys.executable, __file__, "--workload", "--samples", str(args.samples)]
        command += ["--concurrency", str(args.concurrency)]
        subprocess.run(command, check=True, capture_output=True)
        collapsed = out.read_text(encoding="utf-8")
    if args.keep:
        args.keep.write_text(collapsed, encoding="utf-8")
    own, functions, under, total = summarise(collapsed)
    share = lambda n: f"{n / max(total, 1):.0%}"  # noqa: E731
    print(
        f"profile-own: {total} samples at {args.rate}/s over {args.samples} samples "
        "(start-up included): "
        + ", ".join(f"{p} {share(n)}" for p, n in own.most_common() if n / total >= 0.01),
        flush=True,
    )
    print(
        "profile-under: "
        + ", ".join(f"{p} {share(n)}" for p, n in under.most_common() if n / total >= 0.02),
        flush=True,
    )
    for name, n in functions.most_common(args.top):
        print(f"  {share(n):>4} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
