"""Fault soak: a run folder survives kill -9, an outage, unusable answers and racing runs.

One seed is run to the end by a series of `mmevol run` processes on one run folder against
the simulated endpoint (20% of its answers unusable): most are killed with SIGKILL a few
seconds in, some meet a second `mmevol run` started beside them (it must refuse with exit
status 5, naming the holder, and pay nothing), one meets an outage (every chat call
answered 503 until the endpoint comes back: the breaker stops it with exit 3 and its
samples are interrupted, not failed). Then the loop lets a run finish (exit 0, or 4 for
the seed's bad rows). Some answers hold a lone surrogate (``\ud800``, not text): each must
be recorded once as unusable, never crash a run. Once, a resume with another ``--seed``
and ``--rounds`` (settings that change results) must be refused in one line with exit 1,
paying nothing and changing nothing on record.

Checked at the end, against an uninterrupted reference run of the same seed (`--seed`
too) on a fresh endpoint with the same options:

- the export holds every good seed row exactly once, in seed order, and only the seed's
  bad rows failed. The endpoint draws its faults per request body *and per sighting*
  (a request sent again draws afresh), so a sample whose call was asked again (in flight
  at a kill, or refused during the outage) may take another path than in the reference:
  such "touched" samples (running at a kill or interrupted by the outage, as the results
  DB says right after) are checked for structure (conversations_v1..v3 are lists); every
  other sample must equal the reference exactly.
- answers paid twice: the endpoint counts every 200 it sends (``answered``, even to a
  client killed before it arrives); the results DB counts the answers on record. Their
  difference is the answers lost, each asked again on resume. It is measured after every
  event (a kill, a run's exit, a refused race, the outage) with no run alive: it must
  grow only at kills, by at most the calls in flight there (<= concurrency x the seed's
  largest number of chunks per step), and no call key is answered twice on record.

Batch mode (``soak-batch-lost``): the same seed goes through `mmevol run --batch` against
an endpoint that forgets its batches (a restart without its batch table: 404 from then
on) twice: once under a live run, which must give the batch up as lost and ask its
requests again, and once right before a SIGKILL, so that the next run finds the batch
lost on its own. The run must finish the seed (every good row once, in order), record
each forgotten shard as lost, answer no key twice on record, and leave unrecorded only
answers of the forgotten batches.

    python bench/soak.py [--smoke] [--strict]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from _common import REPO, SimProcess, scratch, verdict

RUN = "soak"
GARBAGE_RATE = 0.2
SURROGATE_RATE = 0.05
"""Share of answers holding a lone surrogate (issue 19, item 3)."""
CHANGED_AT = 3
"""Before the run of this index, a resume with result-changing settings is tried (item 4)."""
SEED_VALUE = 7
ROUNDS = 3


class Broken(RuntimeError):
    """The soak could not go on (a run exited in a way no fault explains, a time limit)."""


@dataclass
class Plan:
    """Sizes and timings of one soak."""

    samples: int
    concurrency: int
    latency_ms: float
    kills: int
    kill_after: tuple[float, float]
    """Seconds after a run's first call at which it is killed (uniform)."""
    races: int
    outage_s: float
    time_limit_s: float
    chunk_size: int = 10


@dataclass
class Kill:
    """One SIGKILL: when, what was open at the endpoint, what it cost."""

    after_s: float
    open_calls: int
    """Chat requests the endpoint was still serving right after the kill."""
    lost: int = 0
    """Answers paid for and never recorded: asked again on resume."""


@dataclass
class Tally:
    """What the loop did."""

    runs: list[int] = field(default_factory=list)
    """Exit status of each `mmevol run` that got the lock, in order (-9: killed)."""
    kills: list[Kill] = field(default_factory=list)
    races: list[tuple[int, bool]] = field(default_factory=list)
    """Exit status of each second run, and whether its message named the holder's pid."""
    outage_s: float = 0.0
    outage_exit: int | None = None
    outage_interrupted: int = 0
    outage_failed: int = 0
    """Samples failed during the outage, beyond those failed before it."""
    lost_elsewhere: int = 0
    """Answers lost at anything but a kill (must stay 0)."""
    touched: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


