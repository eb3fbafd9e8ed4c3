"""Lottery tickets (paper Figures 3 and 9): do sparse subnetworks found by iterative magnitude pruning
train better than random ones, and is part of their advantage a spatial inductive bias?

Question: pruning the 40-500-500-10 residual MLP (276,010 parameters) round by round, with rewinding,
          does a ~92 %-sparse lottery ticket beat the dense model and a random mask of the same per-layer
          sparsity? Does its mask still help on new data, reversed data, spatially shuffled data, swapped
          halves, and from a new init? Are its first-layer inputs more often adjacent than chance?
Command:  python -m mnist1d_lab experiment=lottery                 (2 trials: seed=0,1; 100 linear rounds)
          python -m mnist1d_lab experiment=lottery scale=quick     (15 geometric rounds to 95.6 %, short ablations)
          python -m mnist1d_lab experiment=lottery scale=smoke     (seconds; the numbers mean nothing)
CPU time: ~270 TFLOP: estimated 35-45 min on an idle 2-core CPU with the two trials side by side,
          scale=quick 4.5 min (both trials, every arm; docs/lottery.md, scripts/bench_lottery.py).
Expected: the original printed 75.6 / 74.4 % for the 92 % lottery ticket vs 60.6 / 61.8 % for the random
          ticket and 66.4 / 64.8 % dense; in the ablations the ticket beat the random mask everywhere but
          the dense model only on the transfer and new-init arms; lottery p2 ~0.009 vs random ~0.006.
Outputs:  per trial: stages.csv (rounds, ablations, adjacency), artifacts lottery_masks.npz (the round each
          entry was pruned), ticket_masks.npz, round_curves.npz, ablation_curves.csv; per sweep (summarize):
          lottery_rounds.csv, lottery_ablations.csv, lottery_adjacency.csv, lottery_summary.md,
          figure3.png/.pdf, figure9.png/.pdf.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig

    from ..context import RunContext
    from ..protocol import TrainResult

CONFIG_NODE = "lottery"  # the runner checks its keys against conf/experiment/lottery.yaml, then calls validate
ARMS = ("transfer", "reversed", "shuffled", "halves_swapped", "new_seed_init")
RANDOM_STREAM, NULL_STREAM = 11, 12  # generator streams of a trial: random tickets, adjacency null


def arm_data(arm: str, length: int) -> dict:
    """The data knobs an ablation arm changes (on top of data.seed = lottery.ablation.data_seed)."""
    return {"reversed": {"reverse": True}, "shuffled": {"shuffle_seq": True},
            "halves_swapped": {"roll": length // 2}}.get(arm, {})


def _gen(seed: int, stream: int, index: int):
    import torch

    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0]))


def knobs(cfg: DictConfig) -> dict:
    """cfg.lottery as plain Python, validated with the model (ConfigError naming the key)."""
    from omegaconf import OmegaConf

    if cfg.model.name != "mlp":
        raise ConfigError("model.name", cfg.model.name, "mlp (lottery tickets prune the residual MLP)")
    validate(cfg.lottery)
    return OmegaConf.to_container(cfg.lottery, resolve=True)


def validate(node) -> None:
    """Check the `lottery` node (the runner calls it before any job launches; no torch here)."""
    from omegaconf import OmegaConf

    lc = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    pos = lambda v: is_int(v) and v >= 1  # noqa: E731
    for part in ("search", "ablation"):
        for key in ("batch_size", "steps", "eval_every"):
            if not pos(lc[part][key]):
                raise ConfigError(f"lottery.{part}.{key}", lc[part][key], "a positive integer")
        if not isinstance(lc[part]["lr"], int | float) or lc[part]["lr"] <= 0:
            raise ConfigError(f"lottery.{part}.lr", lc[part]["lr"], "a positive number")
    if lc["schedule"] not in ("linear", "geometric"):  # lottery.SCHEDULES
        raise ConfigError("lottery.schedule", lc["schedule"], "one of ['linear', 'geometric']")
    if lc["schedule"] == "linear" and not (is_int(lc["rounds"]) and lc["rounds"] >= 2):
        raise ConfigError("lottery.rounds", lc["rounds"], "an integer >= 2")
    for key in ("rate", "target"):
        if lc["schedule"] == "geometric" and not (isinstance(lc[key], int | float) and 0 < lc[key] < 1):
            raise ConfigError(f"lottery.{key}", lc[key], "a fraction in (0, 1)")
    steps = lc["search"]["steps"]
    for key, allow_null in (("score_step", True), ("rewind_step", False)):
        v = lc[key]
        if not ((v is None and allow_null) or (is_int(v) and 0 <= v <= steps)):
            raise ConfigError(f"lottery.{key}", v, f"an integer in [0, lottery.search.steps={steps}]"
                              + (" or null" if allow_null else ""))
    for key in ("random_stack", "null_samples"):
        if not pos(lc[key]):
            raise ConfigError(f"lottery.{key}", lc[key], "a positive integer")
    if not isinstance(lc["ticket_sparsity"], int | float) or not 0 <= lc["ticket_sparsity"] <= 1:
        raise ConfigError("lottery.ticket_sparsity", lc["ticket_sparsity"], "a fraction in [0, 1]")
    if lc["prune"] not in ("layer", "global"):  # lottery.PRUNE_MODES
        raise ConfigError("lottery.prune", lc["prune"], "one of ['layer', 'global']")
    for key in ("data_seed", "init_offset", "reinit_offset"):
        v = lc["ablation"][key]
        if not is_int(v) or v < 0:
            raise ConfigError(f"lottery.ablation.{key}", v, "an integer >= 0")
    bad = [a for a in lc["ablation"]["arms"] if a not in ARMS]
    if bad:
        raise ConfigError("lottery.ablation.arms", bad, f"a list of {list(ARMS)}")


def run(cfg: DictConfig, ctx: RunContext) -> TrainResult:
    """One trial: lottery rounds, random tickets, ablations, adjacency (each a checkpointed stage)."""
    from omegaconf import OmegaConf

    from .. import lottery as lt
    from ..data import load
    from ..lottery_train import train_masked
    from ..models import build_model

    lc, seed = knobs(cfg), int(cfg.seed)
    sched = lt.schedule(lc["schedule"], lc["rounds"], lc["rate"], lc["target"])
    data = load(cfg.data, device=ctx.device)
    build = lambda s: build_model(cfg.model, s, input_len=data.input_len).state_dict()  # noqa: E731
    init = build(seed)
    fit = partial(train_masked, residual=bool(cfg.model.residual), activation=cfg.model.activation, device=ctx.device)
    search, abl = lc["search"], lc["ablation"]
    hp = lambda part: {k: part[k] for k in ("lr", "batch_size", "steps", "eval_every")}  # noqa: E731
    score_step = search["steps"] if lc["score_step"] is None else lc["score_step"]

    # Lottery rounds (sequential): train with mask r from the rewind weights, prune to round r + 1's sparsity.
    def lottery_round(r: int, mask: dict, start: dict) -> dict:
        snaps = {score_step} | ({lc["rewind_step"]} if r == 0 else set())
        res = fit([start], [mask], data, **hp(search), snapshot_steps=sorted(snaps))
        nxt = lt.prune(res.snapshots[score_step][0], mask, sched[r + 1], lc["prune"]) if r + 1 < len(sched) else None
        return {"test": res.test, "train": res.train, "steps": res.steps, "next": nxt,
                "rewind": res.snapshots[lc["rewind_step"]][0] if r == 0 else None}

    masks, rounds, rewind = [lt.full_masks(init)], [], init
    for r in range(len(sched)):
        out = ctx.stage(f"lottery_{r:03d}", partial(lottery_round, r, masks[r], init if r == 0 else rewind))
        rewind = out["rewind"] if r == 0 else rewind
        rounds.append(out)
        if out["next"] is not None:
            masks.append(out["next"])
        ctx.report("lottery rounds", r + 1, len(sched), sparsity=sched[r], test_acc=out["test"][-1, 0, 1])

    # Random tickets (independent): fresh random masks with lottery round r's per-layer counts, stacked.
    def random_mask(r: int) -> dict:
        return lt.random_masks(masks[r], lt.kept_counts(masks[r]), _gen(seed, RANDOM_STREAM, r))

    def random_rounds(chunk: list[int]) -> dict:
        res = fit([rewind] * len(chunk), [random_mask(r) for r in chunk], data, **hp(search))
        return {"test": res.test, "train": res.train, "steps": res.steps}

    randoms = []
    chunks = [list(range(i, min(i + lc["random_stack"], len(sched)))) for i in range(0, len(sched), lc["random_stack"])]
    for chunk in chunks:
        out = ctx.stage(f"random_{chunk[0]:03d}_{chunk[-1]:03d}", partial(random_rounds, chunk))
        randoms += [{"test": out["test"][:, [k]], "train": out["train"][[k]], "steps": out["steps"]}
                    for k in range(len(chunk))]
        ctx.report("random tickets", chunk[-1] + 1, len(sched))

    ticket = int(np.argmin(np.abs(sched - lc["ticket_sparsity"])))
    lottery_mask, rand_mask = masks[ticket], random_mask(ticket)

    # Ablations: the ticket's masks on new data / a new init, beside a dense model (Figure 3c-f).
    data_knobs = OmegaConf.to_container(cfg.data, resolve=True)

    def ablation(arm: str) -> dict:
        arm_set = load({**data_knobs, "seed": abl["data_seed"], **arm_data(arm, data.input_len)}, device=ctx.device)
        start = build(seed + (abl["reinit_offset"] if arm == "new_seed_init" else abl["init_offset"]))
        names, states, ms = ["dense", "lottery", "random"], [start] * 3, [lt.full_masks(init), lottery_mask, rand_mask]
        if arm == "transfer" and abl["rewound"]:
            names, states, ms = names + ["lottery_rewound"], states + [rewind], ms + [lottery_mask]
        res = fit(states, ms, arm_set, **hp(abl))
        return {"models": names, "test": res.test, "train": res.train, "steps": res.steps}

    arms = {arm: ctx.stage(f"ablation_{arm}", partial(ablation, arm)) for arm in abl["arms"]}

    # Adjacency of the ticket's first-layer masks (Figure 3g), with a null of random per-unit placements.
    first = next(iter(init))  # hidden.0.weight, (H, L)

    def adjacency() -> list[dict]:
        rows = []
        for i, (kind, m) in enumerate((("lottery", lottery_mask[first]), ("random", rand_mask[first]))):
            per_unit, null = lt.adjacency(m), lt.adjacency_null(m, lc["null_samples"], _gen(seed, NULL_STREAM, i))
            for key, v in per_unit.items():
                rows.append({"mask": kind, "metric": key, "mean": float(v.mean()), "se": float(v.std() / np.sqrt(len(v))),
                             "null_mean": float(null[key].mean()), "null_std": float(null[key].std()),
                             "p_value": float((1 + (null[key] >= v.mean()).sum()) / (1 + len(null[key])))})
        return rows

    adjacency_rows = ctx.stage("adjacency", adjacency)
    return _result(ctx, lc, sched, masks, rounds, randoms, ticket, lottery_mask, rand_mask, arms, adjacency_rows)


def _result(ctx, lc, sched, masks, rounds, randoms, ticket, lottery_mask, rand_mask, arms, adjacency_rows
            ) -> TrainResult:
    """Stages rows, artifacts and the trial's summary from the stages' results."""
    import pandas as pd

    from .. import lottery as lt
    from ..lottery_train import MaskedRun
    from ..protocol import TrainResult

    stages, summary = [], {}
    for kind, results in (("lottery", rounds), ("random", randoms)):
        for r, out in enumerate(results):
            run = MaskedRun(out["steps"], out["test"], out["train"])
            stages.append({"table": "rounds", "kind": kind, "round": r, "target_sparsity": float(sched[r]),
                           "sparsity": lt.sparsity(masks[r]), **run.summary(0)})
    acc = np.array([s["final_test_acc"] for s in stages if s["kind"] == "lottery"])
    rand_acc = np.array([s["final_test_acc"] for s in stages if s["kind"] == "random"])
    picked = int(np.argmax(acc))
    ticket_run = MaskedRun(rounds[ticket]["steps"], rounds[ticket]["test"], rounds[ticket]["train"])
    summary.update({**ticket_run.summary(0), "ticket_round": ticket, "ticket_sparsity": lt.sparsity(lottery_mask),
                    "ticket_random_final_test_acc": float(rand_acc[ticket]), "dense_final_test_acc": float(acc[0]),
                    "test_selected_round": picked, "test_selected_sparsity": float(sched[picked]),
                    "test_selected_final_test_acc": float(acc[picked]), "rounds": len(sched),
                    "num_params": sum(m.numel() for m in lottery_mask.values()), "diverged": False})
    curves = []
    for arm, out in arms.items():
        for k, name in enumerate(out["models"]):
            run = MaskedRun(out["steps"], out["test"], out["train"])
            row = {"table": "ablations", "arm": arm, "model": name, **run.summary(k)}
            stages.append(row)
            summary[f"{arm}_{name}_final_test_acc"] = row["final_test_acc"]
            curves += [{"arm": arm, "model": name, **c} for c in run.rows(k)]
    for row in adjacency_rows:
        stages.append({"table": "adjacency", **row})
        summary[f"adjacency_{row['mask']}_{row['metric']}"] = row["mean"]
        summary[f"adjacency_{row['mask']}_{row['metric']}_p_value"] = row["p_value"]
    steps = rounds[0]["steps"]
    ctx.save_artifact("lottery_masks.npz", {**lt.pruned_at(masks), "sparsity": np.asarray(sched)})
    ctx.save_artifact("ticket_masks.npz", {**{f"lottery/{n}": m.numpy() for n, m in lottery_mask.items()},
                                           **{f"random/{n}": m.numpy() for n, m in rand_mask.items()}})
    ctx.save_artifact("round_curves.npz", {"steps": np.asarray(steps), "sparsity": np.asarray(sched),
                                           "lottery": np.stack([o["test"][:, 0] for o in rounds]),
                                           "random": np.stack([o["test"][:, 0] for o in randoms])})
    if curves:
        ctx.save_artifact("ablation_curves.csv", pd.DataFrame(curves))
    t = ticket_run.test[:, 0]
    return TrainResult(columns=["step", "test_loss", "test_acc"],
                       rows=[[float(s), float(a), float(b)] for s, (a, b) in zip(steps, t, strict=True)],
                       summary=summary, stages=stages)


def summarize(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The sweep's tables and Figures 3 and 9 from all trials (lottery_figures.py)."""
    from ..lottery_figures import summarize as draw

    return draw(table, Path(out_dir))
