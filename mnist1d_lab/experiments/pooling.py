"""Pooling vs training-set size (paper Figure 7): no pooling, stride 2, max, average and L2 pooling.

Question: is pooling a prior that pays in the low-data regime and costs in the high-data one (paper:
          pooling "helped performance in low-data regimes and hindered it in high-data regimes"; max
          pooling may "delete information" and do worse than L2 pooling with much data)?
Command:  python -m mnist1d_lab experiment=pooling                 (5 variants x 6 sizes x 3 seeds = 90 runs)
          python -m mnist1d_lab experiment=pooling scale=quick     (sizes 1k, 5k, 50k: 45 runs)
          python -m mnist1d_lab experiment=pooling seed=0          (the original's one seed: 30 runs)
CPU time: 5 min 53 s for the 90 runs on an idle 2-core x86 CPU from an empty store (the batched launcher:
          each variant's 18 runs, sizes x seeds, as one stack in two parts side by side); evaluation every
          100 steps of the 10,000 test rows and at most 10,000 training rows (`train.eval_train_rows`) is a
          third of the arithmetic (docs/pooling.md, Cost).
Expected: at 1k max / avg / L2 pooling 75-78 % against 60 % without pooling (+14 to +17 points; the original
          run: +19); at 50k under one point apart (97.2-97.4 vs 96.7; the original: 98.1 max vs 96.3).
Outputs:  pooling_results.csv (one row per run), pooling_table.csv/.md (mean ± std beside the original's
          numbers, with the verdicts), figure7.png/.pdf (curves at 1k, 5k, 50k and accuracy vs size).

Protocol (docs/pooling.md): one pool of 60,000 examples (50,000 train, 10,000 test) and nested training
sets (`train.train_size`: the first n rows), so every size is scored on the same 10,000 test examples.
The original notebook regenerated the data per size with a 1,000-example test set each; that protocol is
one override away (docs/pooling.md, "The original's protocol").
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter

from .. import records
from ..plots import STYLE, mean_std, save_figure
from .benchmark import to_markdown
from .train import run  # noqa: F401  (each job is a plain training run)

BATCHABLE = True  # hydra/launcher=batched (its default) stacks each variant's sizes and seeds

VARIANTS = ["no_pool", "stride_2", "max_pool", "avg_pool", "l2_pool"]  # the original notebook's names
POOLED = ["max_pool", "avg_pool", "l2_pool"]
ORIGINAL = {  # final test accuracy % at step 6,000, the original notebook's one run (1,000 test examples each)
    1000: (59.2, 57.4, 78.2, 78.0, 77.2), 2000: (82.0, 81.7, 89.2, 90.0, 89.9),
    5000: (91.9, 89.9, 94.5, 94.0, 95.3), 10000: (94.3, 91.3, 97.0, 96.0, 96.6),
    20000: (94.4, 92.2, 96.8, 96.2, 97.8), 50000: (96.3, 95.4, 98.1, 97.3, 97.1)}
PANELS = (1000, 5000, 50000)  # the training sizes of Figure 7's curve panels
DATA_KEYS = ["data.num_samples", "data.train_split", "data.seed", "data.shuffle_seq"]


def variant(pool, stride) -> str:
    """The original's variant name from model.pool (NaN or none: no pooling) and model.stride."""
    if isinstance(pool, str) and pool != "none":
        return f"{pool}_pool"
    return "stride_2" if int(stride) == 2 else "no_pool" if int(stride) == 1 else f"stride_{int(stride)}"


def pm(mean: float, err: float, sign: bool = False) -> str:
    """'mean ± err' to one decimal; the mean alone when err is NaN (a single seed)."""
    text = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return text if pd.isna(err) else f"{text} ± {err:.1f}"


def variants(table: pd.DataFrame) -> list[str]:
    """The variant name of every row of a run table."""
    pool = table["model.pool"] if "model.pool" in table else [np.nan] * len(table)
    return [variant(p, s) for p, s in zip(pool, table["model.stride"], strict=True)]


def pooling_results(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run: variant, n_train, seed, final and best-on-test accuracy %, parameters."""
    out = pd.DataFrame({"variant": variants(table),
                        "n_train": table["n_train"].astype(int), "seed": table["seed"].astype(int),
                        "final_test_acc": (100 * table["final_test_acc"]).round(2),
                        "best_test_acc": (100 * table["best_test_acc"]).round(2),
                        "num_params": table["num_params"].astype(int)})
    for c in DATA_KEYS:
        out[c] = table[c] if c in table else np.nan
    out["_order"] = out["variant"].map({v: i for i, v in enumerate(VARIANTS)})
    return out.sort_values(["n_train", "_order", "seed"]).drop(columns="_order").reset_index(drop=True)


def pooling_table(res: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std (over seeds) of final test accuracy % per variant and size, beside the original's."""
    out = mean_std(res, ["n_train", "variant"], "final_test_acc").rename(
        columns={"mean": "final_test_acc_mean", "std": "final_test_acc_std", "count": "seeds"})
    out["best_on_test_acc_mean"] = mean_std(res, ["n_train", "variant"], "best_test_acc")["mean"]
    out["original"] = [ORIGINAL.get(n, (None,) * 5)[VARIANTS.index(v)] if v in VARIANTS else None
                       for n, v in zip(out["n_train"], out["variant"], strict=True)]
    out["_order"] = out["variant"].map({v: i for i, v in enumerate(VARIANTS)})
    return out.sort_values(["n_train", "_order"]).drop(columns="_order").round(2).reset_index(drop=True)


def _diff(tab: pd.DataFrame, n: int, a: str, b: str) -> tuple[float, float] | None:
    """(mean_a - mean_b, its standard error over seeds) at size n, or None if either is missing."""
    rows = tab[tab["n_train"] == n].set_index("variant")
    if a not in rows.index or b not in rows.index:
        return None
    ra, rb = rows.loc[a], rows.loc[b]
    se = np.sqrt(ra["final_test_acc_std"] ** 2 / ra["seeds"] + rb["final_test_acc_std"] ** 2 / rb["seeds"])  # NaN: 1 seed
    return float(ra["final_test_acc_mean"] - rb["final_test_acc_mean"]), float(se)


def verdicts(tab: pd.DataFrame) -> list[str]:
    """The claims of the paper and of the original run, checked at the smallest and largest size."""
    sizes = sorted(tab["n_train"].unique())
    lo, hi = sizes[0], sizes[-1]
    fmt = lambda d: pm(*d, sign=True)  # noqa: E731  (difference ± its standard error, points)
    out = []
    gains = {v: _diff(tab, lo, v, "no_pool") for v in POOLED}
    if all(gains.values()):
        ok = all(d[0] >= 10 for d in gains.values())
        out.append(f"- Each of max, avg, L2 pooling beats no pooling by >= 10 points at n = {lo:,}: "
                   f"**{'yes' if ok else 'no'}** ({', '.join(f'{v} {fmt(d)}' for v, d in gains.items())}; "
                   "original run at 1,000: +19.0, +18.8, +18.0).")
    at_hi = {v: _diff(tab, hi, v, "no_pool") for v in POOLED}
    if all(at_hi.values()):
        best = max(at_hi, key=lambda v: at_hi[v][0])
        out.append(f"- The best pooling's advantage is < 4 points at n = {hi:,}: "
                   f"**{'yes' if at_hi[best][0] < 4 else 'no'}** ({best} {fmt(at_hi[best])}; original run at "
                   "50,000: max +1.8).")
        worse = [v for v, d in at_hi.items() if d[0] < 0]
        out.append(f"- Paper: pooling \"hindered\" performance with much data (every pooling variant below no "
                   f"pooling at n = {hi:,}): **{'yes' if len(worse) == len(POOLED) else 'no'}** "
                   f"({', '.join(f'{v} {fmt(d)}' for v, d in at_hi.items())}; original run: no, all above).")
    max_l2 = _diff(tab, hi, "max_pool", "l2_pool")
    if max_l2:
        out.append(f"- Paper: max pooling worse than L2 pooling with much data (n = {hi:,}): "
                   f"**{'yes' if max_l2[0] < 0 else 'no'}** (max - L2 {fmt(max_l2)}; original run: 98.1 vs 97.1, no"
                   "; at 20,000: 96.8 vs 97.8, yes).")
    return out


def _protocol_line(res: pd.DataFrame) -> str:
    """How the data were made: one pool for all sizes (nested) or one dataset per size."""
    data = res[DATA_KEYS].drop_duplicates()
    if len(data) == 1:
        n = int(data["data.num_samples"].iloc[0])
        n_train = int(n * float(data["data.train_split"].iloc[0]))
        return (f"One pool of {n:,} examples ({n_train:,} train, {n - n_train:,} test); each size trains on the "
                "first n training rows and is scored on the same test set.")
    return f"{len(data)} datasets (one per size, as the original's protocol): test sets differ between sizes."


def table_markdown(tab: pd.DataFrame, res: pd.DataFrame) -> str:
    """Wide table (ours mean ± std, the original's in brackets) with the verdicts below it."""
    lo, hi = int(tab["seeds"].min()), int(tab["seeds"].max())
    seeds = f"{lo}" if lo == hi else f"{lo}-{hi}"
    lines = ["# Pooling vs training-set size (paper Figure 7)", "", _protocol_line(res), "",
             f"Final test accuracy % at the last step, mean ± std over {seeds} seed{'s' * (hi > 1)}; "
             "[the original notebook's one run, 1,000 test examples per size].", ""]
    wide = {}
    for (n, v), r in tab.set_index(["n_train", "variant"]).iterrows():
        orig = "" if pd.isna(r["original"]) else f" [{r['original']:.1f}]"
        wide.setdefault(n, {})[v] = pm(r["final_test_acc_mean"], r["final_test_acc_std"]) + orig
    cols = [v for v in VARIANTS if v in set(tab["variant"])]
    frame = pd.DataFrame([{"n_train": f"{n:,}", **{v: wide[n].get(v, "") for v in cols}} for n in sorted(wide)])
    return "\n".join(lines) + "\n" + to_markdown(frame) + "\n## Verdicts\n\n" + "\n".join(verdicts(tab)) + "\n"


def _panel_sizes(sizes: list[int]) -> list[int]:
    """Figure 7's sizes (1k, 5k, 50k) when all ran, else the smallest, a middle and the largest."""
    if set(PANELS) <= set(sizes):
        return list(PANELS)
    return sorted({sizes[0], sizes[len(sizes) // 2], sizes[-1]})


def figure7(table: pd.DataFrame, tab: pd.DataFrame) -> plt.Figure:
    """Test accuracy vs step per variant at three sizes (mean over seeds smoothed with a Gaussian of
    sigma 1 evaluation, as the original; raw mean faint behind), and final accuracy vs size."""
    from scipy.ndimage import gaussian_filter1d

    curves = records.collect_curves(table.assign(variant=variants(table)), ["variant", "n_train", "seed"])
    sizes = _panel_sizes(sorted(int(n) for n in tab["n_train"].unique()))
    colors = {v: f"C{i}" for i, v in enumerate(VARIANTS)}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(3.6 * (len(sizes) + 1), 3.4))
        for ax, n in zip(axes, sizes, strict=False):
            sub = curves[curves["n_train"] == n] if not curves.empty else curves
            for v in VARIANTS:
                c = sub[sub["variant"] == v] if not sub.empty else sub
                if c.empty:
                    continue
                m = c.groupby("step")["test_acc"].mean()
                ax.plot(m.index, 100 * m.to_numpy(), color=colors[v], alpha=0.25, lw=0.8)
                ax.plot(m.index, 100 * gaussian_filter1d(m.to_numpy(), 1), color=colors[v], lw=1.4, label=v)
            ax.set(title=f"{n:,} training examples", xlabel="training step", ylabel="test accuracy (%)")
            ax.title.set_fontsize(9)
        ax = axes[-1]
        for v in VARIANTS:
            s = tab[tab["variant"] == v].sort_values("n_train")
            if len(s):
                ax.errorbar(s["n_train"], s["final_test_acc_mean"], yerr=s["final_test_acc_std"].fillna(0),
                            color=colors[v], marker="o", ms=3, capsize=2, label=v)
        ax.set(xscale="log", xlabel="training examples", ylabel="final test accuracy (%)",
               title="final accuracy vs size (mean ± std)")
        ax.set_xticks(sorted(tab["n_train"].unique()))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.title.set_fontsize(9)
        axes[0].legend(frameon=False, fontsize=7, loc="lower right")
        fig.suptitle("Pooling vs training-set size on MNIST-1D (paper Figure 7)", fontsize=10)
        fig.tight_layout()
    return fig


def summarize(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write pooling_results.csv, pooling_table.csv/.md and figure7.png/.pdf into out_dir."""
    out_dir = Path(out_dir)
    res = pooling_results(table)
    tab = pooling_table(res)
    files = {"pooling_results.csv": res.to_csv(index=False), "pooling_table.csv": tab.to_csv(index=False),
             "pooling_table.md": table_markdown(tab, res)}
    return [*records.write_texts(out_dir, files), *save_figure(figure7(table, tab), out_dir, "figure7")]