class Soak:
    """The run folder, the endpoint and the processes of one soak."""

    def __init__(self, plan: Plan, work: Path, seed: Path, images: Path, sim: SimProcess):
        """Remember where everything is; nothing starts yet."""
        self.plan, self.work, self.seed, self.images, self.sim = plan, work, seed, images, sim
        self.checkpoints = work / "checkpoints"
        self.results_db = self.checkpoints / RUN / "results.db"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tally = Tally()
        self.started = time.monotonic()
        self.lost_before = 0
        self.count = 0

    # -- processes ----------------------------------------------------------------------

    def start(self, label: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        """Start `mmevol run` in its own process group; its output goes to a log file.

        ``extra`` options come last, so they override the soak's own (``--seed 8``).
        """
        self.count += 1
        log = self.logs / f"{self.count:03d}-{label}.log"
        env = {
            **os.environ,
            "OPENAI_API_KEY": "sim",
            "MMEVOL_CHECKPOINTS": str(self.checkpoints),
        }
        cmd = [
            sys.executable, "-m", "mmevol", "run", str(self.seed), "--images", str(self.images),
            "--run", RUN, "--base-url", self.sim.base_url,
            "--concurrency", str(self.plan.concurrency), "--seed", str(SEED_VALUE),
            "--rounds", str(ROUNDS), "--chunk-size", str(self.plan.chunk_size),
            "--retries", "2", "--timeout", "60", *extra,
        ]  # fmt: skip
        with log.open("w") as fh:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return proc, log

    def wait(self, proc: subprocess.Popen, log: Path, seconds: float) -> int:
        """Wait for a run to exit; a run that outlives ``seconds`` breaks the soak."""
        try:
            code = proc.wait(min(seconds, self.left()))
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise Broken(f"{log.name} did not exit within {seconds:.0f} s") from None
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            raise Broken(f"{log.name} printed a traceback:\n{text[-2000:]}")
        return code

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a run and every process of its group (its image helper, its workers)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def left(self) -> float:
        """Seconds left before the soak's time limit."""
        left = self.plan.time_limit_s - (time.monotonic() - self.started)
        if left <= 0:
            raise Broken(f"the soak took longer than {self.plan.time_limit_s:.0f} s")
        return left

    def until_calling(self, proc: subprocess.Popen, before: int, seconds: float = 60) -> bool:
        """Wait until the endpoint sees a request after ``before``; False if the run exits."""
        deadline = time.monotonic() + min(seconds, self.left())
        while self.sim.stats()["requests"] <= before:
            if proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise Broken("a run made no call within a minute")
            time.sleep(0.02)
        return True

    def settle(self) -> None:
        """Wait until the endpoint has sent every answer it still owes a dead client."""
        deadline = time.monotonic() + 30
        while self.sim.stats()["in_flight"]:
            if time.monotonic() > deadline:
                raise Broken("the endpoint still serves requests of a dead run after 30 s")
            time.sleep(0.02)

    # -- the results DB and the endpoint's count ---------------------------------------

    def statuses(self) -> dict[str, str]:
        """The status of every sample on record (no run may be alive)."""
        from mmevol.store.results import Store

        if not self.results_db.exists():
            return {}
        store = Store(self.results_db)
        try:
            return store.statuses()
        finally:
            store.close()

    def lost_now(self) -> int:
        """Answers lost since the last look: paid at the endpoint, not on record."""
        from mmevol.store.results import Store

        self.settle()
        answered = self.sim.stats()["answered"]
        recorded = 0
        if self.results_db.exists():
            store = Store(self.results_db)
            try:
                on_record = store.answered_calls()
            finally:
                store.close()
            recorded = on_record["answered"]
        lost = answered - recorded
        delta, self.lost_before = lost - self.lost_before, lost
        return delta

    def account(self, what: str) -> None:
        """After anything but a kill, no answer may have been lost."""
        delta = self.lost_now()
        if delta:
            self.tally.lost_elsewhere += delta
            self.tally.problems.append(f"{delta} answers lost at {what}")

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Run the schedule until a run exits 0 or 4; return that status."""
        plan, tally, rng = self.plan, self.tally, random.Random(11)
        # The outage comes early, while there is work left; the races after it.
        outage_at = 1
        race_at = set(range(2, 2 + 3 * plan.races, 3))
        for index in range(plan.kills + 12):
            if index == CHANGED_AT:
                changed_resume(self)
            before = self.sim.stats()["requests"]
            proc, log = self.start(f"run{index}")
            if not self.until_calling(proc, before):
                code = self.wait(proc, log, 60)
                return self.ended(code, log)
            if index in race_at:
                self.race(proc, index)
            if index == outage_at and tally.outage_exit is None:
                self.outage(proc, log)
                continue
            if len(tally.kills) < plan.kills:
                delay = rng.uniform(*plan.kill_after)
                try:
                    code = proc.wait(delay)
                except subprocess.TimeoutExpired:
                    self.kill(proc)
                    open_calls = self.sim.stats()["in_flight"]
                    kill = Kill(delay, open_calls)
                    kill.lost = self.lost_now()
                    tally.kills.append(kill)
                    tally.runs.append(-9)
                    tally.touched |= {h for h, s in self.statuses().items() if s == "running"}
                    continue
                code = self.wait(proc, log, 1)
            else:
                code = self.wait(proc, log, 600)
            code = self.ended(code, log)
            if code in (0, 4):
                return code
        raise Broken(f"no run finished the seed in {plan.kills + 12} runs")

    def ended(self, code: int, log: Path) -> int:
        """Book a run that exited by itself; only 0, 3 and 4 are expected."""
        self.tally.runs.append(code)
        self.account(log.name)
        if code == 3:
            self.tally.touched |= {
                h for h, s in self.statuses().items() if s in ("interrupted", "running")
            }
        elif code not in (0, 4):
            raise Broken(f"{log.name} exited {code}:\n{log.read_text(errors='replace')[-2000:]}")
        return code

    def race(self, holder: subprocess.Popen, index: int) -> None:
        """Start a second run beside a live one: it must refuse (exit 5) and name it.

        Meanwhile the endpoint holds the holder's calls (answered normally once the second
        run has exited, well within ``--timeout``), so the holder cannot finish the seed
        before the second run reaches the lock, however slow its start.
        """
        self.sim.behaviour("hang")
        try:
            proc, log = self.start(f"race{index}")
            code = self.wait(proc, log, 45)
        finally:
            self.sim.behaviour(None)
        text = log.read_text(errors="replace")
        self.tally.races.append((code, f"pid {holder.pid}" in text))
        if code != 5:
            self.tally.problems.append(f"{log.name}: exit {code} instead of 5: {text[-500:]}")

    def outage(self, proc: subprocess.Popen, log: Path) -> None:
        """Answer every call 503 until the run stops (exit 3) and ``outage_s`` has passed."""
        failed_before = sum(s == "failed" for s in self.statuses().values())
        self.sim.behaviour("status", status=503)
        down = time.monotonic()
        try:
            code = self.wait(proc, log, 300)
            time.sleep(max(0.0, self.plan.outage_s - (time.monotonic() - down)))
        finally:
            self.sim.behaviour(None)
        tally = self.tally
        tally.outage_s = time.monotonic() - down
        tally.outage_exit = code
        statuses = self.statuses()
        tally.outage_interrupted = sum(s == "interrupted" for s in statuses.values())
        tally.outage_failed = sum(s == "failed" for s in statuses.values()) - failed_before
        tally.touched |= {h for h, s in statuses.items() if s in ("interrupted", "running")}
        tally.runs.append(code)
        self.account(f"{log.name} (the outage)")
        if code != 3:
            tally.problems.append(f"{log.name}: exit {code} during the outage instead of 3")

    def export(self, checkpoints: Path, name: str) -> list[dict]:
        """`mmevol export` a run folder; return its rows."""
        out = self.work / f"{name}.json"
        env = {**os.environ, "MMEVOL_CHECKPOINTS": str(checkpoints)}
        proc = subprocess.run(
            [sys.executable, "-m", "mmevol", "export", "--run", RUN, "-o", str(out)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if proc.returncode != 0:
            raise Broken(f"export of {name} exited {proc.returncode}: {proc.stderr[-1000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


def reference(plan: Plan, work: Path, seed: Path, images: Path) -> tuple[list[dict], dict, int]:
    """Run the seed once, uninterrupted, against a fresh endpoint; return export, stats, exit."""
    with sim_for(plan) as sim:
        soak = Soak(plan, work / "reference", seed, images, sim)
        proc, log = soak.start("reference")
        code = soak.wait(proc, log, plan.time_limit_s)
        if code not in (0, 4):
            raise Broken(f"the reference run exited {code}:\n{log.read_text()[-2000:]}")
        rows = soak.export(soak.checkpoints, "reference")
        failed = sum(s == "failed" for s in soak.statuses().values())
        return rows, {**sim.stats(), "failed": failed}, code


def sim_for(plan: Plan) -> SimProcess:
    """The simulated endpoint of a soak (and of its reference), not started."""
    return SimProcess(
        latency_ms=plan.latency_ms, seed=3, garbage_rate=GARBAGE_RATE,
        surrogate_rate=SURROGATE_RATE,
    )  # fmt: skip


# -- lone surrogates and a resume that would change results (issue 19, items 3 and 4) -------


@dataclass
class Changed:
    """The resume tried with result-changing settings: how it ended and what it touched."""

    code: int | None = None
    line: str = ""
    paid: int = 0
    """Chat requests the endpoint saw during the attempt."""
    same_record: bool = False
    """The results DB holds the same settings, samples and calls before and after."""


CHANGED = Changed()


def _record_of(soak: Soak) -> dict:
    """What must not change: the recorded settings and seed, every sample and every call."""
    from mmevol.store.results import Store

    if not soak.results_db.exists():
        return {}
    store = Store(soak.results_db)
    try:
        return {
            "settings": store.get_meta("settings"),
            "seed": store.get_meta("seed_fingerprint"),
            "samples": store.rows("samples"),
            "calls": len(store.rows("calls")),
        }
    finally:
        store.close()


def changed_resume(soak: Soak) -> None:
    """Resume with another --seed and --rounds: exit 1, one line naming them, nothing done."""
    before, requests = _record_of(soak), soak.sim.stats()["requests"]
    proc, log = soak.start("changed", "--seed", str(SEED_VALUE + 1), "--rounds", "2")
    CHANGED.code = soak.wait(proc, log, 60)
    # Besides its error, the run may note that it took over a killed run's lock.
    errors = [line for line in log.read_text(errors="replace").splitlines() if "rror" in line]
    CHANGED.line = errors[0] if len(errors) == 1 and errors[0].startswith("Error: ") else ""
    CHANGED.paid = soak.sim.stats()["requests"] - requests
    CHANGED.same_record = bool(before) and _record_of(soak) == before
    soak.account(f"{log.name} (a resume with other settings)")


def _surrogates_on_record(soak: Soak) -> int:
    """Answers on record as not valid text (each held a lone surrogate)."""
    from mmevol.store.results import Store

    store = Store(soak.results_db)
    try:
        return sum(c["finish_reason"] == "invalid_text" for c in store.rows("calls"))
    finally:
        store.close()


def print_surrogates(soak: Soak, stats: dict, ref_stats: dict, recorded: int) -> bool:
    """Print the surrogate line: every such answer on record once as unusable (or lost at
    a kill, then asked again), and no run crashed by one."""
    sent = stats["faults"].get("surrogate", 0)
    lost = sum(k.lost for k in soak.tally.kills)
    crashed = sum(code not in (-9, 0, 1, 3, 4, 5) for code in soak.tally.runs)
    ok = sent > 0 and sent - lost <= recorded <= sent and crashed == 0
    print(
        f"soak-surrogates: {sent} answers held a lone surrogate (reference "
        f"{ref_stats['faults'].get('surrogate', 0)}), {recorded} on record as unusable "
        f"(invalid_text), the rest among the {lost} lost at kills; {crashed} runs crashed "
        f"(goal: each on record once, none crashed, a resume pays none again: see "
        f"soak-repeats) {verdict(ok)}"
    )
    return ok


def print_changed() -> bool:
    """Print the line of the resume with result-changing settings."""
    named = "--seed" in CHANGED.line and "--rounds" in CHANGED.line and "--run" in CHANGED.line
    ok = CHANGED.code == 1 and named and CHANGED.paid == 0 and CHANGED.same_record
    print(
        f"soak-changed: a resume with --seed {SEED_VALUE + 1} --rounds 2 exited {CHANGED.code}"
        f" with one error line naming both and a new --run: {named}; {CHANGED.paid} calls"
        f" paid; record unchanged: {CHANGED.same_record} (goal: exit 1, named, nothing paid"
        f" or changed) {verdict(ok)}"
    )
    return ok


def make_seed(work: Path, n: int) -> tuple[Path, Path, int, int]:
    """The demo seed: n good rows and its four bad ones; return paths, bad rows, max items."""
    from mmevol.sim.demo_seed import BAD_CASES, make_demo_seed

    seed, images = make_demo_seed(work / "seed", n=n, seed=5, bad=True)
    most = 0
    for line in seed.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        convs = row.get("conversations_v0") if isinstance(row, dict) else None
        most = max(most, len(convs) if isinstance(convs, list) else 0)
    return seed, images, len(BAD_CASES), most


def structured(row: dict) -> bool:
    """A finished sample's shape: conversations_v1..v3 present, each a list."""
    return all(isinstance(row.get(f"conversations_v{r}"), list) for r in range(1, ROUNDS + 1))


def key_of(row: dict) -> str:
    """The sample's key in the results DB."""
    return str(row.get("hash_id"))


# -- batch mode: the endpoint forgets its batches ---------------------------------------

BATCH_TURNAROUND = 0.5
"""Seconds the endpoint takes over a batch in the batch soak."""


@dataclass
class BatchLost:
    """What the batch soak saw."""

    runs: list[int] = field(default_factory=list)
    """Exit status of each `mmevol run --batch`, in order (-9: killed)."""
    forgotten: list[int] = field(default_factory=list)
    """Batches the endpoint forgot at each forgetting (finished ones included)."""
    lost_shards: int = 0
    lost_requests: int = 0
    """Requests of the shards recorded as lost (what the endpoint may have answered unseen)."""
    noticed: bool = False
    """The live run said that it gave a batch up."""
    answered: int = 0
    """Chat answers the endpoint sent (batch lines and online calls)."""
    on_record: dict[str, int] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class BatchSoak(Soak):
    """The soak's run folder and processes, with `mmevol run --batch`."""

    def start(self, label: str) -> tuple[subprocess.Popen, Path]:
        """Start `mmevol run --batch` in its own process group; its output goes to a log."""
        self.count += 1
        log = self.logs / f"{self.count:03d}-{label}.log"
        env = {**os.environ, "OPENAI_API_KEY": "sim", "MMEVOL_CHECKPOINTS": str(self.checkpoints)}
        cmd = [
            sys.executable, "-m", "mmevol", "run", str(self.seed), "--images", str(self.images),
            "--run", RUN, "--base-url", self.sim.base_url, "--concurrency",
            str(self.plan.concurrency), "--seed", str(SEED_VALUE), "--rounds", str(ROUNDS),
            "--chunk-size", str(self.plan.chunk_size), "--retries", "2", "--timeout", "60",
            "--batch", "--batch-poll", "0.1",
        ]  # fmt: skip
        with log.open("w") as fh:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return proc, log

    def forget(self) -> int:
        """Make the endpoint forget every batch; return how many it forgot."""
        root = self.sim.base_url.removesuffix("/v1")
        req = urllib.request.Request(f"{root}/sim/forget-batches", data=b"{}", method="POST")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["forgotten"]

    def until_batches(self, proc: subprocess.Popen, count: int, seconds: float = 120) -> None:
        """Wait until the endpoint has created ``count`` batches in all."""
        deadline = time.monotonic() + min(seconds, self.left())
        while self.sim.stats().get("batches_created", 0) < count:
            if proc.poll() is not None:
                raise Broken(f"the batch run exited {proc.returncode} before batch {count}")
            if time.monotonic() > deadline:
                raise Broken(f"the batch run did not submit batch {count} in {seconds:.0f} s")
            time.sleep(0.01)

    def until_lines(self, proc: subprocess.Popen, count: int, seconds: float = 60) -> None:
        """Wait until the endpoint has answered ``count`` batch lines in all."""
        deadline = time.monotonic() + min(seconds, self.left())
        while self.sim.stats()["batch_lines_answered"] < count:
            if proc.poll() is not None:
                raise Broken(f"the batch run exited {proc.returncode} before line {count}")
            if time.monotonic() > deadline:
                raise Broken(f"the endpoint answered no batch line in {seconds:.0f} s")
            time.sleep(0.005)


