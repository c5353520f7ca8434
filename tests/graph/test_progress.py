"""The progress line counts what a resumed run skipped."""

from __future__ import annotations

import io

from rich.console import Console

from mmevol.graph.events import SampleEvent, Total
from mmevol.graph.progress import RunProgress


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
