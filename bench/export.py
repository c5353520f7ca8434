"""Export speed and memory: every format from a synthetic 100,000-sample results.db.

    python bench/export.py            # 10,000 and 100,000 samples (~10 min on 2 cores)
    python bench/export.py --smoke    # 200 and 1,000 samples: seconds

The results.db is built through Store methods (start_sample, save_round, finish_sample),
the way a run writes it: 6 seed items and 4 kept items per round (3 rounds), each with 2
solving steps, each sample with its own small JPEG (64x48, a few KB). Each export runs in
a child process, so its peak RSS (ru_maxrss) is its own; memory is flat when the peak at
the large size is close to the peak at the small one (goal: ratio < 1.5).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, scratch

FORMATS = [("authors", "authors.json"), ("llava", "llava.jsonl"), ("sharegpt", "sg.json"),
           ("hf", "hf")]  # fmt: skip
FLAT_GOAL = 1.5
IMAGES = 24


def item(n: int, rnd: int, score: int | None) -> dict:
    out = {
        "image_position": "single",
        "objects": ["cup", "table"],
        "skills": ["Grounding", "Calculating"],
        "format": "Norm",
        "question": f"Round {rnd} question {n}: how many cups stand on the table near the window?",
        "steps": [
            {"manipulation": "grounding_1(cup)->bbx_1", "description": "Find every cup."},
            {"manipulation": "calculate(bbx_1)->res_1", "description": "Count the boxes."},
        ],
        "answer": f"There are {n + 2} cups on the table, two of them next to the window.",
    }
    if score is not None:
        out["score"] = score
    return out


def build(folder: Path, n: int) -> Path:
    """Write checkpoints/bench/results.db with n finished samples; return the run folder."""
    from PIL import Image

    from mmevol.store.results import Store

    images = folder / "images"
    images.mkdir(parents=True)
    pool = []
    for i in range(IMAGES):
        buf = io.BytesIO()
        Image.effect_noise((64, 48), 40 + i).convert("RGB").save(buf, format="JPEG")
        pool.append(buf.getvalue())
    run_dir = folder / "checkpoints" / "bench"
    with Store(run_dir / "results.db") as store:
        store.set_meta(
            "settings",
            {"run": "bench", "images": str(images), "rounds": 3, "model": "gpt-4o-mini", "seed": 0},
        )
        store.set_meta("seed", str(folder / "seed.jsonl"))
        for i in range(n):
            image = f"{i:06d}.jpg"
            # Bytes of its own per sample (a tail after the JPEG's end marker, which decoders
            # ignore), as in a real seed: Parquet cannot fold repeated images together.
            (images / image).write_bytes(pool[i % IMAGES] + i.to_bytes(4, "big"))
            hash_id = f"{i}_{image}"
            seed = {
                "id": str(i),
                "image": image,
                "conversations_v0": [item(k, 0, None) for k in range(6)],
                "caption": [],
                "det": [],
            }
            store.start_sample(hash_id, i, str(i), seed)
            for rnd in (1, 2, 3):
                kept = [item(k, rnd, 5 + (i + k) % 5) for k in range(4)]
                record = {"round": rnd, "operator": "perceptual", "attempts": 1,
                          "candidates": 5, "kept": 4, "dropped": 1, "reason": None}  # fmt: skip
                dropped = [
                    {"stage": "score", "reason": "not improved (score 3)", "item": item(9, rnd, 3)}
                ]
                store.save_round(hash_id, record, kept, dropped)
            store.finish_sample(hash_id, 3)
    return folder / "checkpoints"


CHILD = """
import json, resource, sys, time
from pathlib import Path
from mmevol.outputs.authors import export_json
from mmevol.outputs.training import export_training
db, fmt, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
start = time.perf_counter()
if fmt == "authors":
    records = export_json(db, out).written
else:
    records = export_training(db, out, fmt).written
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"records": records, "seconds": seconds, "peak_mb": peak}))
"""


def measure(checkpoints: Path, fmt: str, out: Path) -> dict:
    db = checkpoints / "bench" / "results.db"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), fmt, str(out)],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"export {fmt} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["bytes"] = (
        sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        if out.is_dir()
        else out.stat().st_size
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--formats", default=",".join(f for f, _ in FORMATS), help="which ones")
    args = parser.parse_args(argv)
    chosen = [(f, name) for f, name in FORMATS if f in args.formats.split(",")]
    small, large = (200, 1000) if args.smoke else (10_000, 100_000)
    missed = False
    peaks: dict[tuple[str, int], float] = {}
    for n in (small, large):
        with scratch("export") as folder:
            start = time.perf_counter()
            checkpoints = build(folder, n)
            built = time.perf_counter() - start
            for fmt, name in chosen:
                r = measure(checkpoints, fmt, folder / name)
                peaks[(fmt, n)] = r["peak_mb"]
                print(
                    f"export: {fmt} samples={n} records={r['records']} "
                    f"seconds={r['seconds']:.1f} records/s={r['records'] / r['seconds']:.0f} "
                    f"peak_rss_mb={r['peak_mb']:.0f} output_mb={r['bytes'] / 1e6:.1f} "
                    f"(results.db built in {built:.0f} s)",
                    flush=True,
                )
    for fmt, _ in chosen:
        ratio = peaks[(fmt, large)] / peaks[(fmt, small)]
        ok = ratio < FLAT_GOAL
        missed |= not ok
        print(
            f"export-flat: {fmt} peak {peaks[(fmt, small)]:.0f} MB at {small} samples, "
            f"{peaks[(fmt, large)]:.0f} MB at {large}: ratio {ratio:.2f} "
            f"(goal < {FLAT_GOAL}) {'PASS' if ok else 'FAIL'}",
            flush=True,
        )
    return 1 if (missed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
