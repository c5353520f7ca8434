"""Fixtures of the outputs tests: a finished run with quality gates."""

from __future__ import annotations

import pytest

from mmevol.graph.config import Settings
from mmevol.sim.server import SimOptions, SimServer


@pytest.fixture(scope="session")
def gated_demo_run(demo_seed, tmp_path_factory) -> Settings:
    """A finished run of ``demo_seed`` with both gates (read-only for tests)."""
    from mmevol.run import runner

    seed_path, images = demo_seed
    with SimServer(SimOptions(seed=0, blind_rate=0.4)) as server:
        settings = Settings(
            run="gated", checkpoints=tmp_path_factory.mktemp("gated_run"), images=images,
            base_url=server.base_url, api_key="sim", concurrency=4, gates="blind,judge2",
        )  # fmt: skip
        report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (8, 4)
    return settings
