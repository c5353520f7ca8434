"""The charts of `mmevol stats --plots` and `mmevol report`, and the missing extra."""

from __future__ import annotations

import math
import sys

import pytest
from typer.testing import CliRunner

from mmevol.cli import app
from mmevol.outputs.plots import chart_figures
from mmevol.outputs.stats import compute_stats


def cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_plots_are_written(demo_run, tmp_path):
    from PIL import Image

    cli("stats", "--run", "demo", "--checkpoints", demo_run.checkpoints, "--plots", tmp_path,
        "--min-score", 6)  # fmt: skip
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["funnel.png", "growth.png", "operators.png", "scores.png"]
    for path in tmp_path.glob("*.png"):
        with Image.open(path) as img:
            assert img.width >= 1000 and img.height >= 560, (path.name, img.size)
    with Image.open(tmp_path / "scores.png") as img:
        assert img.width >= 1600  # one panel per round, side by side


@pytest.fixture
def figures(demo_run):
    import matplotlib.pyplot as plt

    stats = compute_stats(demo_run.results_db)
    figs = chart_figures(stats, min_score=6)
    for fig in figs.values():
        fig.canvas.draw()  # lay out, so every extent is final
    yield stats, figs
    for fig in figs.values():
        plt.close(fig)


def _data_extents(fig) -> list:
    """Window extents of every drawn bar and every plotted point of a figure."""
    from matplotlib.transforms import Bbox

    found = []
    for ax in fig.axes:
        found += [p.get_window_extent() for p in ax.patches if p.get_height() and p.get_width()]
        for line in ax.lines:
            for x, y in line.get_transform().transform(line.get_xydata()):
                if math.isfinite(x) and math.isfinite(y):
                    found.append(Bbox([[x, y], [x, y]]))
    return found


def test_legends_cover_no_bar_and_no_point(figures):
    """The funnel's legend hid the paper's round-3 point, the operators' legend a bar."""
    _, figs = figures
    for name, fig in figs.items():
        legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends, name
        data = _data_extents(fig)
        assert len(data) > 5, name
        for legend in legends:
            box = legend.get_window_extent()
            for extent in data:
                inter = (min(box.x1, extent.x1) - max(box.x0, extent.x0),
                         min(box.y1, extent.y1) - max(box.y0, extent.y0))  # fmt: skip
                assert not (inter[0] >= 0 and inter[1] >= 0), (name, box, extent)
            assert all(t.get_fontsize() >= 10 for t in legend.get_texts()), name
            whole = fig.bbox
            assert whole.x0 <= box.x0 and box.x1 <= whole.x1, (name, box, whole)  # not cut
            assert whole.y0 <= box.y0 and box.y1 <= whole.y1, (name, box, whole)


def test_figures_are_large_with_readable_text(figures):
    """Charts were 6.4 x 3.6 inches (640 x 360 pixels) with 7-point legends."""
    _, figs = figures
    for name, fig in figs.items():
        width, height = fig.get_size_inches()
        assert width >= 7 and height >= 4, (name, width, height)
        for ax in fig.axes:
            ticks = ax.get_xticklabels() + ax.get_yticklabels()
            assert all(t.get_fontsize() >= 11 for t in ticks), name
    assert figs["scores"].get_size_inches()[0] >= 12


def test_the_score_chart_shows_kept_and_judged_out_scores_and_the_cut_off(figures):
    stats, figs = figures
    axes = figs["scores"].axes
    assert len(axes) == len(stats["rounds"]) == 3
    judged_out = 0
    for ax, rnd in zip(axes, stats["rounds"], strict=True):
        bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}
        assert set(bars) == {"kept", "judged out"}
        assert bars["kept"] == [rnd["score_histogram"][str(s)] for s in range(11)]
        out = rnd["judged_out_score_histogram"]
        assert bars["judged out"] == [out.get(str(s), 0) for s in range(11)]
        judged_out += sum(bars["judged out"])
        cut = [line for line in ax.lines if line.get_label().startswith("--min-score 6")]
        assert len(cut) == 1 and set(cut[0].get_xdata()) == {5.5}  # between 5 and 6
    assert judged_out > 0
    legend = [t.get_text() for t in figs["scores"].legends[0].get_texts()]
    assert legend[:2] == ["kept", "judged out"] and legend[2].startswith("--min-score 6")


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


def test_a_gated_run_gets_a_chart_of_its_gates_per_round(gated_demo_run, demo_run, tmp_path):
    import matplotlib.pyplot as plt

    stats = compute_stats(gated_demo_run.results_db)
    quality = stats["quality"]
    figs = chart_figures(stats)
    try:
        assert list(figs) == ["funnel", "scores", "growth", "operators", "gates"]
        fig = figs["gates"]
        fig.canvas.draw()
        (ax,) = fig.axes
        bars = {c.get_label(): c for c in ax.containers}
        assert set(bars) == {
            "blind: answered without the image (share of checked)",
            "judge2: not improved (share of checked)",
        }
        for gate, label in (("blind", "blind: answered"), ("judge2", "judge2: not improved")):
            (container,) = [c for name, c in bars.items() if name.startswith(label)]
            per_round = quality[gate]["per_round"]
            assert [p.get_height() for p in container.patches] == [
                per_round[r]["share"] or 0 for r in sorted(per_round, key=int)
            ]
        # The flagged counts stand on the bars; the blind gate flagged something.
        texts = [t.get_text() for t in ax.texts]
        blind = quality["blind"]["per_round"]
        assert f"{blind['1']['flagged']}/{blind['1']['checked']}" in texts
        assert quality["blind"]["flagged"] > 0
        (agreement,) = [ln for ln in ax.lines if ln.get_label().startswith("judge2: mean")]
        assert list(agreement.get_ydata()) == [
            v["mean_agreement"] for _, v in sorted(quality["judge2"]["per_round"].items())
        ]
        # Its legend covers no bar and no point, as every chart's.
        box = fig.legends[0].get_window_extent()
        for extent in _data_extents(fig):
            assert not (
                min(box.x1, extent.x1) >= max(box.x0, extent.x0)
                and min(box.y1, extent.y1) >= max(box.y0, extent.y0)
            )
    finally:
        for f in figs.values():
            plt.close(f)
    # A run without gates has no such chart; `stats --plots` writes it for a gated run.
    assert "gates" not in chart_figures_names(demo_run)
    cli("stats", "--run", "gated", "--checkpoints", gated_demo_run.checkpoints,
        "--plots", tmp_path)  # fmt: skip
    assert (tmp_path / "gates.png").is_file()


def chart_figures_names(settings) -> list[str]:
    import matplotlib.pyplot as plt

    figs = chart_figures(compute_stats(settings.results_db))
    for fig in figs.values():
        plt.close(fig)
    return list(figs)
