"""Shared fixtures: isolation from the user's environment and a live simulated endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from graph.config import Settings
from sim.demo_seed import make_demo_seed
from sim.server import SimOptions, SimServer


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Keep every test away from the real checkpoints/ and from real endpoints and keys."""
    monkeypatch.setenv("MMEVOL_CHECKPOINTS", str(tmp_path / "checkpoints"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MMEVOL_RAISE_ERRORS", "")


@pytest.fixture
def sim():
    """Start a simulated endpoint for one test."""
    with SimServer(SimOptions(seed=0)) as server:
        yield server


@pytest.fixture
def sim_factory():
    """Start simulated endpoints with chosen options; all stop after the test."""
    servers: list[SimServer] = []

    def start(**options) -> SimServer:
        server = SimServer(SimOptions(**options))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def demo_seed(tmp_path_factory) -> tuple[Path, Path]:
    """Draw a small synthetic seed with the four bad rows appended (read-only for tests)."""
    return make_demo_seed(tmp_path_factory.mktemp("seed"), n=8, seed=3, bad=True)


@pytest.fixture
def make_settings(tmp_path):
    """Build settings pointing at a simulated endpoint and a per-test checkpoints folder."""

    def build(server: SimServer, images: Path, **overrides) -> Settings:
        values = dict(
            run="test",
            checkpoints=tmp_path / "checkpoints",
            images=images,
            base_url=server.base_url,
            api_key="sim",
            concurrency=4,
            max_retries=2,
        )
        values.update(overrides)
        return Settings(**values)

    return build
