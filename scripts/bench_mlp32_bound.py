"""How far can batching 32 paper MLPs go on a CPU? bench_batched's mlp32 case, taken apart, in one process.

The lab's target is 6x on `bench_batched.py --batched-threads 2`'s mlp32 case (32 seeds of the paper MLP, 300
steps, evaluations every 100; one at a time on one thread, batched on two). This script times that case
both ways, then runs the batched side once more with its matrix products timed where they run (every
`torch.bmm` / `baddbmm` / `mm` / `addmm` of the CPU step in `mnist1d_lab.batched.ops`, per Python thread: the
two 16-member stacks train side by side), and the whole update (`batched.stacked_update`) around them.

The bound: the batched run's wall time if every operation of a training step other than its products
(ReLUs, bias sums, the loss, Adam, Python) took no time at all, with the evaluations and setup as
measured. The evaluations run `train.evaluate` member by member, the code the one-at-a-time side runs.

    python scripts/bench_mlp32_bound.py [--repeats 3] [--steps 300] [--eval-every 100]

About 10 s on 2 idle cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: waiting threads sleep (mnist1d_lab/cpu.py)

import argparse
import threading
import time
from collections import defaultdict

import torch
from bench_batched import case_members, load_data, matmul_gflops, time_single

from mnist1d_lab import batched, cpu, models
from mnist1d_lab.batched import ops
from mnist1d_lab.batched import train as loop

PRODUCTS = ("bmm", "baddbmm", "mm", "addmm")


class TimedTorch:
    """Stands in for `torch` inside batched/ops.py: the products are timed per thread, the rest passes through."""

    def __init__(self, seconds: defaultdict) -> None:
        self.seconds = seconds
        for name in PRODUCTS:
            setattr(self, name, self._timed(getattr(torch, name)))

    def _timed(self, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[threading.get_ident()] += time.perf_counter() - start
            return out
        return call

    def __getattr__(self, name: str):
        return getattr(torch, name)


def timed_run(cfgs, seeds, data, cfg) -> tuple[float, dict, dict]:
    """(wall s, product s per thread, update s per thread) of one train_batched run with products timed."""
    products, updates = defaultdict(float), defaultdict(float)
    plain_update = loop.stacked_update  # what the batched loop calls each step

    def update(*args, **kwargs):
        start = time.perf_counter()
        plain_update(*args, **kwargs)
        updates[threading.get_ident()] += time.perf_counter() - start

    ops.torch, loop.stacked_update = TimedTorch(products), update
    try:
        start = time.perf_counter()
        batched.train_batched(cfgs, seeds, data, cfg, progress=False)
        return time.perf_counter() - start, dict(products), dict(updates)
    finally:
        ops.torch, loop.stacked_update = torch, plain_update


def step_flops(cfg: dict, batch: int = 100) -> int:
    """Floating-point operations of one member's training step in products: forward, weight gradients, and
    input gradients of every layer but the first (its input is data)."""
    linears = [m for m in models.build_model(cfg, 0).modules() if isinstance(m, torch.nn.Linear)]
    macs = [m.in_features * m.out_features for m in linears]
    return 2 * batch * (2 * sum(macs) + sum(macs[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="alternations; each side keeps its fastest")
    args = ap.parse_args()
    data = load_data()
    cfgs, seeds = case_members("mlp32")
    k, cfg = len(cfgs), {"steps": args.steps, "eval_every": args.eval_every}
    print(f"torch {torch.__version__}, mlp32: {args.steps} steps, eval every {args.eval_every}; "
          f"mm 1024^3 at {matmul_gflops():.0f} GFLOP/s on one thread")
    single, plain, timed = [], [], []
    batched.train_batched(cfgs[:2], seeds[:2], data, {"steps": 3, "eval_every": 3}, progress=False)  # warm-up
    for _ in range(args.repeats):
        torch.set_num_threads(1)
        single.append(time_single(cfgs, seeds, data, cfg, 4)[0] * k)
        torch.set_num_threads(2)
        start = time.perf_counter()
        batched.train_batched(cfgs, seeds, data, cfg, progress=False)
        plain.append(time.perf_counter() - start)
        timed.append(timed_run(cfgs, seeds, data, cfg))
    one, wall = min(single), min(plain)
    t_wall, products, updates = min(timed, key=lambda t: t[0])
    other = {t: updates[t] - products.get(t, 0.0) for t in updates}  # per thread: step time outside products
    bound = wall - max(other.values())
    per_step = {t: (updates[t] * 1e3 / args.steps, products.get(t, 0.0) * 1e3 / args.steps) for t in updates}
    print(f"one at a time: {one:.2f} s (fastest of {', '.join(f'{s:.2f}' for s in single)}), batched {wall:.2f} s "
          f"(fastest of {', '.join(f'{s:.2f}' for s in plain)}): {one / wall:.2f}x")
    flops = step_flops(cfgs[0]) * k / len(updates)  # per thread: its stack's members
    print(f"batched with products timed: {t_wall:.2f} s; per thread, ms per step (update / its products): "
          + ", ".join(f"{u:.2f} / {p:.2f}" for u, p in per_step.values())
          + f"; products at {', '.join(f'{flops / p / 1e6:.0f}' for _, p in per_step.values())} GFLOP/s")
    print(f"evaluations and setup: {t_wall - max(updates.values()):.2f} s of that run")
    print(f"if every step operation but the products were free: batched >= {bound:.2f} s, speedup <= "
          f"{one / bound:.2f}x; 6x needs {one / 6:.2f} s")


if __name__ == "__main__":
    cpu.configure_process()  # as the lab's processes: malloc keeps freed memory, fast exit
    main()
