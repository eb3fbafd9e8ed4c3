"""The paper's outputs gathered from the experiments' folders: figures and tables copied beside the
report (a Markdown copy written for small CSVs without one), and the noise/shear sweep's table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .. import paths
from ..experiments.benchmark import to_markdown
from ..plots import save_figure, style, subplots
from ..records import write_atomic, write_texts

FIGURES_DIR, TABLES_DIR = "figures", "tables"
FIGURE_SUFFIXES, TABLE_SUFFIXES = (".png", ".pdf"), (".csv", ".md")
SKIP_FILES = {paths.TABLE_PARQUET, "multirun.yaml"}
MD_MAX_ROWS = 200  # a CSV without its own .md gets one written when it has at most this many rows


def gather(folder: Path, out: Path, name: str) -> dict[str, list[Path]]:
    """Copy the figures and tables of an entry's folder (its top level and a single run's artifacts)
    into out/figures/<name>/ and out/tables/<name>/; write a .md beside each small CSV that has none."""
    found = {"figures": [], "tables": []}
    for kind in (FIGURES_DIR, TABLES_DIR):  # a fresh copy: nothing stale from an earlier paper run
        shutil.rmtree(out / kind / name, ignore_errors=True)
    sources = [folder, folder / paths.ARTIFACTS_DIR]
    for src in sources:
        if not src.is_dir():
            continue
        for f in sorted(src.iterdir()):
            if not f.is_file() or f.name in SKIP_FILES or f.name.startswith("."):
                continue
            kind = "figures" if f.suffix in FIGURE_SUFFIXES else "tables" if f.suffix in TABLE_SUFFIXES else None
            if kind is None:
                continue
            dst = out / (FIGURES_DIR if kind == "figures" else TABLES_DIR) / name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
            found[kind].append(dst)
    for csv in [p for p in found["tables"] if p.suffix == ".csv"]:
        md = csv.with_suffix(".md")
        if not md.exists():
            table = pd.read_csv(csv)
            if len(table) <= MD_MAX_ROWS:
                write_atomic(md, to_markdown(table))
                found["tables"].append(md)
    return found


def noise_shear_table(folder: Path) -> None:
    """The noise/shear sweep's folder gets noise_shear.csv/.md: final test accuracy % (mean, std, seeds)
    by model, shear and correlated noise, and noise_shear.png/.pdf: accuracy vs shear, one line per
    noise level, one panel per model."""
    src = folder / paths.TABLE_FILE
    if not src.is_file():
        return
    t = pd.read_csv(src)
    t = t[t["status"].isin(("complete", "diverged"))]
    if t.empty or not {"data.shear_scale", "data.corr_noise_scale"} <= set(t.columns):
        return
    t = t.assign(acc=100 * t["final_test_acc"])
    g = t.groupby(["model.name", "data.shear_scale", "data.corr_noise_scale"])["acc"]
    table = g.agg(["mean", "std", "count"]).round(2).reset_index().rename(
        columns={"mean": "final_test_acc_mean", "std": "final_test_acc_std", "count": "seeds"})
    write_texts(folder, {"noise_shear.csv": table.to_csv(index=False), "noise_shear.md": to_markdown(table)})
    save_figure(noise_shear_figure(table), folder, "noise_shear")


def noise_shear_figure(table: pd.DataFrame) -> Figure:
    """Final test accuracy vs shear scale, a line per correlated-noise scale (error bars: std over seeds),
    a panel per model, on one y axis."""
    models = list(dict.fromkeys(table["model.name"]))
    with style():
        fig, axes = subplots(1, len(models), figsize=(3.6 * len(models) + 0.6, 3.4), sharey=True, squeeze=False,
                             layout="constrained")
        for ax, model in zip(axes[0], models, strict=True):
            sub = table[table["model.name"] == model]
            for noise, line in sub.groupby("data.corr_noise_scale"):
                line = line.sort_values("data.shear_scale")
                ax.errorbar(line["data.shear_scale"], line["final_test_acc_mean"],
                            yerr=line["final_test_acc_std"].fillna(0), marker="o", ms=4, capsize=2,
                            label=f"correlated noise {noise:g}")
            ax.set_title(model, fontsize=10)
            ax.set_xlabel("data.shear_scale")
        axes[0][0].set_ylabel("final test accuracy (%)")
        axes[0][0].legend(frameon=False, fontsize=8)
        seeds = int(table["seeds"].max())
        spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed: add seed=0,1,2 for error bars"
        fig.suptitle(f"Shear and correlated noise: the dataset's knobs vs accuracy ({spread})", fontsize=10)
    return fig
