"""The Studio entry (langgraph.json) and the Mermaid view of the graph."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.graph import context as run_context
from mmevol.run.seed import read_seed
from mmevol.store.results import Store

ROOT = Path(__file__).parents[2]


def test_langgraph_json_points_at_a_compiled_graph():
    config = json.loads((ROOT / "langgraph.json").read_text())
    module, _, name = config["graphs"]["mmevol"].partition(":")
    assert (ROOT / module).exists()
    from mmevol.graph import studio

    assert getattr(studio, name) is studio.graph


def test_studio_graph_runs_with_context_from_the_environment(sim, demo_seed, monkeypatch, tmp_path):
    seed_path, images = demo_seed
    monkeypatch.setenv("OPENAI_API_KEY", "sim")
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("MMEVOL_IMAGES", str(images))
    monkeypatch.setattr(run_context, "_from_env", None)
    from mmevol.graph.studio import graph as studio_graph

    sample = next(read_seed(seed_path)).sample

    async def invoke_and_close():
        try:
            return await studio_graph.ainvoke(sample, {"recursion_limit": 100})
        finally:
            await run_context._from_env.client.aclose()

    final = asyncio.run(invoke_and_close())
    assert [r.round for r in final["rounds"]] == [1, 2, 3]
    results = tmp_path / "checkpoints" / "studio" / "results.db"
    with Store(results) as store:
        assert store.count("rounds") == 3
    # The studio context keeps its store open for the life of the server process.
    run_context._from_env.store.close()
    monkeypatch.setattr(run_context, "_from_env", None)


def test_graph_command_prints_mermaid():
    result = CliRunner().invoke(app, ["graph"])
    assert result.exit_code == 0, result.output
    for edge in ("select_operator --> evolve", "evolve --> validate", "gates --> eliminate"):
        assert edge in result.output
    # After the judge: straight to eliminate, or through the quality gates (--gates).
    assert "score -.-> eliminate" in result.output and "score -.-> gates" in result.output
    assert "validate -.-> select_operator" in result.output
