"""Figure helpers shared by the experiments, the plot CLI (plot.py) and Figure 1 (figure1.py).

One style (`STYLE`), applied only inside `with style():` (a `matplotlib.rc_context`): nothing here
assigns matplotlib's global rcParams, picks a backend or calls `plt.style.use`, so importing the lab
or drawing a figure leaves a notebook's or another library's settings as they were. `subplots` draws on
a plain `matplotlib.figure.Figure` (no pyplot: no display, no backend, no global figure list, safe in
threads); `save_figure` writes PNG + PDF under the same style.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "font.size": 10, "figure.dpi": 120, "savefig.bbox": "tight"}


@contextlib.contextmanager
def style(rc: dict[str, Any] | None = None) -> Iterator[None]:
    """The lab's figure style (STYLE, updated by rc) inside the with block; rcParams restored on exit."""
    with matplotlib.rc_context({**STYLE, **(rc or {})}):
        yield


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """`plt.subplots` without pyplot: (a Figure, its axes); kwargs as Figure's (figsize) and subplots'."""
    fig_keys = {"figsize", "dpi", "facecolor", "edgecolor", "layout", "constrained_layout", "tight_layout"}
    fig = Figure(**{k: kwargs.pop(k) for k in list(kwargs) if k in fig_keys})
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, out_dir: Path, name: str, dpi: int = 200, rc: dict[str, Any] | None = None) -> list[Path]:
    """Save fig as <name>.png (dpi) and <name>.pdf into out_dir under style(rc); close it; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    with style(rc):  # savefig reads rcParams too (savefig.bbox, pdf.fonttype)
        fig.savefig(out[0], dpi=dpi)
        fig.savefig(out[1])
    if fig.canvas.manager is not None:  # a pyplot figure: drop it from pyplot's list of open figures
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out


def mean_std(table: pd.DataFrame, by: list[str], y: str) -> pd.DataFrame:
    """Mean, std and count of y over the rows (seeds) sharing the `by` columns."""
    return table.groupby(by, dropna=False)[y].agg(["mean", "std", "count"]).reset_index()


def metric_vs_knob(table: pd.DataFrame, x: str, y: str, hue: str | None = None, logx: bool = False) -> Figure:
    """y against x, one line per hue value, error bars = std over the remaining runs (seeds)."""
    for col in [x, y] + ([hue] if hue else []):
        if col not in table:
            raise KeyError(f"column {col!r} not in the table; columns: {sorted(table.columns)}")
    with style():
        fig, ax = subplots(figsize=(5.5, 3.8))
        groups = table.groupby(hue, dropna=False) if hue else [(None, table)]
        for value, sub in groups:
            stats = mean_std(sub, [x], y).sort_values(x)
            ax.errorbar(stats[x], stats["mean"], yerr=stats["std"].fillna(0), marker="o", ms=3, capsize=2,
                        label=f"{hue}={value}" if hue else None)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if logx:
            ax.set_xscale("log")
        if hue:
            ax.legend(frameon=False, fontsize=8)
        n = table.groupby([x] + ([hue] if hue else [])).size()
        ax.set_title(f"{y} vs {x} (mean ± std over {n.min()}-{n.max()} runs)", fontsize=9)
    return fig
