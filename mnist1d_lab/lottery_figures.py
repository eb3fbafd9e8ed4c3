"""Lottery tickets across trials: the sweep's tables, the summary beside the original's numbers, Figures 3
and 9 (called by `experiments.lottery.summarize` with the collected runs of the sweep)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import records
from .plots import save_figure, subplots

# The original notebook's printed numbers (final test accuracy %, trial 0 / trial 1; the mnist1d
# repository's lottery-tickets notebook): rounds at a few sparsities, ablation means of 2 trials.
ORIGINAL_ROUNDS = {0.0: ((66.4, 64.8), (60.6, 61.4)), 0.5: ((67.4, 65.0), (63.8, 61.7)), 0.8: ((71.2, 70.5), (64.3, 65.4)),
                   0.9: ((74.3, 74.1), (60.5, 65.7)), 0.92: ((75.6, 74.4), (60.6, 61.8)),
                   0.96: ((69.3, 71.5), (51.5, 49.9)), 0.99: ((41.9, 41.5), (16.7, 15.4)), 1.0: ((10.2, 10.2), (10.2, 10.2))}
ORIGINAL_ABLATIONS = {"transfer": (64.20, 65.85, 59.95), "shuffled": (63.75, 62.80, 60.70),
                      "reversed": (63.05, 62.80, 60.25), "halves_swapped": (64.10, 61.85, 59.20),
                      "new_seed_init": (63.75, 65.50, 60.45)}  # dense, lottery, random
ORIGINAL_ADJACENCY = {"p2": (0.0093, 0.0056), "p3": (0.0024, 0.00015), "p4": (0.0003, 0.0)}  # lottery, random (read off)
COLORS = {"dense": "0.4", "lottery": "C3", "random": "C0", "lottery_rewound": "C1"}


def _se(x: pd.Series) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{rounds, ablations, adjacency}: the trials' stage rows, `trial` = the run's seed."""
    stages = records.collect_stages(table).rename(columns={"seed": "trial"})
    out = {}
    for name, cols in (("rounds", ["trial", "kind", "round", "target_sparsity", "sparsity", "final_test_acc",
                                   "best_test_acc", "best_test_step", "final_train_acc"]),
                       ("ablations", ["trial", "arm", "model", "final_test_acc", "best_test_acc", "final_train_acc"]),
                       ("adjacency", ["trial", "mask", "metric", "mean", "se", "null_mean", "null_std", "p_value"])):
        sub = stages[stages["table"] == name] if "table" in stages else pd.DataFrame(columns=cols)
        sub = sub[[c for c in cols if c in sub]].reset_index(drop=True)
        out[name] = sub.astype({c: "int64" for c in ("round", "best_test_step") if c in sub})
    return out


def summary_md(table: pd.DataFrame, t: dict[str, pd.DataFrame]) -> str:
    """lottery_summary.md: the ticket, the test-selected round, ablations and adjacency beside the original."""
    lines = ["# Lottery tickets: ours beside the original's printed numbers", "",
             "Final test accuracy % (the last step of each round); ours per trial (seed), the original's trial 0 / 1.", "",
             "| trial | ticket round | sparsity | lottery | random | dense (round 0) | test-selected round (sparsity, acc) |",
             "|---|---|---|---|---|---|---|"]
    for _, row in table.sort_values("seed").iterrows():
        lines.append(f"| {row['seed']} | {int(row['ticket_round'])} | {row['ticket_sparsity']:.3f} | "
                     f"{100 * row['final_test_acc']:.1f} | {100 * row['ticket_random_final_test_acc']:.1f} | "
                     f"{100 * row['dense_final_test_acc']:.1f} | {int(row['test_selected_round'])} "
                     f"({row['test_selected_sparsity']:.3f}, {100 * row['test_selected_final_test_acc']:.1f}) |")
    lines += ["", "Original at round 91 (0.919): lottery 75.6 / 74.4, random 60.6 / 61.8, dense 66.4 / 64.8 "
              "(chosen post hoc on test accuracy).", "", "## Rounds near the original's sparsities", "",
              "| sparsity | ours lottery (mean) | ours random (mean) | original lottery | original random |", "|---|---|---|---|---|"]
    r = t["rounds"]
    for s, (lot, ran) in ORIGINAL_ROUNDS.items():
        near = r.loc[(r["target_sparsity"] - s).abs() <= 0.006]
        if near.empty:
            continue
        m = near.groupby("kind")["final_test_acc"].mean() * 100
        lines.append(f"| {s:.2f} | {m.get('lottery', np.nan):.1f} | {m.get('random', np.nan):.1f} | "
                     f"{lot[0]} / {lot[1]} | {ran[0]} / {ran[1]} |")
    lines += ["", "## Ablations (mean +- standard error over trials; original: mean of 2 trials)", "",
              "| arm | dense | lottery | random | lottery, rewound | original dense / lottery / random | ticket beats dense? |",
              "|---|---|---|---|---|---|---|"]
    a = t["ablations"]
    for arm, sub in a.groupby("arm", sort=False):
        stats = {m: (100 * g["final_test_acc"].mean(), 100 * _se(g["final_test_acc"])) for m, g in sub.groupby("model")}
        cells = {m: f"{stats[m][0]:.1f} +- {stats[m][1]:.1f}" if m in stats else "-"
                 for m in ("dense", "lottery", "random", "lottery_rewound")}
        orig = ORIGINAL_ABLATIONS.get(arm)
        wins = "yes" if stats["lottery"][0] > stats["dense"][0] else "no"
        lines.append(f"| {arm} | {' | '.join(cells.values())} | "
                     f"{' / '.join(f'{v:.2f}' for v in orig) if orig else '-'} | {wins} |")
    lines += ["", "## First-layer adjacency (mean over units +- std/sqrt(H); p: one-sided, vs random placement "
              "with each unit's count)", "", "| metric | lottery | p | random | p | original lottery / random |",
              "|---|---|---|---|---|---|"]
    d = t["adjacency"]
    for metric, sub in d.groupby("metric"):
        g = sub.groupby("mask")[["mean", "se", "p_value"]].mean()
        cells = [f"{g.loc[k, 'mean']:.4f} +- {g.loc[k, 'se']:.4f} | {g.loc[k, 'p_value']:.3g}" for k in ("lottery", "random")]
        o = ORIGINAL_ADJACENCY.get(metric, (np.nan, np.nan))
        lines.append(f"| {metric} | {' | '.join(cells)} | {o[0]} / {o[1]} |")
    return "\n".join(lines + verdicts(table, t)) + "\n"


