"""Benchmark: a stacked training step with hand-written gradients (StackedModel.hand_grads, batched/ops.py)
versus the same step through autograd, one process, interleaved.

For each case two identical stacks are built (same members, seeds, optimiser); one has
`hand_backward = False`. They take turns for --rounds rounds of --steps steps on the same batches
(the paper's data, batch 100; double-descent cases with SGD 0.01 / 0.9, per-member batches and plain
MLPs as experiment=double_descent trains them), and each keeps its fastest and median round. The
first round is a warm-up. The last line gives every case's ratio of the fastest rounds.

    python scripts/bench_hand_grads.py [--threads 1] [--rounds 11] [--cases mlp8,mlp16,...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: waiting threads sleep (mnist1d_lab/cpu.py)

import argparse
import statistics
import time

import torch

from mnist1d_lab import batched, cpu, train
from mnist1d_lab.batched import StackedModel
from mnist1d_lab.data import load

DD = {"dd_mlp_2": [230, 300], "dd_mlp_4": [80, 104, 135, 177], "dd_mlp_13": [2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 47, 61],
      "dd_cnn_3": [90, 95, 100], "dd_cnn_4": [35, 40, 45, 50], "dd_cnn_9": [2, 3, 4, 5, 7, 9, 12, 16, 18]}
CASES = ["mlp8", "mlp16", "mlp32", "mlp64", "cnn32", *DD]


def members(case: str) -> tuple[list[dict], bool]:
    """(member configs, double-descent protocol?) for a case name: mlpK / cnnK seeds, or a DD stack."""
    if case in DD:
        name = case.split("_")[1]
        key, extra = ("width", {"residual": False}) if name == "mlp" else ("channels", {})
        return [{"name": name, key: w, **extra} for w in DD[case]], True
    name, k = case[:3], int(case[3:])
    return [{"name": name}] * k, False


def batches(data, K: int, own: bool, batch: int = 100):
    """Endless (x, y): a shared sequential batch (B, L), or each member's own random rows (K, B, L)."""
    g = torch.Generator().manual_seed(0)
    while True:
        for i in range(0, len(data.x) - batch + 1, batch):
            if own:
                idx = torch.randint(0, len(data.x), (K, batch), generator=g)
                yield data.x[idx], data.y[idx]
            else:
                yield data.x[i:i + batch], data.y[i:i + batch].expand(K, -1)


def run_case(case: str, data, rounds: int, steps: int) -> float:
    cfgs, dd = members(case)
    K = len(cfgs)
    opt_cfg = {**train.TRAIN_DEFAULTS, **({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9} if dd else {})}
    stacks = {}
    for hand in (False, True):
        model = StackedModel(cfgs, list(range(K)), data.x.shape[1], 10)
        model.hand_backward = hand
        stacks[hand] = (model, train.make_optimizer(model, opt_cfg))
    weight, feed, times = torch.ones(K), batches(data, K, dd), {False: [], True: []}
    n = steps if cfgs[0]["name"] == "mlp" else max(1, steps * 3 // 10)
    for r in range(rounds):
        for hand, (model, opt) in stacks.items():
            t = time.perf_counter()
            for _ in range(n):
                batched.stacked_update(model, opt, *next(feed), "cross_entropy", weight)
            if r:
                times[hand].append((time.perf_counter() - t) / n * 1e3)
    a, h = times[False], times[True]
    ratio = min(a) / min(h)
    print(f"{case:10s} K={K:3d}: autograd fastest {min(a):6.2f} median {statistics.median(a):6.2f} ms/step | "
          f"by hand fastest {min(h):6.2f} median {statistics.median(h):6.2f} ms/step | ratio fastest {ratio:.2f}x, "
          f"medians {statistics.median(a) / statistics.median(h):.2f}x")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--steps", type=int, default=100, help="steps per round (CNN cases: 30 %% of it)")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu.tune()
    data = load({"cache": False})
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds (first = warm-up)")
    ratios = {c: run_case(c, data, args.rounds, args.steps) for c in args.cases.split(",")}
    print("hand vs autograd (fastest rounds): " + ", ".join(f"{c} {r:.2f}x" for c, r in ratios.items()))


if __name__ == "__main__":
    cpu.configure_process()  # as the lab's processes: malloc keeps freed memory, fast exit
    main()
