"""Shared fixtures: isolation from the user's environment and a live simulated endpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mmevol.graph.config import Settings
from mmevol.sim.demo_seed import make_demo_seed
from mmevol.sim.server import SimOptions, SimServer

# Caches that libraries write under the user's home (datasets writes Arrow files for every
# hf export). Set before collection, since huggingface_hub and datasets read them on import.
CACHE_VARIABLES = {
    "HF_HOME": "hf",
    "HF_DATASETS_CACHE": "hf/datasets",
    "HF_HUB_CACHE": "hf/hub",
    "HF_XET_CACHE": "hf/xet",
    "MPLCONFIGDIR": "matplotlib",
}
_cache_root: Path | None = None


def pytest_configure(config):
    """Point every library cache at a folder of this test session, removed at its end."""
    global _cache_root
    _cache_root = Path(tempfile.mkdtemp(prefix="mmevol-test-caches-"))
    for name, sub in CACHE_VARIABLES.items():
        os.environ[name] = str(_cache_root / sub)
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def pytest_unconfigure(config):
    """Remove the session's caches."""
    if _cache_root is not None:
        shutil.rmtree(_cache_root, ignore_errors=True)


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


@pytest.fixture(scope="session")
def demo_run(demo_seed, tmp_path_factory) -> Settings:
    """A finished run of ``demo_seed`` over real HTTP against the sim (read-only for tests).

    Stats, report, plots and the training exports all read this one run.
    """
    from mmevol.run import runner

    seed_path, images = demo_seed
    with SimServer(SimOptions(seed=0)) as server:
        settings = Settings(
            run="demo", checkpoints=tmp_path_factory.mktemp("demo_run"), images=images,
            base_url=server.base_url, api_key="sim", concurrency=4,
        )  # fmt: skip
        report = runner.run(settings, seed_path)
    assert (report.done, report.failed) == (8, 4)
    return settings


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


# -- whole `mmevol run` processes (crash, signal and worker tests) ---------------------------


@pytest.fixture(scope="session")
def seed16(tmp_path_factory) -> tuple[Path, Path]:
    """Sixteen good rows (read-only for tests)."""
    return make_demo_seed(tmp_path_factory.mktemp("seed16"), n=16, seed=5)


@pytest.fixture(scope="session")
def reference16(seed16, tmp_path_factory) -> tuple[list[dict], int]:
    """The export and the request count of a run of ``seed16`` never interrupted."""
    from mmevol.outputs.authors import export_json
    from mmevol.run import runner

    seed_path, images = seed16
    tmp = tmp_path_factory.mktemp("ref16")
    with SimServer(SimOptions(seed=0)) as server:
        settings = Settings(
            run="ref", checkpoints=tmp, images=images, base_url=server.base_url,
            api_key="sim", concurrency=4,
        )  # fmt: skip
        assert runner.run(settings, seed_path).done == 16
        calls = server.stats()["requests"]
    out = tmp / "ref.json"
    export_json(settings.results_db, out)
    return json.loads(out.read_text()), calls


@pytest.fixture
def cli_run():
    """Start `mmevol run` in a subprocess (4 samples in flight, plus any extra options)."""

    def start(seed_path, images, server, checkpoints, run, *extra) -> subprocess.Popen:
        env = {**os.environ, "OPENAI_API_KEY": "sim", "MMEVOL_CHECKPOINTS": str(checkpoints)}
        cmd = [
            sys.executable, "-m", "mmevol", "run", str(seed_path), "--images", str(images),
            "--run", run, "--base-url", server.base_url, "--concurrency", "4", *extra,
        ]  # fmt: skip
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    return start


@pytest.fixture
def wait_for_requests():
    """Wait until the endpoint has served ``at_least`` requests while ``proc`` runs."""

    def wait(server, proc, at_least, timeout=60) -> None:
        deadline = time.monotonic() + timeout
        while server.stats()["requests"] < at_least:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run made too few requests"
            time.sleep(0.005)

    return wait