WIN_POINTS = 5.0          # the ticket must beat the random ticket by this many points
BAND = (0.80, 0.96)       # ... at the chosen round and on average over the rounds in this sparsity band


def verdicts(table: pd.DataFrame, t: dict[str, pd.DataFrame]) -> list[str]:
    """The experiment's claims checked on the runs (means over trials): ticket vs random ticket at the
    chosen round and over the 80-96 % band, and the first layer's adjacency p2, ticket vs random."""
    at_ticket = 100 * (table["final_test_acc"] - table["ticket_random_final_test_acc"]).mean()
    r = t["rounds"]
    band = r[r["sparsity"].between(*BAND)].groupby(["kind", "trial"])["final_test_acc"].mean().groupby("kind").mean()
    over_band = 100 * (band.get("lottery", np.nan) - band.get("random", np.nan))
    p2 = t["adjacency"].query("metric == 'p2'").groupby("mask")[["mean", "p_value"]].mean()
    lot, ran = (p2.loc[k] if k in p2.index else pd.Series({"mean": np.nan, "p_value": np.nan}) for k in ("lottery", "random"))

    def yes(ok: bool, *values: float) -> str:  # n/a when a number it rests on is missing (no round in the band)
        return "n/a" if any(pd.isna(v) for v in values) else "yes" if ok else "no"

    return ["", "## Verdicts (means over trials)", "",
            f"- Ticket beats the random ticket by >= {WIN_POINTS:g} points at the chosen round: "
            f"{yes(at_ticket >= WIN_POINTS, at_ticket)} ({at_ticket:+.1f}; the original: +15.0 / +12.6).",
            f"- ... and on average over the rounds with sparsity in [{BAND[0]:.2f}, {BAND[1]:.2f}]: "
            f"{yes(over_band >= WIN_POINTS, over_band)} ({over_band:+.1f}).",
            "- Ticket's first layer more adjacent than the random ticket's (p2): "
            f"{yes(lot['mean'] > ran['mean'], lot['mean'], ran['mean'])} "
            f"({lot['mean']:.4f} vs {ran['mean']:.4f}; against random placement with each unit's count, "
            f"p = {lot['p_value']:.3g} for the ticket, {ran['p_value']:.3g} for the random ticket)."]


def _band(ax, x, ys: np.ndarray, color, label) -> None:
    """Mean +- standard error over trials (rows of ys)."""
    m = ys.mean(0)
    se = ys.std(0, ddof=1) / np.sqrt(len(ys)) if len(ys) > 1 else np.zeros_like(m)
    ax.plot(x, 100 * m, color=color, label=label, lw=1.2)
    ax.fill_between(x, 100 * (m - se), 100 * (m + se), color=color, alpha=0.25, lw=0)


