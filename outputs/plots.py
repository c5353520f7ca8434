"""PNG charts of a run's statistics (matplotlib, an optional extra: ``mmevol[plots]``).

Each chart is drawn from the dictionary of ``mmevol.outputs.stats.compute_stats``, with the
paper's figures drawn beside the run's where the paper gives them. Every legend stands
below its plot, outside the data, so it never hides a bar or a point.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmevol.outputs.stats import OPERATORS, PAPER

EXTRA_HINT = "matplotlib is not installed: pip install 'mmevol[plots]'"
FIGSIZE = (7.0, 4.0)
"""Inches of one chart; at ``DPI`` a PNG of 1050 x 600 pixels."""
WIDE_FIGSIZE = (12.0, 4.2)
"""Inches of the score chart, one panel per round side by side (1800 x 630 pixels)."""
DPI = 150
FONT_SIZE = 12
KEPT_COLOUR = "tab:green"
JUDGED_OUT_COLOUR = "tab:grey"
CUT_OFF_COLOUR = "tab:red"


class MissingExtra(ValueError):
    """Raised when a command needs an optional extra that is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise MissingExtra(EXTRA_HINT) from err
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _figure(plt, ncols: int = 1, figsize: tuple[float, float] = FIGSIZE, **kw):
    # Constrained layout makes room for a legend placed "outside" the axes.
    return plt.subplots(1, ncols, figsize=figsize, layout="constrained", **kw)


def _legend_below(fig, handles: list, labels: list[str], ncols: int = 3) -> None:
    fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(labels)))


def _funnel(plt, stats: dict, min_score: int | None = None):
    fig, ax = _figure(plt)
    rounds = stats["rounds"]
    labels = [f"round {r['round']}" for r in rounds]
    x = range(len(rounds))
    width = 0.27
    for shift, key, name in (
        (-width, "items_in", "items in"),
        (0, "candidates", "candidates judged"),
        (width, "kept", "kept"),
    ):
        ax.bar([i + shift for i in x], [r[key] or 0 for r in rounds], width, label=name)
    share = ax.twinx()
    share.plot(x, [r["kept_share"] or 0 for r in rounds], "o-", color="black", label="kept share")
    share.plot(
        x,
        [PAPER["kept_share"].get(r["round"], float("nan")) for r in rounds],
        "s--",
        color="grey",
        label="paper kept share",
    )
    share.set_ylim(0, 1.05)
    share.set_ylabel("kept share (kept / judged)")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("items")
    ax.set_title("Funnel: items in, judged, kept")
    handles, names = ax.get_legend_handles_labels()
    more = share.get_legend_handles_labels()
    _legend_below(fig, handles + more[0], names + more[1])
    return fig


def _scores(plt, stats: dict, min_score: int | None = None):
    rounds = stats["rounds"] or [{"round": 1, "score_histogram": {}, "mean_score": None}]
    size = (max(WIDE_FIGSIZE[0], 4.0 * len(rounds)), WIDE_FIGSIZE[1])
    fig, axes = _figure(plt, len(rounds), size, sharey=True, squeeze=False)
    xs = list(range(0, 11))
    width = 0.42
    for ax, r in zip(axes[0], rounds, strict=True):
        kept = r.get("score_histogram") or {}
        out = r.get("judged_out_score_histogram") or {}
        ax.bar(
            [x - width / 2 for x in xs],
            [kept.get(str(x), 0) for x in xs],
            width,
            color=KEPT_COLOUR,
            label="kept",
        )
        ax.bar(
            [x + width / 2 for x in xs],
            [out.get(str(x), 0) for x in xs],
            width,
            color=JUDGED_OUT_COLOUR,
            label="judged out",
        )
        if min_score is not None:
            ax.axvline(
                min_score - 0.5,
                color=CUT_OFF_COLOUR,
                linestyle="--",
                linewidth=2,
                label=f"--min-score {min_score} (export keeps scores at or above)",
            )
        mean = r.get("mean_score")
        paper = PAPER["mean_score"].get(r["round"])
        if mean is None:
            title = f"round {r['round']}: nothing kept"
        else:
            title = f"round {r['round']}: kept mean {mean:.2f}"
        ax.set_title(title + (f" (paper {paper:.2f})" if paper is not None else ""))
        ax.set_xticks(xs)
        ax.set_xlim(-0.7, 10.7)
        ax.set_xlabel("judge score")
    axes[0][0].set_ylabel("items")
    fig.suptitle("Judge scores: items kept and items judged out, per round")
    handles, names = axes[0][0].get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda n: names[n].startswith("--min-score"))
    _legend_below(fig, [handles[n] for n in order], [names[n] for n in order])
    return fig


