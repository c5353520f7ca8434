"""Gate calls are ordinary recorded calls: a resume, a batch run and a merge of gated runs.

Each is compared with one gated run never interrupted (``gated16``): the same authors export,
the same export with the gate filters, the same gate rows, and no request paid twice.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from mmevol.graph.config import Settings
from mmevol.outputs.authors import export_json
from mmevol.outputs.filters import FilterOptions
from mmevol.run import runner
from mmevol.run.merge import MergeProblem, merge
from mmevol.sim.server import SimOptions, SimServer
from mmevol.store.gates import GATE_COLUMNS
from mmevol.store.results import Store

GATES = "blind,judge2"
SIM = {"seed": 0, "blind_rate": 0.4}
GATE_NODES = {"blind", "score_blind", "judge2"}
FILTERS = FilterOptions(require_image=True, min_agreement=0.8)


@dataclasses.dataclass
class Outcome:
    """What a finished gated run made."""

    export: list[dict]
    filtered: list[dict]
    gates: list[tuple]
    calls_by_node: Counter
    requests: int


def outcome(settings: Settings, tmp: Path, requests: int) -> Outcome:
    """Read a finished run: its exports (plain and filtered), gate rows and calls."""
    plain, filtered = tmp / f"{settings.run}.json", tmp / f"{settings.run}-filtered.json"
    export_json(settings.results_db, plain)
    export_json(settings.results_db, filtered, FILTERS)
    with Store(settings.results_db) as store:
        gates = sorted(
            (r["hash_id"], r["branch"], r["round"], r["position"], *(r[c] for c in GATE_COLUMNS))
            for r in store.rows("gates")
        )
        calls = Counter(r["node"] for r in store.rows("calls"))
        keys = [
            (r["hash_id"], r["branch"], r["round"], r["node"], r["attempt"], r["chunk"])
            for r in store.rows("calls")
        ]
    assert len(keys) == len(set(keys)), "a call was recorded twice"
    return Outcome(
        json.loads(plain.read_text()), json.loads(filtered.read_text()), gates, calls, requests
    )


def gated_settings(server: SimServer, images: Path, checkpoints: Path, run: str, **extra):
    values = dict(
        run=run, checkpoints=checkpoints, images=images, base_url=server.base_url,
        api_key="sim", concurrency=4, gates=GATES,
    )  # fmt: skip
    return Settings(**{**values, **extra})


@pytest.fixture(scope="module")
def gated16(seed16, tmp_path_factory) -> Outcome:
    """A gated run of ``seed16`` never interrupted."""
    seed_path, images = seed16
    tmp = tmp_path_factory.mktemp("gated16")
    with SimServer(SimOptions(**SIM)) as server:
        settings = gated_settings(server, images, tmp / "ck", "ref")
        assert runner.run(settings, seed_path).done == 16
        requests = server.stats()["requests"]
    result = outcome(settings, tmp, requests)
    assert GATE_NODES <= set(result.calls_by_node)
    # The filters leave something out, so that comparing filtered exports means something.
    assert len(_questions(result.filtered)) < len(_questions(result.export))
    return result


def _questions(export: list[dict]) -> list[str]:
    return [
        item["question"]
        for sample in export
        for r in (1, 2, 3)
        for item in sample.get(f"conversations_v{r}") or []
    ]


def test_a_gated_run_stopped_by_its_budget_resumes_paying_no_gate_call_twice(
    sim_factory, seed16, gated16, tmp_path
):
    seed_path, images = seed16
    server = sim_factory(**SIM)
    budget = gated16.requests // 2
    settings = gated_settings(server, images, tmp_path / "ck", "resumed", max_calls=budget)
    first = runner.run(settings, seed_path)
    assert first.stop is not None and first.stop.kind == "max_calls"
    with Store(settings.results_db) as store:
        before = Counter(r["node"] for r in store.rows("calls"))
    # Stopped mid-way through the gates: some were paid, not all.
    assert sum(before[n] for n in GATE_NODES) > 0
    assert sum(before.values()) == budget
    again = runner.run(dataclasses.replace(settings, max_calls=None), seed_path)
    assert again.stop is None and first.done + again.done == 16
    resumed = outcome(settings, tmp_path, server.stats()["requests"])
    # No request went to the endpoint twice: the gate calls made before the stop were reused.
    assert resumed.requests == gated16.requests
    assert resumed.calls_by_node == gated16.calls_by_node
    assert resumed.gates == gated16.gates
    assert resumed.export == gated16.export
    assert resumed.filtered == gated16.filtered


def test_a_gated_batch_run_exports_what_the_online_gated_run_exports(
    sim_factory, seed16, gated16, tmp_path
):
    seed_path, images = seed16
    server = sim_factory(**SIM, batch_turnaround=0.2)
    settings = gated_settings(
        server, images, tmp_path / "ck", "batched", batch=True, batch_poll=0.05
    )
    report = runner.run(settings, seed_path)
    assert (report.done, report.failed, report.parked, report.stop) == (16, 0, 0, None)
    stats = server.stats()
    batched = outcome(settings, tmp_path, stats["requests"])
    # Every call, the gates' included, went through the Batch API, once.
    assert stats["requests"] == stats["batch_lines_answered"] == gated16.requests
    with Store(settings.results_db) as store:
        assert all(c["batch"] == 1 for c in store.rows("calls"))
    assert batched.calls_by_node == gated16.calls_by_node
    assert batched.gates == gated16.gates
    assert batched.export == gated16.export
    assert batched.filtered == gated16.filtered


def test_gated_shards_merged_keep_their_gate_rows(sim_factory, seed16, gated16, tmp_path):
    seed_path, images = seed16
    server = sim_factory(**SIM)
    checkpoints = tmp_path / "runs"
    shards = []
    for n in (1, 2):
        settings = gated_settings(server, images, checkpoints, f"s{n}", shard=f"{n}/2")
        runner.run(settings, seed_path)
        shards.append(settings.run_dir)
    assert merge("merged", checkpoints, shards).missing == []
    merged = Settings(run="merged", checkpoints=checkpoints)
    result = outcome(merged, tmp_path, server.stats()["requests"])
    assert result.requests == gated16.requests
    assert result.gates == gated16.gates
    assert result.export == gated16.export
    assert result.filtered == gated16.filtered
    # A shard run with other gates is refused, naming the option.
    other = gated_settings(server, images, checkpoints, "other", shard="2/2", gates="blind")
    runner.run(other, seed_path)
    with pytest.raises(MergeProblem, match="--gates"):
        merge("mixed", checkpoints, [shards[0], other.run_dir])
