"""Batch mode: what orchestrating a seed through the Batch API costs the machine.

The seed runs with ``--batch`` against the simulated endpoint (in its own process) with an
instant batch turnaround, so what is timed is mmevol alone: filling and submitting shards,
polling, recording the answers and moving parked samples on. The same seed also runs
online in the same invocation, for a ratio measured on the same machine at the same time.
Reported: wall and CPU seconds per 1,000 samples, peak memory, shards made, and the bytes
of an image request (evolve) and of a text request (judge) in the shard files.

    python bench/batch.py                    # 10,000 samples (~15 min)
    python bench/batch.py --samples 2000
    python bench/batch.py --smoke            # 40 samples: seconds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SimProcess, make_seed, peak_rss_mb, run_mmevol, scratch, verdict  # noqa: E402

CPU_GOAL = 2.0
"""Batch mode's CPU per sample may be at most this many times the online run's: parking and
resuming a sample replays its recorded answers instead of holding it in memory."""


def shard_bytes(run_dir: Path) -> dict[str, float]:
    """Return the mean bytes of an image request and of a text request in the shard files.

    Shards are removed once uploaded, so this reads the folder's shards as the benchmark
    keeps them (``--keep`` copies).
    """
    sizes: dict[str, list[int]] = {"image": [], "text": []}
    for path in sorted((run_dir / "sent").glob("*.jsonl")):
        with path.open("rb") as fh:
            for line in fh:
                kind = "image" if b'"image_url"' in line else "text"
                sizes[kind].append(len(line))
    return {k: sum(v) / len(v) if v else 0.0 for k, v in sizes.items()}


def keep_shards() -> None:
    """Copy each shard file aside before it is uploaded (and then removed)."""
    import shutil

    from mmevol.runtime import batchapi

    upload = batchapi.ApiBackend.upload

    async def copying(self, path: Path, name: str) -> str:
        sent = path.parent.parent / "sent"
        sent.mkdir(exist_ok=True)
        shutil.copyfile(path, sent / path.name)
        return await upload(self, path, name)

    batchapi.ApiBackend.upload = copying


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="40 samples")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()
    n = 40 if args.smoke else args.samples
    keep_shards()
    with scratch("bench-batch-") as work, SimProcess(batch_turnaround=0.0) as sim:
        seed, images = make_seed(work / "seed", n)
        batch = run_mmevol(
            sim, sim.base_url, seed, images, work, concurrency=args.concurrency,
            label="batch", keep=True, batch=True, batch_poll=0.05,
        )  # fmt: skip
        batch_peak = peak_rss_mb()  # before the online run, which may raise it
        online = run_mmevol(
            sim, sim.base_url, seed, images, work, concurrency=args.concurrency, label="online"
        )
        run_dir = batch.extra["run_dir"]
        from mmevol.store.results import Store

        with Store(run_dir / "results.db") as store:
            shards = store.rows("batch_shards")
        sizes = shard_bytes(run_dir)
    per_k = 1000 / max(batch.samples, 1)
    ratio = batch.cpu_ms_per_sample / max(online.cpu_ms_per_sample, 1e-9)
    ok = batch.samples == online.samples == n and ratio <= CPU_GOAL
    print(
        "batch: "
        + json.dumps(
            {
                "samples": batch.samples,
                "wall_s_per_1000": round(batch.seconds * per_k, 1),
                "cpu_s_per_1000": round(batch.cpu * per_k, 1),
                "online_cpu_s_per_1000": round(online.cpu * 1000 / max(online.samples, 1), 1),
                "cpu_ratio_batch_over_online": round(ratio, 2),
                "peak_rss_mb": round(batch_peak, 1),
                "shards": len(shards),
                "requests": sum(s["requests"] for s in shards),
                "largest_shard_mb": round(max((s["bytes"] for s in shards), default=0) / 2**20, 1),
                "bytes_per_image_request": round(sizes["image"]),
                "bytes_per_text_request": round(sizes["text"]),
            }
        )
        + f" goal: cpu ratio <= {CPU_GOAL} {verdict(ok)}"
    )
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
