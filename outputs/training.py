"""Training-set exports: the one entry that picks the writer of a format.

``formats`` writes the JSON formats (llava, sharegpt) and ``hfexport`` the Hugging Face
dataset, which builds on ``formats``' records; this module sits above both.
"""

from __future__ import annotations

from pathlib import Path

from mmevol.outputs import formats


def export_training(
    results_db: Path, output: Path, fmt: str, options: formats.ExportOptions | None = None
) -> formats.ExportReport:
    """Write a run's kept rounds as training records in ``fmt`` (see formats.TRAINING_FORMATS)."""
    options = options or formats.ExportOptions()
    formats.check_request(fmt, options)
    if fmt == "hf":
        from mmevol.outputs import hfexport  # only now: its extra may be missing

        return hfexport.export_hf(results_db, output, options)
    return formats.export_records(results_db, output, fmt, options)
