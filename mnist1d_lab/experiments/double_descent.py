"""Deep double descent (paper Figure 4): test error vs model size, with and without label noise.

Question: does test error fall, rise near the interpolation threshold (the smallest model that fits
          the noisy training labels), and fall again? Is the threshold near n or n*K parameters
          (n training examples, K = 10 classes), and does that depend on the loss (cross-entropy, MSE)?
Command:  python -m mnist1d_lab experiment=double_descent            (MLP clean, MLP noisy, CNN noisy: 67 runs)
          python -m mnist1d_lab experiment=double_descent model.width='range(1,200)'    (398 MLP runs)
          python -m mnist1d_lab experiment=double_descent scale=quick   (the CNN grid's flat tail thinned: 58 runs)
          python -m mnist1d_lab experiment=double_descent_mse        (CE vs MSE x n in 1k/2k/4k: 60 runs)
          python scripts/figure4.py [--mse] [--smoke]                (runs the above, prints the outputs)
CPU time: on 2 cores with the batched launcher about 9.5 min for the 67 runs, less with scale=quick, ~5 min
          for the CE-vs-MSE study (docs/double_descent.md); the original notebook took 11 + 13 + 47 min.
Expected: noisy MLP: test error ~47 % at h~16, a peak ~54 % near h~47-61 where train error reaches 0
          (~5-7k parameters, near n = 4,000, far below n*K = 40,000), then ~45 % at h=300; clean MLP:
          68 -> 37 % without a pronounced peak; noisy CNN: ~20 % at c=10, peak ~34 % at c~18, ~28 % at 100.
Outputs:  dd_results.csv (one row per run), dd_thresholds.csv/.md (per setting), figure4.png/.pdf;
          dd_curves.csv + figure4_epochs.png/.pdf (epoch-wise: test error over size and epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter

from .. import records
from ..plots import STYLE, save_figure
from .benchmark import to_markdown
from .train import run  # noqa: F401  (each job is a plain training run)

BATCHABLE = True  # its jobs may be trained stacked by hydra/launcher=batched

K = 10  # classes
SIZE_KEY = {"mlp": "model.width", "cnn": "model.channels"}  # the swept knob of each model family
SETTING = ["model.name", "train.loss", "train.label_noise", "train.label_noise_mode", "n_train"]
RESULT_COLUMNS = ["model.name", "size", "num_params", "train.loss", "train.label_noise", "train.label_noise_mode",
                  "n_train", "seed", "train_error", "test_error", "final_train_loss", "final_test_loss",
                  "label_noise_changed_fraction", "label_noise_seed", "steps", "diverged"]


def dd_results(table: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run: size (MLP width or CNN channels), parameters, final errors (1 - accuracy), losses
    (RESULT_COLUMNS, then the table's `keep` columns)."""
    t = table.copy()
    t["size"] = [row.get(SIZE_KEY.get(row["model.name"], ""), np.nan) for _, row in t.iterrows()]
    t["size"] = t["size"].astype("Int64")
    t["train_error"] = (1 - t["final_train_acc"]).round(6)  # accuracies are float32 fractions of n
    t["test_error"] = (1 - t["final_test_acc"]).round(6)
    for c in RESULT_COLUMNS:
        if c not in t:
            t[c] = np.nan
    t["train.label_noise"] = t["train.label_noise"].astype(float)
    return t[RESULT_COLUMNS + list(keep)].sort_values(SETTING + ["num_params", "seed"]).reset_index(drop=True)


def _by_size(sub: pd.DataFrame) -> pd.DataFrame:
    """Mean (over seeds) errors per size of one setting, sorted by parameter count."""
    return (sub.groupby(["size", "num_params"], as_index=False)[["train_error", "test_error"]].mean()
            .sort_values("num_params").reset_index(drop=True))


def interpolation_threshold(curve: pd.DataFrame, tol: float = 0.0) -> pd.Series | None:
    """The smallest model (row of a by-size curve) whose training error is <= tol, or None."""
    fit = curve[curve["train_error"] <= tol]
    return fit.iloc[0] if len(fit) else None


def test_peak(curve: pd.DataFrame, threshold_params: float | None = None) -> tuple[pd.Series, pd.Series]:
    """(classical minimum, peak): the lowest test error below the threshold, then the highest at or after it."""
    below = curve if threshold_params is None else curve[curve["num_params"] < threshold_params]
    i_min = (below if len(below) else curve)["test_error"].idxmin()
    return curve.loc[i_min], curve.loc[curve.loc[i_min:, "test_error"].idxmax()]


def thresholds(results: pd.DataFrame, tol: float = 0.0) -> pd.DataFrame:
    """Per setting: interpolation threshold, classical minimum and test-error peak, beside n and n*K."""
    rows = []
    for key, sub in results.groupby(SETTING, dropna=False):
        curve = _by_size(sub)
        thr = interpolation_threshold(curve, tol)
        lo, peak = test_peak(curve, None if thr is None else thr["num_params"])
        n = int(key[-1])
        rows.append({**dict(zip(SETTING, key, strict=True)), "seeds": sub["seed"].nunique(),
                     "n": n, "n_K": n * K,
                     "threshold_size": None if thr is None else int(thr["size"]),
                     "threshold_params": None if thr is None else int(thr["num_params"]),
                     "threshold_over_n": None if thr is None else round(thr["num_params"] / n, 2),
                     "min_size": int(lo["size"]), "min_test_error": round(100 * lo["test_error"], 2),
                     "peak_size": int(peak["size"]), "peak_params": int(peak["num_params"]),
                     "peak_test_error": round(100 * peak["test_error"], 2),
                     "peak_excess": round(100 * (peak["test_error"] - lo["test_error"]), 2),
                     "largest_size": int(curve["size"].iloc[-1]),
                     "largest_test_error": round(100 * curve["test_error"].iloc[-1], 2)})
    return pd.DataFrame(rows)


def _panel_title(model: str, noise: float, mode: str, n: int) -> str:
    noise_txt = "clean labels" if noise == 0 else f"{100 * noise:g} % label noise" + (
        "" if mode == "uniform" else f" ({mode})")
    return f"{model.upper()}, {noise_txt}, n = {n:,}"


def _count(x: float, _pos=None) -> str:
    """Tick label for a parameter count: 100, 1k, 10k, 1M."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:g}{suffix}"
    return f"{x:g}"


PANEL_KEYS = ["model.name", "train.label_noise", "train.label_noise_mode", "n_train"]  # one panel of Figure 4 each
_MODEL_ORDER = {"mlp": 0, "cnn": 1}


def _panels(frame: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key values, rows) per panel: MLP before CNN, clean first, large n first, then any further keys."""
    return sorted(frame.groupby(keys, dropna=False),
                  key=lambda kv: (_MODEL_ORDER.get(kv[0][0], 2), kv[0][1], -kv[0][3], *kv[0][4:]))


def _panel_grid(count: int, width: float) -> tuple[plt.Figure, np.ndarray]:
    """A figure of `count` panels, at most 3 per row, each `width` x 3.6 inches."""
    ncols = min(3, count)
    nrows = -(-count // ncols)
    return plt.subplots(nrows, ncols, figsize=(width * ncols, 3.6 * nrows), squeeze=False)


def _params_axis(ax: plt.Axes, title: str, ylabel: str) -> None:
    """Log parameter-count x axis (100, 1k, 10k), labels and a small title."""
    ax.set(xscale="log", xlabel="parameters", ylabel=ylabel, title=title)
    ax.title.set_fontsize(9)
    ax.xaxis.set_major_formatter(FuncFormatter(_count))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _finish(fig: plt.Figure, axes: np.ndarray, used: int, title: str) -> plt.Figure:
    """Hide the unused panels, add the title, lay out."""
    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _loss_name(loss: str) -> str:
    return "CE" if loss == "cross_entropy" else str(loss).upper()


def figure4(results: pd.DataFrame) -> plt.Figure:
    """Test (solid) and train (dashed) error % vs parameters, one panel per setting, one colour per loss."""
    panels = _panels(results, PANEL_KEYS)
    with plt.rc_context(STYLE):
        fig, axes = _panel_grid(len(panels), 4.6)
        colors = {"cross_entropy": "C0", "mse": "C3"}
        for ax, ((model, noise, mode, n), sub) in zip(axes.flat, panels, strict=False):
            for loss, ls in sub.groupby("train.loss"):
                curve = _by_size(ls)
                c, name = colors.get(loss, "C2"), _loss_name(loss)
                ax.plot(curve["num_params"], 100 * curve["test_error"], "-o", ms=2.5, color=c, label=f"test ({name})")
                ax.plot(curve["num_params"], 100 * curve["train_error"], "--", lw=1, color=c, alpha=0.7,
                        label=f"train ({name})")
                thr = interpolation_threshold(curve)
                if thr is not None:
                    ax.plot(thr["num_params"], 100 * thr["test_error"], "v", color=c, ms=6, mec="k", mew=0.5)
            for x, txt in ((n, "n"), (n * K, "nK")):
                ax.axvline(x, color="0.4", ls=":", lw=1)
                ax.text(x, 1.0, f"{txt} ", transform=ax.get_xaxis_transform(), ha="right", va="top", fontsize=8,
                        color="0.3")  # left of the line: thresholds sit just right of n (or of nK)
            _params_axis(ax, _panel_title(model, noise, mode, int(n)), "error (%)")
            ax.set_ylim(0, None)
            ax.legend(frameon=False, fontsize=7, loc="best")
        return _finish(fig, axes, len(panels),
                       "Deep double descent on MNIST-1D\n(final errors; ▼ = smallest model with zero train error)")


RUN_COLUMNS = [*SETTING, "size", "num_params", "seed"]  # which run a row of dd_curves belongs to
CURVE_COLUMNS = [*RUN_COLUMNS, "step", "epoch", "train_error", "test_error"]


def dd_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Epoch-wise errors: one row per run and evaluation, read from each run's curves.csv (runs whose
    record has no curves are left out). epoch = step / updates per epoch (ceil(n_train / batch_size))."""
    if "record_dir" not in table:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    frames = []
    for _, row in dd_results(table, keep=["record_dir", "train.batch_size"]).iterrows():
        path = Path(str(row["record_dir"])) / "curves.csv"
        if not path.is_file():
            continue
        c = pd.read_csv(path, usecols=["step", "train_acc", "test_acc"])
        per_epoch = -(-int(row["n_train"]) // int(row["train.batch_size"]))
        frames.append(pd.DataFrame({**{k: row[k] for k in RUN_COLUMNS}, "step": c["step"],
                                    "epoch": c["step"] / per_epoch, "train_error": (1 - c["train_acc"]).round(6),
                                    "test_error": (1 - c["test_acc"]).round(6)}))
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS].sort_values(
        SETTING + ["num_params", "seed", "step"]).reset_index(drop=True)


def _edges(v: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted centres v (geometric midpoints if log) for pcolormesh."""
    w = np.log(v) if log else v.astype(float)
    mid = (w[1:] + w[:-1]) / 2 if len(w) > 1 else np.array([])
    first = w[0] - (mid[0] - w[0] if len(mid) else 0.5)
    last = w[-1] + (w[-1] - mid[-1] if len(mid) else 0.5)
    e = np.concatenate([[first], mid, [last]])
    return np.exp(e) if log else e


def figure_epochs(curves: pd.DataFrame, results: pd.DataFrame) -> plt.Figure:
    """Epoch-wise double descent: test error (colour) over parameters (x, log) and epochs (y), one panel
    per setting and loss (mean over seeds); dotted lines at n and n*K, dashed at the final threshold.
    The evaluation before training (epoch 0, ~90 % error everywhere) is left out of the picture."""
    keys = [*PANEL_KEYS, "train.loss"]
    panels = _panels(curves, keys)
    finals = dict(list(results.groupby(keys, dropna=False)))  # final errors of the same setting and loss
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, axes = _panel_grid(len(panels), 4.8)
        for ax, (key, sub) in zip(axes.flat, panels, strict=False):
            model, noise, mode, n, loss = key
            trained = sub[sub["step"] > 0] if (sub["step"] > 0).any() else sub
            grid = trained.pivot_table(index="epoch", columns="num_params", values="test_error", aggfunc="mean")
            x, y = grid.columns.to_numpy(float), grid.index.to_numpy(float)
            mesh = ax.pcolormesh(_edges(x, log=True), _edges(y, log=False), 100 * grid.to_numpy(),
                                 cmap="viridis", shading="flat")
            fig.colorbar(mesh, ax=ax, label="test error (%)", pad=0.02)
            for xv, txt in ((n, "n"), (n * K, "nK")):
                if x.min() <= xv <= x.max():
                    ax.axvline(xv, color="w", ls=":", lw=1)
                    ax.text(xv, 0.02, f"{txt} ", transform=ax.get_xaxis_transform(), ha="right", va="bottom",
                            fontsize=8, color="w")
            thr = interpolation_threshold(_by_size(finals[key])) if key in finals else None
            if thr is not None:
                ax.axvline(thr["num_params"], color="w", ls="--", lw=1)
            _params_axis(ax, f"{_panel_title(model, noise, mode, int(n))}, {_loss_name(loss)}", "epoch")
        return _finish(fig, axes, len(panels), "Epoch-wise double descent: test error during training\n"
                       "(dashed: smallest model with zero final train error)")


def summarize(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write dd_results.csv, dd_thresholds.csv/.md, figure4.png/.pdf and, from the runs' curves,
    dd_curves.csv and figure4_epochs.png/.pdf into out_dir."""
    out_dir = Path(out_dir)
    res = dd_results(table)
    thr = thresholds(res)
    files = {"dd_results.csv": res.to_csv(index=False), "dd_thresholds.csv": thr.to_csv(index=False),
             "dd_thresholds.md": to_markdown(thr)}
    out = [*records.write_texts(out_dir, files), *save_figure(figure4(res), out_dir, "figure4")]
    curves = dd_curves(table)
    if not curves.empty:
        out += [*records.write_texts(out_dir, {"dd_curves.csv": curves.to_csv(index=False)}),
                *save_figure(figure_epochs(curves, res), out_dir, "figure4_epochs")]
    return out
