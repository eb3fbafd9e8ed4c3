"""A spatial-prior scoreboard: how much each model loses when the 40 positions are shuffled.

Question: which models use spatial structure, and how much? Shuffling every example with one fixed
          permutation keeps all the information but destroys locality: a model without a spatial prior
          (logistic, MLP) should not care, convolutions and recurrences should lose, and pooling (a
          stronger locality prior) should lose more. Does the ranking hold with 12x more data?
Command:  python -m mnist1d_lab experiment=spatial_priors
          python -m mnist1d_lab experiment=spatial_priors scale=smoke     (seconds: the pipeline only)
Jobs:     logistic, MLP, CNN, GRU and the five pooling variants x normal/shuffled x 3 seeds, at 4,000
          training examples (experiment=benchmark's configs: its runs come from the result store, and
          the pooling variants run under the benchmark's protocol and data) and at 50,000 (the pooling
          pool, experiment=pooling's configs: its 50k runs are reused) = 108 runs.
CPU time: 9 min 55 s on 2 cores from an empty store (joblib, two runs side by side; the 50k part's
          evaluations of 20,000 rows every 100 steps dominate); scale=quick (the 4k part) under 2 min with
          the benchmark stored.
Expected: logistic and MLP gaps ~0; CNN and GRU lose 35-40 points at 4k (paper Table 1: 94 -> 56, 91 -> 57).
Outputs:  spatial_priors.csv/.md (normal, shuffled, gap ± its standard error, sorted by gap per size),
          spatial_priors.png/.pdf.

The jobs carry the experiment_name of the experiment whose runs they are (benchmark, pooling), so their
run keys are those experiments' keys; collect such a sweep with `--experiment spatial_priors`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from .. import records
from ..plots import STYLE, save_figure
from .benchmark import to_markdown
from .pooling import VARIANTS, pm, variant
from .train import run  # noqa: F401  (each job is a plain training run)

MODELS = ["logistic", "mlp", "cnn", "gru", *VARIANTS]


def model_label(name: str, pool, stride) -> str:
    """logistic / mlp / cnn / gru for the paper's models, the pooling notebook's names for cnn_pool."""
    if name != "cnn" or not isinstance(pool, str):  # model=cnn has no model.pool key: NaN in the table
        return name
    return variant(pool, stride)


def scoreboard(table: pd.DataFrame) -> pd.DataFrame:
    """Per training size and model: normal and shuffled final test accuracy % (mean, std, seeds) and the
    gap normal - shuffled with its standard error, sorted by gap (largest first) within each size."""
    pool = table["model.pool"] if "model.pool" in table else [np.nan] * len(table)
    stride = table["model.stride"] if "model.stride" in table else [np.nan] * len(table)
    t = pd.DataFrame({"n_train": table["n_train"].astype(int),
                      "model": [model_label(n, p, s) for n, p, s in zip(table["model.name"], pool, stride,
                                                                       strict=True)],
                      "shuffled": table["data.shuffle_seq"].astype(bool),
                      "num_params": table["num_params"].astype(int),
                      "acc": 100 * table["final_test_acc"]})
    g = (t.groupby(["n_train", "model", "num_params", "shuffled"])["acc"].agg(["mean", "std", "count"]).unstack()
         .reindex(columns=pd.MultiIndex.from_product([["mean", "std", "count"], [False, True]])))
    out = pd.DataFrame({"normal_mean": g[("mean", False)], "normal_std": g[("std", False)],
                        "shuffled_mean": g[("mean", True)], "shuffled_std": g[("std", True)],
                        "seeds": g[("count", False)].combine(g[("count", True)], min)}).reset_index()
    out["gap"] = out["normal_mean"] - out["shuffled_mean"]
    se2 = g[("std", False)] ** 2 / g[("count", False)] + g[("std", True)] ** 2 / g[("count", True)]
    out["gap_err"] = np.sqrt(se2.to_numpy())  # standard error of the difference of the two means
    return out.sort_values(["n_train", "gap"], ascending=[True, False]).round(2).reset_index(drop=True)


def scoreboard_markdown(board: pd.DataFrame) -> str:
    """One Markdown table per training size, largest gap first."""
    lines = ["# Spatial-prior scoreboard: accuracy on normal vs spatially shuffled MNIST-1D", "",
             "Final test accuracy %, mean ± std over seeds; gap = normal - shuffled ± its standard error.", ""]
    for n, sub in board.groupby("n_train"):
        frame = pd.DataFrame({
            "model": sub["model"], "parameters": sub["num_params"].map("{:,}".format),
            "normal": [pm(m, e) for m, e in zip(sub["normal_mean"], sub["normal_std"], strict=True)],
            "shuffled": [pm(m, e) for m, e in zip(sub["shuffled_mean"], sub["shuffled_std"], strict=True)],
            "gap": [pm(g, e, sign=True) for g, e in zip(sub["gap"], sub["gap_err"], strict=True)],
            "seeds": sub["seeds"].astype("Int64")})
        lines += [f"## {n:,} training examples", "", to_markdown(frame)]
    return "\n".join(lines)


def figure(board: pd.DataFrame) -> plt.Figure:
    """Gap (normal - shuffled accuracy, points) per model with its standard error, one panel per size."""
    sizes = sorted(board["n_train"].unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(sizes), figsize=(4.4 * len(sizes), 3.6), squeeze=False)
        for ax, n in zip(axes[0], sizes, strict=True):
            sub = board[board["n_train"] == n].sort_values("gap")
            colors = ["C0" if m in ("logistic", "mlp") else "C1" if m in ("cnn", "gru") else "C2"
                      for m in sub["model"]]
            ax.barh(sub["model"], sub["gap"], xerr=sub["gap_err"].fillna(0), color=colors, capsize=2)
            ax.axvline(0, color="0.3", lw=0.8)
            ax.set(xlabel="accuracy lost to shuffling (points)", title=f"{n:,} training examples")
            ax.title.set_fontsize(9)
        families = [Patch(color="C0", label="no spatial prior (logistic, MLP)"),
                    Patch(color="C1", label="the paper's CNN and GRU"), Patch(color="C2", label="cnn_pool variants")]
        axes[0, 0].legend(handles=families, frameon=False, fontsize=7, loc="best")
        fig.suptitle("Spatial priors: normal - shuffled test accuracy (± standard error over seeds)", fontsize=10)
        fig.tight_layout()
    return fig


def summarize(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write spatial_priors.csv, spatial_priors.md and spatial_priors.png/.pdf into out_dir."""
    out_dir = Path(out_dir)
    board = scoreboard(table)
    files = {"spatial_priors.csv": board.to_csv(index=False), "spatial_priors.md": scoreboard_markdown(board)}
    return [*records.write_texts(out_dir, files), *save_figure(figure(board), out_dir, "spatial_priors")]
