r"""Run the N shards of an mmevol run as Ray tasks, with retries, then merge them into one run.

    pip install 'mmevol[ray]'
    python examples/ray/evolve.py seed.jsonl --images /shared/images --run evol-v1 \
        --shards 8 --checkpoints /shared/checkpoints --address auto \
        --base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1 \
        -- --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 64

Each task runs ``mmevol run SEED --run RUN-shard-I --shard I/N`` as a subprocess on the node
Ray picks (one CPU each). A shard that ends short of its seed (interrupted samples, an
endpoint that went away, a signal, its process or its node dying) is run again by Ray, up
to ``--max-retries`` times, and the same command resumes it. Then every shard folder there
is is merged into the run RUN (``mmevol merge``), which ``mmevol status``, ``export`` and the
rest read like any run. Running this script again resumes what is left and merges again.

Shard I uses the base URL number (I - 1) modulo their count: with one endpoint per GPU node,
shards are spread over them. Everything after ``--`` goes to every ``mmevol run``.

The seed, the images and ``--checkpoints`` must be on a filesystem every Ray node sees, and
every node needs mmevol installed in the Python its Ray workers run, and ``OPENAI_API_KEY``
in the environment ``ray start`` was given (any value, e.g. EMPTY, for vLLM without a key):
the key is never passed through Ray, which would store it. ``--address`` is that of
``ray.init``: none starts a local Ray instance (``--num-cpus`` of it), ``auto`` joins the
cluster this machine belongs to.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

DONE, FAILED_SAMPLES, USAGE = 0, 4, 2
"""Exit statuses of `mmevol run` a retry would not change: done, some samples failed (bad
rows: --retry-failed decides), a usage error. Any other one is retried (the run resumes)."""


class ShardInterrupted(RuntimeError):
    """A shard's `mmevol run` ended with samples left; Ray runs it again."""


LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:  # SIGTERM when the Ray worker that started this dies (Linux), whatever kills it
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, kept across exec
except (AttributeError, OSError):
    pass
if os.getppid() != parent:
    sys.exit(130)  # the worker died already
os.execv(sys.executable, [sys.executable, "-m", "mmevol", *sys.argv[2:]])
"""
"""Starts `mmevol run` so that it stops when its Ray worker dies: otherwise a worker killed
with its node's raylet would leave the run going, holding its lock, and the retry would be
refused as a second writer. (No ``preexec_fn``: the Ray worker has threads.)"""


def shard_command(
    seed: str, images: str, run: str, index: int, count: int, base_url: str,
    checkpoints: str, extra: list[str],
) -> list[str]:  # fmt: skip
    """Return the `mmevol run` arguments of shard ``index`` of ``count`` (after the program)."""
    return [
        "run", seed, "--images", images, "--run", f"{run}-shard-{index}",
        "--shard", f"{index}/{count}", "--checkpoints", checkpoints,
        "--base-url", base_url, *extra,
    ]  # fmt: skip


def run_shard(label: str, args: list[str]) -> int:
    """Run one shard to its end in a subprocess; raise when it should be run again.

    Runs inside a Ray task: ``sys.executable`` is the Python of the Ray worker.
    """
    command = [sys.executable, "-c", LAUNCHER, str(os.getpid()), *args]
    status = subprocess.run(command, stdin=subprocess.DEVNULL).returncode
    if status in (DONE, FAILED_SAMPLES, USAGE):
        return status
    print(f"{label}: mmevol run exited {status}; Ray runs it again (it resumes)", flush=True)
    raise ShardInterrupted(f"{label}: mmevol run exited {status}")


def merge(run: str, checkpoints: str, count: int) -> int:
    """Merge the shard folders there are into the run ``run``; return the exit status."""
    folders = [Path(checkpoints) / f"{run}-shard-{i}" for i in range(1, count + 1)]
    present = [str(folder) for folder in folders if folder.is_dir()]
    if not present:
        print(f"no shard folder under {checkpoints} to merge", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "mmevol", "merge", "--run", run]
    return subprocess.run([*command, "--checkpoints", checkpoints, *present]).returncode


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Return the options and the extra `mmevol run` arguments (those after ``--``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", help="the seed (a path every Ray node sees)")
    parser.add_argument("--images", required=True, help="the image root (idem)")
    parser.add_argument("--run", required=True, help="run name; shard I is RUN-shard-I")
    parser.add_argument("--shards", type=int, required=True, help="N, the number of shards")
    parser.add_argument(
        "--base-url",
        action="append",
        required=True,
        help="an OpenAI-compatible endpoint; give it once per endpoint (shards take turns)",
    )
    parser.add_argument(
        "--checkpoints",
        default=os.environ.get("MMEVOL_CHECKPOINTS", "checkpoints"),
        help="folder of the runs, shared by every node [default: $MMEVOL_CHECKPOINTS or "
        "checkpoints]",
    )
    parser.add_argument(
        "--max-retries", type=int, default=3, help="runs of a shard after its first [3]"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray address (auto, ray://head:10001); none starts a local Ray instance",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray instance [all]"
    )
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error(f"--shards must be 1 or more, got {args.shards}")
    if args.max_retries < 0:
        parser.error(f"--max-retries must be 0 or more, got {args.max_retries}")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    """Run the shards on Ray, wait for all of them, merge; return an exit status."""
    args, extra = parse(argv)
    try:
        import ray
    except ImportError:
        print("this example needs Ray: pip install 'mmevol[ray]'", file=sys.stderr)
        return 1
    # Absolute paths: a Ray worker's working directory is not this one.
    seed, images, checkpoints = (
        str(Path(p).resolve()) for p in (args.seed, args.images, args.checkpoints)
    )
    count = args.shards
    local = {"num_cpus": args.num_cpus} if args.address is None else {}
    ray.init(address=args.address, **local)
    task = ray.remote(num_cpus=1)(run_shard).options(
        max_retries=args.max_retries, retry_exceptions=[ShardInterrupted]
    )
    pending = {}
    for index in range(1, count + 1):
        url = args.base_url[(index - 1) % len(args.base_url)]
        label = f"shard {index}/{count}"
        command = shard_command(seed, images, args.run, index, count, url, checkpoints, extra)
        pending[task.remote(label, command)] = index
    unfinished: list[int] = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        label = f"shard {index}/{count}"
        try:
            status = ray.get(ready[0])
        except ray.exceptions.RayError as problem:
            unfinished.append(index)
            cause = str(problem).strip().splitlines()[-1]
            print(f"{label}: still unfinished after {args.max_retries} retries ({cause})")
            continue
        outcome = {DONE: "done", FAILED_SAMPLES: "through, some samples failed"}
        print(f"{label}: {outcome.get(status, f'mmevol run exited {status}')}", flush=True)
        if status not in outcome:
            unfinished.append(index)
    ray.shutdown()
    merged = merge(args.run, checkpoints, count)
    if unfinished:
        print(
            f"{len(unfinished)} of {count} shards unfinished "
            f"({', '.join(f'shard {i}/{count}' for i in sorted(unfinished))}): "
            "run this command again to resume them and merge again",
            file=sys.stderr,
        )
        return 3
    return merged


if __name__ == "__main__":
    sys.exit(main())