def figure3(table: pd.DataFrame, t: dict[str, pd.DataFrame]):
    """Panels a-g: ticket-round curves, accuracy vs sparsity, the ablation arms, adjacency bars."""
    fig, axes = subplots(2, 4, figsize=(16, 7))
    axes = axes.flat
    curves = [records.load_artifact(d, "round_curves.npz") for d in table["record_dir"]]
    ticket = int(table["ticket_round"].iloc[0])
    ax = axes[0]
    for kind, r, label in (("lottery", ticket, "lottery ticket"), ("random", ticket, "random ticket"), ("lottery", 0, "dense")):
        _band(ax, curves[0]["steps"], np.stack([c[kind][r, :, 1] for c in curves]),
              COLORS["dense" if r == 0 else kind], label)
    ax.set(title=f"a) sparsity {curves[0]['sparsity'][ticket]:.2f}: test accuracy", xlabel="step", ylabel="test accuracy %")
    ax.legend(fontsize=8)
    ax = axes[1]
    r = t["rounds"]
    for kind in ("lottery", "random"):
        piv = r[r["kind"] == kind].pivot(index="trial", columns="round", values="final_test_acc")
        _band(ax, 100 * np.asarray(curves[0]["sparsity"]), piv.to_numpy(), COLORS[kind], kind)
    ax.set(title="b) final test accuracy vs sparsity", xlabel="sparsity %", ylabel="test accuracy %")
    ax.legend(fontsize=8)
    abl = [records.load_artifact(d, "ablation_curves.csv") for d in table["record_dir"]
           if records.artifact_path(d, "ablation_curves.csv").is_file()]
    abl = pd.concat([a.assign(trial=i) for i, a in enumerate(abl)]) if abl else pd.DataFrame(columns=["arm"])
    titles = {"transfer": "c) new data", "reversed": "d) reversed", "shuffled": "e) shuffled",
              "new_seed_init": "f) new init", "halves_swapped": "halves swapped"}
    for ax, arm in zip(axes[2:7], titles, strict=True):
        sub = abl[abl["arm"] == arm]
        if sub.empty:  # an arm left out (lottery.ablation.arms)
            ax.set_visible(False)
            continue
        for model, g in sub.groupby("model"):
            piv = g.pivot(index="trial", columns="step", values="test_acc")
            _band(ax, piv.columns.to_numpy(), piv.to_numpy(), COLORS.get(model, "k"), model)
        ax.set(title=titles[arm], xlabel="step", ylabel="test accuracy %")
        ax.set_ylim(max(0, 100 * sub["test_acc"].quantile(0.2) - 5), None)
        ax.legend(fontsize=7)
    ax = axes[7]
    d = t["adjacency"].groupby(["metric", "mask"])["mean"].agg(["mean"]).reset_index()
    se = t["adjacency"].groupby(["metric", "mask"])["se"].mean().reset_index()
    metrics = sorted(d["metric"].unique())
    for i, kind in enumerate(("random", "lottery")):
        v = d[d["mask"] == kind].set_index("metric").reindex(metrics)["mean"]
        e = se[se["mask"] == kind].set_index("metric").reindex(metrics)["se"]
        ax.bar(np.arange(len(metrics)) + 0.4 * i - 0.2, v, 0.4, yerr=e, color=COLORS[kind], label=kind)
    ax.set(title="g) adjacent kept inputs (first layer)", xticks=range(len(metrics)), xticklabels=metrics, ylabel="per unit / L")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure9(table: pd.DataFrame):
    """The ticket round's first-layer masks (inputs x hidden units), random and lottery, one row per trial;
    units sorted by adjacent kept pairs + 0.001 x kept count."""
    from .lottery import unit_order

    fig, axes = subplots(len(table), 2, figsize=(14, 2.2 * len(table)), squeeze=False)
    for i, (_, row) in enumerate(table.sort_values("seed").iterrows()):
        masks = records.load_artifact(row["record_dir"], "ticket_masks.npz")
        for j, kind in enumerate(("random", "lottery")):
            m = masks[f"{kind}/hidden.0.weight"]  # (H, L)
            axes[i, j].imshow(m[unit_order(m)].T, aspect="auto", cmap="gray_r", interpolation="nearest")
            axes[i, j].set(title=f"{kind} ticket, trial {row['seed']}", xlabel="hidden unit (sorted)", ylabel="input")
            axes[i, j].grid(False)
    fig.tight_layout()
    return fig


def summarize(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write lottery_rounds.csv, lottery_ablations.csv, lottery_adjacency.csv, lottery_summary.md, Figures 3 and 9."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table[table["status"] == "complete"] if "status" in table else table
    if table.empty:
        return []
    t, out = tables(table), []
    for name, frame in t.items():
        out.append(out_dir / f"lottery_{name}.csv")
        records.write_atomic(out[-1], frame.to_csv(index=False))
    out.append(out_dir / "lottery_summary.md")
    records.write_atomic(out[-1], summary_md(table, t))
    out += save_figure(figure3(table, t), out_dir, "figure3")
    out += save_figure(figure9(table), out_dir, "figure9")
    return out
