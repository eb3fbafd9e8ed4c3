"""Metalearning a learning rate, paper Figure 5.

Question: which constant SGD rate minimises the mean training loss of a 200-step inner run, and does
          gradient descent on the rate (exact hypergradient through the whole unroll) find it from
          both sides? Beyond the original: the meta-objective's landscape by brute force (61 fixed rates).
Command:  python -m mnist1d_lab experiment=metalearn_lr
CPU time: about 15-30 s on 2 cores (two trials side by side: 50 outer steps of a 200-step unroll;
          the landscape: 61 inner runs side by side, no gradient).
Expected: both trials end near 0.62 (the original notebook: 0.624 from 1.5, 0.620 from 0.15, meta-objective
          1.716), within one grid step of the landscape's minimum.

Inner model: MLP 40-50 (tanh)-10 (2,560 parameters), the same init (seed) for every outer step; inner
loop: plain SGD with the learned rate, 200 sequential batches of 50; meta-objective: the mean of the 200
inner losses. Writes figure5.png/.pdf, lr_landscape.csv, lr_trials.csv and summary.md as artifacts;
stages.csv has one row per outer step and trial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..context import RunContext
    from ..protocol import TrainResult

ORIGINAL = {"lr": {1.5: 0.6243, 0.15: 0.6203}, "meta_objective": 1.716}  # the notebook's printout, by start


CONFIG_NODE = "metalearn"  # the runner checks this node's keys against conf/experiment/metalearn_lr.yaml


def validated(cfg: DictConfig) -> dict:
    """The experiment's knobs (scale applied), checked."""
    return validate(cfg.metalearn)


def validate(node) -> dict:
    """The knobs of a `metalearn` node with its scale applied; ConfigError for bad values (before any work)."""
    from ..metalearn import activation, knobs, positive_int

    k = knobs(node)
    positive_int(k, "hidden", "inner_steps", "batch_size", "outer_steps", "stage_every")
    activation(k["activation"])
    if not k["initial_lrs"] or any(float(v) <= 0 for v in k["initial_lrs"]):
        raise ConfigError("metalearn.initial_lrs", k["initial_lrs"], "a non-empty list of positive rates")
    land = k["landscape"]
    if not (0 < float(land["min"]) < float(land["max"])) or int(land["num"]) < 2:
        raise ConfigError("metalearn.landscape", land, "0 < min < max and num >= 2")
    return k


def run(cfg: DictConfig, ctx: RunContext) -> TrainResult:
    """Two (or more) learning-rate trials side by side, then the landscape; figure and tables as artifacts."""
    import numpy as np
    import torch

    from ..data import load
    from ..metalearn import activation, init_mlp, lr_hypergrad, lr_landscape
    from ..protocol import TrainResult

    k = validated(cfg)
    data = load(cfg.data, device=ctx.device)
    act = activation(k["activation"])
    params0 = init_mlp([cfg.seed], k["hidden"], input_len=data.x.shape[1], device=ctx.device)
    inner = dict(x=data.x, y=data.y, steps=k["inner_steps"], batch_size=k["batch_size"], act=act)
    starts = [float(v) for v in k["initial_lrs"]]

    def outer_chunk(lr: list[float], first: int, last: int) -> dict:
        rates, rows = torch.tensor(lr, dtype=torch.float32, device=ctx.device), []
        for step in range(first, last):
            meta, grad = lr_hypergrad(params0, rates, **inner)
            new = rates - k["outer_lr"] * grad
            rows += [{"outer_step": step, "trial": i, "initial_lr": starts[i], "lr": float(rates[i]),
                      "meta_objective": float(meta[i]), "hypergrad": float(grad[i]), "lr_next": float(new[i])}
                     for i in range(len(starts))]
            rates = new.detach()
            ctx.report("metalearn_lr", step + 1, k["outer_steps"], lr_0=float(rates[0]))
        return {"lr": rates.tolist(), "rows": rows}

    lr, rows = starts, []
    for first in range(0, k["outer_steps"], k["stage_every"]):
        last = min(first + k["stage_every"], k["outer_steps"])
        done = ctx.stage(f"outer_{first:04d}", lambda lr=lr, a=first, b=last: outer_chunk(lr, a, b))
        lr, rows = done["lr"], rows + done["rows"]

    land = k["landscape"]
    grid = np.geomspace(float(land["min"]), float(land["max"]), int(land["num"]))
    meta_grid = ctx.stage("landscape", lambda: lr_landscape(
        params0, torch.tensor(grid, dtype=torch.float32, device=ctx.device), **inner).cpu().numpy())
    summary = summarize_run(lr, starts, rows, grid, np.asarray(meta_grid))
    write_artifacts(ctx, rows, grid, np.asarray(meta_grid), summary)
    summary["num_params"] = sum(p[0].numel() for p in params0)
    return TrainResult(summary=summary, stages=rows)


def summarize_run(lr: list[float], starts: list[float], rows: list[dict], grid, meta_grid) -> dict:
    """Final rates, their spread, the landscape's optimum and the distances the acceptance asks for."""
    import numpy as np

    best = int(np.argmin(meta_grid))
    ratio = float(grid[1] / grid[0])  # one step of the geometric grid, as a factor
    out = {"landscape_min_lr": float(grid[best]), "landscape_min_meta_objective": float(meta_grid[best]),
           "grid_step_factor": ratio, "final_lr_spread": float(max(lr) - min(lr))}
    last = max(r["outer_step"] for r in rows) if rows else -1
    for i, (start, end) in enumerate(zip(starts, lr, strict=True)):  # per trial i: its start and where it ended
        out[f"initial_lr_{i}"], out[f"final_lr_{i}"] = start, float(end)
        out[f"grid_steps_from_min_{i}"] = float(abs(np.log(end / grid[best])) / np.log(ratio))
        meta = [r["meta_objective"] for r in rows if r["trial"] == i and r["outer_step"] == last]
        out[f"final_meta_objective_{i}"] = meta[0] if meta else float("nan")
    out["max_distance_to_original_lr"] = float(max(abs(v - 0.62) for v in lr))  # the notebook's "~0.62"
    return out


def write_artifacts(ctx: RunContext, rows: list[dict], grid, meta_grid, summary: dict) -> None:
    """figure5.png/.pdf, lr_trials.csv, lr_landscape.csv and summary.md."""
    import pandas as pd

    from ..metalearn import figure_bytes

    trials = pd.DataFrame(rows)
    ctx.save_artifact("lr_trials.csv", trials)
    ctx.save_artifact("lr_landscape.csv", pd.DataFrame({"lr": grid, "meta_objective": meta_grid}))
    fig = figure5(trials, grid, meta_grid, summary)
    ctx.save_artifact("figure5.png", figure_bytes(fig, "png"))
    ctx.save_artifact("figure5.pdf", figure_bytes(fig, "pdf"))
    lines = ["# Metalearning a learning rate (Figure 5)", "",
             "| quantity | here | original notebook |", "|---|---|---|"]
    indices = sorted(int(key.removeprefix("initial_lr_")) for key in summary if key.startswith("initial_lr_"))
    for i in indices:
        start = summary[f"initial_lr_{i}"]
        orig = ORIGINAL["lr"].get(start)
        lines.append(f"| learned rate from {start:g} | {summary[f'final_lr_{i}']:.4f} | "
                     f"{'' if orig is None else f'{orig:.4f}'} |")
    lines += [f"| meta-objective at the end | {min(summary[f'final_meta_objective_{i}'] for i in indices):.4f} | "
              f"{ORIGINAL['meta_objective']:.3f} |",
              f"| landscape minimum (brute force) | {summary['landscape_min_lr']:.4f} "
              f"(meta-objective {summary['landscape_min_meta_objective']:.4f}) | not computed |",
              f"| spread of the final rates | {summary['final_lr_spread']:.4f} | 0.004 |", ""]
    ctx.save_artifact("summary.md", "\n".join(lines))


def figure5(trials, grid, meta_grid, summary: dict):
    """Rate vs outer step, meta-objective vs outer step, and the landscape with both trajectories."""
    from ..plots import style, subplots

    with style():
        fig, (a, b, c) = subplots(1, 3, figsize=(13, 3.8), layout="constrained")
        best = summary["landscape_min_lr"]
        for _, t in trials.groupby("trial"):
            label = f"from {t['initial_lr'].iloc[0]:g}"
            steps = [*t["outer_step"], t["outer_step"].iloc[-1] + 1]  # the rate used at each step, then the last
            a.plot(steps, [*t["lr"], t["lr_next"].iloc[-1]], marker=".", label=label)
            b.plot(t["outer_step"], t["meta_objective"], marker=".", label=label)
            c.plot(t["lr"], t["meta_objective"], marker="o", ms=3, lw=0.8, label=f"trajectory {label}")
        a.axhline(best, color="k", ls="--", lw=0.8, label=f"landscape min {best:.3f}")
        a.set(xlabel="outer step", ylabel="learning rate", title="learned rate")
        b.set(xlabel="outer step", ylabel="meta-objective (mean inner loss)", title="meta-objective")
        c.plot(grid, meta_grid, color="0.4", lw=1.5, label="fixed rates (brute force)", zorder=0)
        c.scatter([best], [summary["landscape_min_meta_objective"]], marker="*", s=160, color="k", zorder=3,
                  label=f"optimum {best:.3f}")
        c.set(xscale="log", xlabel="learning rate", ylabel="meta-objective", title="landscape")
        for ax in (a, b, c):
            ax.legend(fontsize=8)
    return fig
