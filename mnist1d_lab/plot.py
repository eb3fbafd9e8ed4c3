"""The plot command: a quick look at any sweep, a metric against a knob, error bars over seeds.

    python -m mnist1d_lab.plot outputs/multirun/<sweep>/results.csv x=model.width y=final_test_acc hue=data.shuffle_seq
    python -m mnist1d_lab.plot <sweep folder> x=data.shear_scale y=final_test_acc hue=data.corr_noise_scale logx=true

Writes <table folder>/plot_<y>_vs_<x>.png and .pdf (or out=<folder>). The command only; the figure
helpers it draws with are plots.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from . import paths
from .plots import metric_vs_knob, save_figure

USAGE = "usage: python -m mnist1d_lab.plot <results.csv|.parquet|sweep folder> x=<column> y=<metric> [hue=<column>] [logx=true] [out=<folder>]"


def read_table(path: Path) -> pd.DataFrame:
    """A collected table from a CSV/parquet file, or the results file inside a sweep folder."""
    if path.is_dir():
        path = path / paths.TABLE_FILE
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\n" + USAGE)
        return 0 if argv else 2
    src, opts = Path(argv[0]), dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    if "x" not in opts or "y" not in opts:
        print(f"mnist1d_lab.plot: error: x= and y= are required\n{USAGE}", file=sys.stderr)
        return 2
    try:
        table = read_table(src)
        fig = metric_vs_knob(table, opts["x"], opts["y"], opts.get("hue"), opts.get("logx", "false") == "true")
    except (OSError, KeyError) as exc:
        print(f"mnist1d_lab.plot: error: {exc}", file=sys.stderr)
        return 2
    out = Path(opts.get("out", src if src.is_dir() else src.parent))
    for p in save_figure(fig, out, f"plot_{opts['y']}_vs_{opts['x']}"):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
