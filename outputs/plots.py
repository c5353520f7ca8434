"""PNG charts of a run's statistics (matplotlib, an optional extra: ``mmevol[plots]``).

Each chart is drawn from the dictionary of ``mmevol.outputs.stats.compute_stats``, with the
paper's figures drawn beside the run's where the paper gives them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmevol.outputs.stats import OPERATORS, PAPER

EXTRA_HINT = "matplotlib is not installed: pip install 'mmevol[plots]'"


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


def _funnel(plt, stats: dict):
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
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
    share.set_ylabel("kept share")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("items")
    ax.set_title("Funnel: items in, judged, kept")
    handles = ax.get_legend_handles_labels()
    more = share.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper right")
    return fig


def _scores(plt, stats: dict):
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    rounds = stats["rounds"]
    width = 0.8 / max(len(rounds), 1)
    for n, r in enumerate(rounds):
        hist = r["score_histogram"]
        total = sum(hist.values()) or 1
        xs = list(range(0, 11))
        ax.bar(
            [x + (n - (len(rounds) - 1) / 2) * width for x in xs],
            [hist.get(str(x), 0) / total for x in xs],
            width,
            label=f"round {r['round']} (mean {r['mean_score'] or 0:.2f},"
            f" paper {PAPER['mean_score'].get(r['round'], float('nan')):.2f})",
        )
    ax.set_xticks(range(0, 11))
    ax.set_xlabel("judge score of kept items")
    ax.set_ylabel("share of the round's kept items")
    ax.set_title("Score distribution per round")
    ax.legend(fontsize=7)
    return fig


def _growth(plt, stats: dict):
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
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
    ax.legend(fontsize=7)
    return fig


def _operators(plt, stats: dict):
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
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
    ax.legend(fontsize=7)
    return fig


CHARTS: dict[str, tuple[str, Callable[[Any, dict], Any]]] = {
    "funnel": ("The funnel: items in, candidates judged, kept, per round", _funnel),
    "scores": ("Judge scores of kept items per round", _scores),
    "growth": ("Skills, steps and objects per item, v0 to v3", _growth),
    "operators": ("Operator mix per round against the paper's probabilities", _operators),
}


def chart_pngs(stats: dict, dpi: int = 100) -> dict[str, bytes]:
    """Draw every chart and return its PNG bytes, by name."""
    plt = _pyplot()
    pngs = {}
    for name, (_, draw) in CHARTS.items():
        fig = draw(plt, stats)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        pngs[name] = buf.getvalue()
    return pngs


def write_plots(stats: dict, folder: Path) -> list[Path]:
    """Write every chart as ``<name>.png`` into ``folder``; return the files."""
    pngs = chart_pngs(stats)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in pngs.items():
        path = folder / f"{name}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths
