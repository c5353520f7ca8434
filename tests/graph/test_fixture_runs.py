"""Runs made by earlier releases resume and export byte for byte as those releases did.

Each fixture under tests/fixtures/ holds a run stopped half-way by its call budget and,
in ``expected/``, what mmevol 0.2.0 exported from it before and after resuming it (see the
fixtures' READMEs). A move of modules or a change of the store must leave both unchanged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmevol.outputs.authors import export_json
from mmevol.run import runner

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUNS = [("run_v0_1_0", "v010"), ("run_v0_2_0", "v020")]


@pytest.mark.parametrize(("folder", "run"), RUNS)
def test_an_old_run_exports_and_resumes_byte_for_byte(
    folder, run, tmp_path, sim_factory, make_settings
):
    old = tmp_path / folder
    shutil.copytree(FIXTURES / folder, old)
    expected = old / "expected"
    results_db = old / "checkpoints" / run / "results.db"

    # The run recorded where its images were when it was made: give where they are now.
    export_json(results_db, tmp_path / "before.json", images=old / "seed" / "images")
    assert (tmp_path / "before.json").read_bytes() == (
        expected / "export-before-resume.json"
    ).read_bytes()

    server = sim_factory(seed=0)
    settings = make_settings(
        server, old / "seed" / "images", run=run, checkpoints=old / "checkpoints",
        concurrency=3, keep_history=True, max_retries=5,
    )  # fmt: skip
    report = runner.run(settings, old / "seed" / "seed.jsonl")
    assert (report.done, report.skipped, report.stop) == (3, 7, None)

    export_json(results_db, tmp_path / "after.json")
    assert (tmp_path / "after.json").read_bytes() == (
        expected / "export-after-resume.json"
    ).read_bytes()
