"""Time one lottery search round and one ablation arm both ways, the original notebook's loop and ours,
in one process, and estimate the full default experiment (2 trials) from them.

The original's loop, re-created in plain torch (the mnist1d repository's lottery-tickets notebook and
notebooks/train.py): an nn.Module 40-500-500-10 residual MLP whose parameters are overwritten with
their masked values before every forward pass, torch.optim.Adam (its CPU default), `loss.item()` every
step, evaluation every 100 steps on the full test set and the full training set, a deepcopy checkpoint
every 1000 steps, range(steps + 1) updates, one model at a time. Ours: `lottery_train.train_masked`
(masked gradients and fused Adam, no per-step host sync, test evaluation every 100 steps, the arm's
three models stacked in one bmm program).

    python scripts/bench_lottery.py                         # 1 thread; search round 1,500 steps, arm 600 of 6,000 steps
    python scripts/bench_lottery.py --ablation-steps 6000 --threads 2

The arm is timed for --ablation-steps and scaled to 6,000 (the step cost is flat). The last line is
`lottery speedup: <r>x`, the estimated full default experiment's time, original loop / ours.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: waiting threads sleep (mnist1d_lab/cpu.py)

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from mnist1d_lab import cpu
from mnist1d_lab import lottery as lt
from mnist1d_lab.data import load
from mnist1d_lab.lottery_train import train_masked
from mnist1d_lab.models import build_model

MODEL = {"name": "mlp", "width": 500}
ROUNDS, TRIALS, ARM_MODELS = 100, 2, 5 * 3 + 1  # per trial: 100 lottery + 100 random rounds, 16 ablation models
SEARCH = {"lr": 0.02, "batch_size": 100, "steps": 1500, "eval_every": 100}
ABLATION = {"lr": 0.02, "batch_size": 500, "steps": 6000, "eval_every": 100}


def original_loop(state: dict, mask: dict, data, lr: float, batch_size: int, steps: int, eval_every: int) -> float:
    """The notebook's train_model on a masked SparseMLP; returns the final test accuracy."""
    model = build_model(MODEL, 0)
    model.load_state_dict(state)
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, checkpoints, acc = [], [], 0.0
    for step in range(steps + 1):
        for n, p in params.items():  # the original re-applies the masks by overwriting .data
            p.data = p.data * mask[n]
        start = (step * batch_size) % len(data.x)
        loss = F.cross_entropy(model(data.x[start:start + batch_size]), data.y[start:start + batch_size])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step % eval_every == 0:
            with torch.no_grad():
                logits = model(data.x_test)
                acc = float((logits.argmax(-1) == data.y_test).float().mean())
                _ = F.cross_entropy(logits, data.y_test).item(), float((model(data.x).argmax(-1) == data.y).float().mean())
        if step > 0 and step % 1000 == 0:
            checkpoints.append(copy.deepcopy(model))
    return acc


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ablation-steps", type=int, default=600, help="steps of the timed arm (scaled to 6,000)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load(None)
    state = build_model(MODEL, 0).state_dict()
    full = lt.full_masks(state)
    mask = lt.prune(state, full, 0.9)  # a 90 %-sparse mask: the step cost does not depend on it (dense maths)
    abl = {**ABLATION, "steps": args.ablation_steps}
    scale = ABLATION["steps"] / args.ablation_steps
    t = {"orig_round": timed(lambda: original_loop(state, mask, data, **SEARCH)),
         "ours_round": timed(lambda: train_masked([state], [mask], data, **SEARCH)),
         "orig_arm": scale * sum(timed(lambda m=m: original_loop(state, m, data, **abl)) for m in (full, mask, mask)),
         "ours_arm": scale * timed(lambda: train_masked([state] * 3, [full, mask, mask], data, **abl))}
    for key, v in t.items():
        print(f"{key:>10}: {v:7.1f} s" + (" (3 models, scaled to 6,000 steps)" if "arm" in key else " (1,500 steps)"))
    total = {w: TRIALS * (2 * ROUNDS * t[f"{w}_round"] + ARM_MODELS / 3 * t[f"{w}_arm"]) for w in ("orig", "ours")}
    for w, v in total.items():
        print(f"full default ({TRIALS} trials, {args.threads} thread(s), one job at a time), {w}: {v / 60:.1f} min")
    print(f"lottery speedup: {total['orig'] / total['ours']:.2f}x")


if __name__ == "__main__":
    cpu.configure_process()  # as the lab's processes: malloc keeps freed memory, fast exit
    main()