def batch_lost(plan: Plan, work: Path, seed: Path, images: Path) -> BatchLost:
    """Run the seed in batch mode while the endpoint forgets its batches twice."""
    from mmevol.store.results import Store

    seen, started = BatchLost(), time.perf_counter()
    sim = SimProcess(seed=3, garbage_rate=GARBAGE_RATE, batch_turnaround=BATCH_TURNAROUND)
    with sim:
        soak = BatchSoak(plan, work / "batch", seed, images, sim)
        # A live run: its first batch is forgotten; it gives it up and goes on.
        proc, log = soak.start("batch-forget")
        soak.until_batches(proc, 1)
        seen.forgotten.append(soak.forget())
        # Its next batches come once it gave the first up; once the third has answered
        # a few lines (paid, not yet collected), forget, and kill at once.
        soak.until_batches(proc, 3)
        soak.until_lines(proc, sim.stats()["batch_lines_answered"] + 1)
        seen.forgotten.append(soak.forget())
        soak.kill(proc)
        seen.runs.append(-9)
        seen.noticed = "no longer knows" in " ".join(log.read_text(errors="replace").split())
        # The next run finds the last batch lost by itself, and finishes the seed.
        proc, log = soak.start("batch-resume")
        seen.runs.append(soak.wait(proc, log, soak.left()))
        seen.answered = sim.stats()["answered"]
        store = Store(soak.results_db)
        try:
            lost = [s for s in store.rows("batch_shards") if s["status"] == "lost"]
            seen.on_record = store.answered_calls()
        finally:
            store.close()
        seen.lost_shards = len(lost)
        seen.lost_requests = sum(s["requests"] or 0 for s in lost)
        seen.statuses = soak.statuses()
        seen.rows = soak.export(soak.checkpoints, "batch")
    seen.seconds = time.perf_counter() - started
    return seen


