"""Run the whole pipeline on a synthetic seed against the simulated endpoint: no network, no key."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mmevol.graph.config import Settings
from mmevol.outputs.authors import export_json
from mmevol.run import runner
from mmevol.sim.demo_seed import make_demo_seed
from mmevol.sim.server import SimOptions, SimServer
from mmevol.store.results import Store

DEMO_RUN = "demo"
TRACE_EXAMPLE = "1_shapes_000001.jpg"
"""A demo sample worth tracing: the one with many items, evolved in chunks."""


@dataclass
class DemoResult:
    """Where the demo wrote its output, and a few lines about it."""

    run_dir: Path
    export: Path
    summary: str


def run_demo(
    checkpoints: Path, samples: int = 12, concurrency: int = 8, gates: str | None = None
) -> DemoResult:
    """Draw ``samples`` synthetic samples, evolve them over 3 rounds and export the result.

    The demo run lives in ``<checkpoints>/demo`` and is started afresh each time. With
    ``gates`` (``--gates``) the quality gates run too, and the summary shows what each gate
    flagged and what each export filter leaves out.
    """
    run_dir = Path(checkpoints) / DEMO_RUN
    if run_dir.exists():
        shutil.rmtree(run_dir)
    seed_path, images_root = make_demo_seed(run_dir / "input", n=samples)
    with SimServer(SimOptions(seed=0)) as server:
        settings = Settings(
            run=DEMO_RUN,
            checkpoints=Path(checkpoints),
            images=images_root,
            base_url=server.base_url,
            api_key="sim",
            concurrency=concurrency,
            max_retries=2,
            gates=gates,
        )
        report = runner.run(settings, seed_path)
    export = run_dir / "evolved.json"
    exported = export_json(settings.results_db, export).written
    with Store(settings.results_db) as store:
        summary = store.summary()
    where = f" --checkpoints {checkpoints}" if Path(checkpoints) != Path("checkpoints") else ""
    lines = [
        f"demo: {report.done} samples evolved, {report.failed} failed, over 3 rounds "
        "against the simulated endpoint",
    ]
    for r in summary["rounds"]:
        lines.append(
            f"  round {r['round']}: {r['candidates']} candidates = {r['kept']} kept "
            f"+ {r['judged_out']} judged out (mean score {r['mean_score']}); dropped "
            f"before judging: {r['dropped_parse']} parse, {r['dropped_check']} check"
        )
    lines.append("  (candidates: items that passed parsing and checks and went to the judge)")
    calls = sum(c["calls"] for c in summary["calls"])
    tokens = sum(c["input_tokens"] + c["output_tokens"] for c in summary["calls"])
    if settings.gates:
        lines += gate_lines(settings)
    lines += [
        f"  model calls: {calls}, tokens: {tokens}",
        f"  seed: {seed_path}",
        f"  export ({exported} samples): {export}",
        f"  databases: {settings.results_db}, {settings.graph_db}",
        f"  next: mmevol status --run {DEMO_RUN}{where}",
        f"        mmevol trace {TRACE_EXAMPLE} --run {DEMO_RUN}{where}",
    ]
    return DemoResult(run_dir, export, "\n".join(lines))


def gate_lines(settings: Settings) -> list[str]:
    """Return the demo's lines on its gates, and what each export filter would leave out."""
    from mmevol.outputs.filters import FilterOptions
    from mmevol.outputs.stats import compute_stats

    quality = compute_stats(settings.results_db)["quality"]
    lines = []
    for gate in quality["gates"]:
        g = quality[gate]
        lines.append(
            f"  gate {gate}: {g['flagged']} of {g['checked']} kept items flagged ({g['flag']})"
        )
    chosen = [FilterOptions(dedup=True)]
    if "blind" in quality["gates"]:
        chosen.insert(0, FilterOptions(require_image=True))
    if "judge2" in quality["gates"]:
        chosen.insert(1, FilterOptions(min_agreement=0.8))
    scratch = settings.run_dir / "filtered.json"
    for options in chosen:
        result = export_json(settings.results_db, scratch, options)
        lines.append(f"  export {', '.join(options.applied())}: {result.filtered.summary()}")
    scratch.unlink(missing_ok=True)
    return lines
