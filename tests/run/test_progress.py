"""The progress display: its line, and the events of real runs against the simulated endpoint."""

from __future__ import annotations

import io

from rich.console import Console

from mmevol.run import runner
from mmevol.run.events import SampleEvent, Total
from mmevol.run.progress import RunProgress


def test_progress_line_counts_skipped_samples():
    progress = RunProgress(Console(file=io.StringIO()))
    progress(Total(5))
    for kind in ("skipped", "skipped", "started", "done", "rejected"):
        progress(SampleEvent(kind, "x"))
    line = progress.summary()
    assert "samples 4/5" in line and "done 1" in line and "failed 1" in line
    assert "skipped 2" in line
    fresh = RunProgress(Console(file=io.StringIO()))
    fresh(SampleEvent("done", "x"))
    assert "skipped" not in fresh.summary()


def test_the_display_counts_a_run_and_says_why_it_stopped(sim, demo_seed, make_settings):
    seed_path, images = demo_seed
    text = io.StringIO()
    with RunProgress(Console(file=text, width=300), every=3600) as progress:
        runner.run(make_settings(sim, images, limit=6, max_calls=10), seed_path, listener=progress)
    assert progress.total == 6
    assert "Stopping (reached --max-calls 10): no new sample or call starts" in text.getvalue()
    assert progress.usage is not None and progress.usage.calls == 10

    with RunProgress(Console(file=io.StringIO(), width=300), every=3600) as progress:
        runner.run(make_settings(sim, images, limit=6), seed_path, listener=progress)
    assert progress.summary().startswith("samples 6/6  done ")
    done, failed = progress.counts["done"], progress.counts["failed"] + progress.counts["rejected"]
    assert done + failed + progress.counts["skipped"] == 6