def print_batch_lost(seen: BatchLost, expected: list[dict], bad: int) -> bool:
    """Print the batch soak's line; return whether it met its goals."""
    ids, want = [key_of(r) for r in seen.rows], [key_of(r) for r in expected]
    failed = sum(s == "failed" for s in seen.statuses.values())
    unrecorded = seen.answered - seen.on_record.get("answered", 0)
    twice = seen.on_record.get("answered", 0) - seen.on_record.get("keys", 0)
    final = seen.runs[-1] if seen.runs else None
    ok = (
        final in (0, 4)
        and ids == want
        and all(structured(r) for r in seen.rows)
        and failed == bad
        and seen.noticed
        and seen.lost_shards >= len(seen.forgotten) == 2
        and twice == 0
        and 0 <= unrecorded <= seen.lost_requests
    )
    print(
        f"soak-batch-lost: the endpoint forgot its batches {len(seen.forgotten)} times "
        f"({'+'.join(map(str, seen.forgotten))} batches; once under a live run, which said so: "
        f"{seen.noticed}; once right before a SIGKILL); {seen.lost_shards} shards recorded lost "
        f"({seen.lost_requests} requests asked again); runs exited {seen.runs}; "
        f"{len(set(ids))} of {len(want)} good rows exported, in seed order: {ids == want}, "
        f"{failed} failed (the {bad} bad rows); {twice} keys answered twice on record; "
        f"{unrecorded} answers of forgotten batches never recorded (<= {seen.lost_requests}) "
        f"[{seen.seconds:.0f} s] (goal: the seed finishes, each forgotten batch lost and "
        f"asked again, nothing recorded paid twice) {verdict(ok)}"
    )
    return ok


