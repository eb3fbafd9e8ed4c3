"""Figure helpers shared by experiments: one style, PNG + PDF, metric-vs-knob plots with error bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "font.size": 10, "figure.dpi": 120, "savefig.bbox": "tight"}


def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Save fig as <name>.png (200 dpi) and <name>.pdf into out_dir; close it; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(out[0], dpi=200)
    fig.savefig(out[1])
    plt.close(fig)
    return out


def mean_std(table: pd.DataFrame, by: list[str], y: str) -> pd.DataFrame:
    """Mean, std and count of y over the rows (seeds) sharing the `by` columns."""
    return table.groupby(by, dropna=False)[y].agg(["mean", "std", "count"]).reset_index()


def metric_vs_knob(table: pd.DataFrame, x: str, y: str, hue: str | None = None, logx: bool = False) -> plt.Figure:
    """y against x, one line per hue value, error bars = std over the remaining runs (seeds)."""
    for col in [x, y] + ([hue] if hue else []):
        if col not in table:
            raise KeyError(f"column {col!r} not in the table; columns: {sorted(table.columns)}")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
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
