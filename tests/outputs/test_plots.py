"""The charts of `mmevol stats --plots` and `mmevol report`, and the missing extra."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from mmevol.cli import app


def cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_plots_are_written(demo_run, tmp_path):
    from PIL import Image

    cli("stats", "--run", "demo", "--checkpoints", demo_run.checkpoints, "--plots", tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["funnel.png", "growth.png", "operators.png", "scores.png"]
    for path in tmp_path.glob("*.png"):
        with Image.open(path) as img:
            assert img.width > 300 and img.height > 200


def test_without_matplotlib_the_commands_name_the_extra(demo_run, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    for args in (
        ["stats", "--plots", tmp_path / "charts"],
        ["report", "-o", tmp_path / "r.html"],
    ):
        result = CliRunner().invoke(
            app, [str(a) for a in [*args, "--run", "demo", "--checkpoints", demo_run.checkpoints]]
        )
        assert result.exit_code == 1, result.output
        assert "pip install 'mmevol[plots]'" in result.output
    assert not (tmp_path / "r.html").exists()
