"""Table 1 and Figure 2: logistic, MLP, CNN and GRU on normal and spatially shuffled MNIST-1D.

Question: which inductive biases matter on MNIST-1D? (Shuffling the 40 positions destroys spatial
          structure: CNN and GRU should fall to about MLP level, logistic and MLP should not care.)
Command:  python -m mnist1d_lab experiment=benchmark         (24 runs: 4 models x 2 x 3 seeds)
CPU time: about 3 min on 2 cores (two runs side by side, one thread each; the GRU runs dominate).
Expected: normal 32 / 64-68 / 92-94 / 89-92 %, shuffled 32 / 64-68 / 51-59 / 51-59 % (logistic /
          MLP / CNN / GRU). Paper Table 1: 32 / 68 / 94 / 91 and shuffled 32 / 68 / 56 / 57.
Outputs:  table1.csv, table1.md (mean ± std of final test accuracy beside the paper), figure2.png/.pdf.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .. import records
from ..plots import STYLE, mean_std, save_figure
from .train import run  # noqa: F401  (each job is a plain training run)

BATCHABLE = True  # its jobs may be trained stacked by hydra/launcher=batched

PAPER = {  # test accuracy %, paper Table 1 (normal, shuffled)
    "logistic": (32, 32), "mlp": (68, 68), "cnn": (94, 56), "gru": (91, 57)}
ORIGINAL_CODE = {  # the original notebook's printed final accuracies (mnist1d-classification.ipynb)
    "logistic": (31.5, 31.5), "mlp": (65.1, 66.0), "cnn": (92.3, 58.7), "gru": (89.1, 53.3)}
MODEL_ORDER = ["logistic", "mlp", "cnn", "gru"]
KEYS = ["model.name", "data.shuffle_seq"]


def _extra_keys(table: pd.DataFrame) -> list[str]:
    """Config columns that vary between runs of one model and data variant (e.g. model.width), seeds aside."""
    cfg_cols = [c for c in table.columns if "." in c and not c.startswith(("paths.", "final_", "best_"))]
    varies = table.groupby(KEYS)[cfg_cols].nunique(dropna=False).max() if cfg_cols else pd.Series(dtype=int)
    return [c for c in cfg_cols if c not in KEYS and varies.get(c, 1) > 1]


def table1(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std (over seeds) of final and best-on-test accuracy %, beside the paper's numbers."""
    t = table.assign(final=100 * table["final_test_acc"], best=100 * table["best_test_acc"])
    by = KEYS + _extra_keys(table)
    out = mean_std(t, by, "final").rename(columns={"mean": "final_test_acc_mean", "std": "final_test_acc_std",
                                                   "count": "seeds"})
    out["best_on_test_acc_mean"] = mean_std(t, by, "best")["mean"]
    out["paper"] = [PAPER.get(m, (None, None))[int(bool(s))] for m, s in zip(out["model.name"],
                                                                             out["data.shuffle_seq"], strict=True)]
    out["original_code"] = [ORIGINAL_CODE.get(m, (None, None))[int(bool(s))]
                            for m, s in zip(out["model.name"], out["data.shuffle_seq"], strict=True)]
    out["_order"] = out["model.name"].map({m: i for i, m in enumerate(MODEL_ORDER)})
    return out.sort_values(["data.shuffle_seq", "_order"] + by[2:]).drop(columns="_order").round(2)


def to_markdown(t: pd.DataFrame) -> str:
    """A Markdown table (no extra dependency)."""
    cols = list(t.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def figure2(table: pd.DataFrame) -> plt.Figure:
    """Test accuracy vs step per model (mean over seeds, band = std); shuffled data dashed."""
    curves = records.collect_curves(table, KEYS + ["seed"])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 4))
        colors = dict(zip(MODEL_ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
        for (name, shuffled), sub in curves.groupby(["model.name", "data.shuffle_seq"]):
            s = sub.groupby("step")["test_acc"].agg(["mean", "std"]).reset_index()
            ls, label = ("--", f"{name} (shuffled)") if shuffled else ("-", name)
            ax.plot(s["step"], 100 * s["mean"], ls=ls, color=colors.get(name), label=label)
            ax.fill_between(s["step"], 100 * (s["mean"] - s["std"].fillna(0)),
                            100 * (s["mean"] + s["std"].fillna(0)), color=colors.get(name), alpha=0.15, lw=0)
        ax.axhline(95.8, color="gray", lw=0.8, ls=":", label="human (95.8)")
        ax.set(xlabel="training step", ylabel="test accuracy (%)", ylim=(0, 100),
               title="MNIST-1D benchmark (mean ± std over seeds)")
        ax.legend(frameon=False, fontsize=8, ncol=2, loc="lower right")
    return fig


def summarize(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write table1.csv, table1.md and figure2.png/.pdf into out_dir."""
    out_dir = Path(out_dir)
    t = table1(table)
    files = {"table1.csv": t.to_csv(index=False), "table1.md": to_markdown(t)}
    return [*records.write_texts(out_dir, files), *save_figure(figure2(table), out_dir, "figure2")]