def main() -> int:
    """Run the soak, then the reference, and print one line per result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--kills", type=int, default=None)
    args = parser.parse_args()
    if args.smoke:
        plan = Plan(24, 4, 150, 2, (0.3, 1.0), 1, 2.0, 240)
    else:
        plan = Plan(200, 8, 200, 10, (1.0, 4.0), 3, 8.0, 1200)
    plan.samples = args.samples or plan.samples
    plan.concurrency = args.concurrency or plan.concurrency
    plan.kills = plan.kills if args.kills is None else args.kills

    wall = time.perf_counter()
    with scratch("soak") as work:
        seed, images, bad, most_items = make_seed(work, plan.samples)
        try:
            with sim_for(plan) as sim:
                soak = Soak(plan, work / "soak", seed, images, sim)
                final = soak.run()
                stats = sim.stats()
                statuses = soak.statuses()
                answered_on_record = _answered(soak)
                if CHANGED.code is None:  # the seed was through before CHANGED_AT
                    changed_resume(soak)
                surrogates_on_record = _surrogates_on_record(soak)
                rows = soak.export(soak.checkpoints, "soak")
            soak_s = time.perf_counter() - wall
            expected, ref_stats, ref_code = reference(plan, work, seed, images)
            batch = batch_lost(plan, work, seed, images)
        except Broken as exc:
            print(f"soak: broken: {exc}", file=sys.stderr)
            return 2
    tally = soak.tally
    chunks = max(1, math.ceil(most_items / plan.chunk_size))
    bound = plan.concurrency * chunks

    killed = sum(code == -9 for code in tally.runs)
    print(
        f"soak-runs: {len(tally.runs)} runs on one folder: {killed} killed with SIGKILL "
        f"({plan.kill_after[0]:g}-{plan.kill_after[1]:g} s after their first call), "
        f"final exit {final} (reference {ref_code}) [{plan.samples} samples + {bad} bad rows, "
        f"concurrency {plan.concurrency}, {GARBAGE_RATE:.0%} garbage answers, latency "
        f"{plan.latency_ms:g} ms; soak {soak_s:.0f} s, with the reference "
        f"{time.perf_counter() - wall:.0f} s]"
    )

    refused = [named for code, named in tally.races if code == 5]
    race_ok = bool(tally.races) and len(refused) == len(tally.races) and all(refused)
    print(
        f"soak-race: {len(refused)} of {len(tally.races)} second runs refused with exit 5, "
        f"{sum(refused)} naming the holder's pid (goal: all refused, named, nothing paid: "
        f"see soak-repeats) {verdict(race_ok)}"
    )

    outage_ok = tally.outage_exit == 3 and tally.outage_interrupted > 0
    outage_ok = outage_ok and tally.outage_failed == 0
    print(
        f"soak-outage: endpoint down {tally.outage_s:.1f} s (every chat call 503): the run "
        f"exited {tally.outage_exit}, {tally.outage_interrupted} samples interrupted, "
        f"{tally.outage_failed} failed by it (goal: exit 3, interrupted, none failed) "
        f"{verdict(outage_ok)}"
    )

    ids = [key_of(r) for r in rows]
    want = [key_of(r) for r in expected]
    failed = sum(s == "failed" for s in statuses.values())
    by_id = {key_of(r): r for r in expected}
    untouched = [r for r in rows if key_of(r) not in tally.touched]
    touched = [r for r in rows if key_of(r) in tally.touched]
    equal_untouched = sum(r == by_id.get(key_of(r)) for r in untouched)
    equal_touched = sum(r == by_id.get(key_of(r)) for r in touched)
    export_ok = (
        ids == want
        and len(ids) == len(set(ids)) == plan.samples
        and failed == bad == ref_stats["failed"]
        and equal_untouched == len(untouched)
        and all(structured(r) for r in rows)
    )
    print(
        f"soak-export: {len(set(ids))} of {plan.samples} good rows exported, "
        f"{len(ids) - len(set(ids))} twice, in seed order: {ids == want}; {failed} failed "
        f"(the {bad} bad rows: reference {ref_stats['failed']}); {equal_untouched} of "
        f"{len(untouched)} untouched samples equal the uninterrupted reference, "
        f"{len(touched)} touched by a kill or the outage ({equal_touched} equal anyway, "
        f"every row has conversations_v1..v{ROUNDS} lists: {all(structured(r) for r in rows)}) "
        f"(goal: every good row once, in order; untouched equal) {verdict(export_ok)}"
    )

    lost = sum(k.lost for k in tally.kills)
    over = [k.lost for k in tally.kills if k.lost > bound]
    twice_on_record = answered_on_record["answered"] - answered_on_record["keys"]
    repeats_ok = not over and tally.lost_elsewhere == 0 and twice_on_record == 0
    repeats_ok = repeats_ok and stats["answered"] == answered_on_record["answered"] + lost
    per_kill = ", ".join(f"{k.lost}/{k.open_calls}" for k in tally.kills)
    print(
        f"soak-repeats: {lost} answers paid twice (endpoint answered {stats['answered']}, "
        f"{answered_on_record['answered']} on record), all at kills: lost/open at the "
        f"endpoint per kill [{per_kill}], each <= {bound} (concurrency {plan.concurrency} "
        f"x {chunks} chunks); {tally.lost_elsewhere} lost elsewhere (races, outage, exits); "
        f"{twice_on_record} keys answered twice on record [calls: {stats['requests']} requests, "
        f"{stats['faults'].get('behaviour', 0)} met the outage or were held in a race, "
        f"{stats['faults'].get('garbage', 0)} garbage; reference {ref_stats['answered']} "
        f"answered, {ref_stats['faults'].get('garbage', 0)} garbage] (goal: repeats only "
        f"from calls in flight at kills) {verdict(repeats_ok)}"
    )
    surrogates_ok = print_surrogates(soak, stats, ref_stats, surrogates_on_record)
    changed_ok = print_changed()
    batch_ok = print_batch_lost(batch, expected, bad)
    for problem in tally.problems:
        print(f"  {problem}", file=sys.stderr)
    ok = (
        race_ok and outage_ok and export_ok and repeats_ok and surrogates_ok and changed_ok
        and batch_ok
    )  # fmt: skip
    return 1 if args.strict and not ok else 0


def _answered(soak: Soak) -> dict[str, int]:
    from mmevol.store.results import Store

    store = Store(soak.results_db)
    try:
        return store.answered_calls()
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