def _growth(plt, stats: dict, min_score: int | None = None):
    fig, ax = _figure(plt)
    versions = stats["versions"]
    xs = [f"v{v['version']}" for v in versions]
    for key, name in (
        ("skills_per_item", "skills per item"),
        ("steps_per_item", "steps per item"),
        ("objects_per_item", "objects per item"),
    ):
        ax.plot(xs, [v[key] or 0 for v in versions], "o-", label=name)
    for key, name, color in (
        ("skills_per_item", "paper skills", "tab:blue"),
        ("steps_per_item", "paper steps", "tab:orange"),
    ):
        ax.plot(
            [xs[0], xs[-1]],
            [PAPER[key]["seed"], PAPER[key]["evolved"]],
            "x:",
            color=color,
            label=f"{name} (seed -> evolved)",
        )
    ax.set_ylabel("per item")
    ax.set_title("Skills, steps and objects by version")
    _legend_below(fig, *ax.get_legend_handles_labels(), ncols=2)
    return fig


def _operators(plt, stats: dict, min_score: int | None = None):
    fig, ax = _figure(plt)
    rounds = stats["rounds"]
    ops = [op for op in stats["operators"] if op in OPERATORS] or list(OPERATORS)
    labels = [f"round {r['round']}" for r in rounds] + ["paper p"]
    bottom = [0.0] * len(labels)
    for op in ops:
        values = []
        for r in rounds:
            total = sum(o["samples"] for o in r["operators"].values()) or 1
            values.append(r["operators"].get(op, {}).get("samples", 0) / total)
        values.append(PAPER["operator_probability"].get(op, 0))
        ax.bar(labels, values, bottom=bottom, label=op)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of samples")
    ax.set_title("Operator mix per round")
    _legend_below(fig, *ax.get_legend_handles_labels())
    return fig


GATE_LABELS = {"blind": "blind: answered without the image", "judge2": "judge2: not improved"}


def _gates(plt, stats: dict, min_score: int | None = None):
    """Per gate, the share of kept items it flagged in each round (and judge2's agreement)."""
    fig, ax = _figure(plt)
    quality = stats["quality"]
    gates = [g for g in quality["gates"] if g in quality]
    rounds = sorted({int(r) for g in gates for r in quality[g]["per_round"]})
    x = list(range(len(rounds)))
    width = 0.8 / max(1, len(gates))
    for n, gate in enumerate(gates):
        per_round = quality[gate]["per_round"]
        entries = [per_round.get(str(r), {}) for r in rounds]
        shift = (n - (len(gates) - 1) / 2) * width
        bars = ax.bar(
            [i + shift for i in x],
            [e.get("share") or 0 for e in entries],
            width,
            label=f"{GATE_LABELS[gate]} (share of checked)",
        )
        ax.bar_label(
            bars, [f"{e.get('flagged', 0)}/{e.get('checked', 0)}" for e in entries], fontsize=10
        )
        if gate == "judge2":
            ax.plot(
                x,
                [e.get("mean_agreement") if e.get("checked") else float("nan") for e in entries],
                "o-",
                color="black",
                label="judge2: mean agreement with the judge",
            )
    ax.set_ylim(0, 1.15)
    ax.set_xticks(x, [f"round {r}" for r in rounds])
    ax.set_ylabel("share of kept items")
    ax.set_title("Quality gates: kept items flagged, per round")
    _legend_below(fig, *ax.get_legend_handles_labels(), ncols=1)
    return fig


CHARTS: dict[str, tuple[str, Callable[..., Any]]] = {
    "funnel": ("The funnel: items in, candidates judged, kept, per round", _funnel),
    "scores": ("Judge scores per round: items kept and items judged out", _scores),
    "growth": ("Skills, steps and objects per item, v0 to v3", _growth),
    "operators": ("Operator mix per round against the paper's probabilities", _operators),
    "gates": ("Quality gates: share of kept items each gate flagged, per round", _gates),
}
"""Every chart, by name: its caption and how it is drawn (``gates`` only for a gated run)."""


def _applies(name: str, stats: dict) -> bool:
    return name != "gates" or bool((stats.get("quality") or {}).get("gates"))


def chart_figures(stats: dict, min_score: int | None = None) -> dict[str, Any]:
    """Draw every chart and return its matplotlib figure, by name (the caller closes them).

    The ``gates`` chart is drawn only when the run had ``--gates``.

    ``min_score`` marks the export's ``--min-score`` cut-off on the score chart.
    """
    plt = _pyplot()
    style = {
        "font.size": FONT_SIZE,
        "legend.fontsize": FONT_SIZE - 1,
        "axes.titlesize": FONT_SIZE + 1,
    }
    with plt.rc_context(style):
        return {
            name: draw(plt, stats, min_score)
            for name, (_, draw) in CHARTS.items()
            if _applies(name, stats)
        }


def chart_pngs(stats: dict, min_score: int | None = None, dpi: int = DPI) -> dict[str, bytes]:
    """Draw every chart and return its PNG bytes, by name."""
    plt = _pyplot()
    pngs = {}
    for name, fig in chart_figures(stats, min_score).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        pngs[name] = buf.getvalue()
    return pngs


def write_plots(stats: dict, folder: Path, min_score: int | None = None) -> list[Path]:
    """Write every chart as ``<name>.png`` into ``folder``; return the files."""
    pngs = chart_pngs(stats, min_score)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in pngs.items():
        path = folder / f"{name}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths
