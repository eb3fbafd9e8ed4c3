"""Benchmark: K models one at a time (train.train) versus batched (batched.train_batched), one process.

Paper protocol (default data, Adam 1e-2, batch 100, sequential order) with shortened runs (--steps,
eval every --eval-every), float32, --threads torch threads for both paths (default 1). Cases: MLP seeds
K = 8, 32, 128; CNN seeds K = 32; an MLP width sweep of 64 members (widths 1..64, seed 0), which
train_batched runs as plan_groups width buckets (the output gives the number of stacks).

The one-at-a-time side times a subset of members (--single-sample per case, spread over the members)
and extrapolates per model; the output says so. Both paths are warmed up first (the first conv sets up
oneDNN). The two paths alternate --repeats times per case and each keeps its fastest time (a shared
machine's speed can drift by 1.5x over minutes, so one pass of each could land in different phases);
the ratio of the medians is printed as well. Memory: `est` is plan.estimate_memory_mb (tensor sizes);
`maxrss` is the process's peak resident set so far (resource.getrusage).

    python scripts/bench_batched.py [--steps 300] [--threads 1] [--repeats 3] [--cases mlp8,mlp32,mlp128,cnn32,widths64]
                                    [--batched-threads 2] [--side-by-side ddmlp] [--device cuda]
With --device cuda both paths train on the GPU (times include a synchronize), and a float64 check first
prints how far batched and one-at-a-time loss curves differ there (MLP widths, CNN channels, 100 steps),
and each case's batched run is also timed without CUDA graphs (`cuda_graphs=False`: eager launches).
Before the last line, `ddmlp`: the double-descent MLP stacks one after another vs side by side
(the batched launcher's schedule, batched/schedule.py), on --batched-threads threads.
Last line: `batched speedup mlp32: <r>x, cnn32: <r>x, widths64: <r>x`. ~2.5 min on 2 idle cores (145 s measured with --repeats 3).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: waiting threads sleep (mnist1d_lab/cpu.py)

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from mnist1d_lab import batched, cpu, models, train
from mnist1d_lab.batched import plan


def load_data(device: str = "cpu"):
    """The paper's dataset (4000 train / 1000 test) on `device`, without touching the disk cache if possible."""
    from mnist1d_lab.data import load

    try:
        return load({"cache": False}, device=device)
    except Exception:  # noqa: BLE001 (older config without a cache knob)
        return load(device=device)


def sync(device: str) -> None:
    """Wait for queued kernels, so wall times are times (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops() -> float:
    """Achieved float32 GFLOP/s of a 1024^3 mm right now: how loaded the machine is (idle: ~130 on 1 thread)."""
    import torch.utils.benchmark as tb

    a = torch.randn(1024, 1024)
    t = tb.Timer("a @ a", globals={"a": a}).blocked_autorange(min_run_time=0.5)
    return 2 * 1024**3 / t.median / 1e9


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_single(cfgs, seeds, data, cfg, sample: int, device: str = "cpu") -> tuple[float, float, float]:
    """(seconds per model, cpu seconds per model, mean final test acc) over `sample` evenly spread members."""
    picks = np.unique(np.linspace(0, len(cfgs) - 1, sample).round().astype(int))
    wall = cpu = 0.0
    accs = []
    for i in picks:
        model = models.build_model(cfgs[i], seeds[i])
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        r = train.train(model, data, cfg, seeds[i], progress=False, device=device)
        sync(device)
        wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
        accs.append(r.summary["final_test_acc"])
    return wall / len(picks), cpu / len(picks), float(np.mean(accs))


def time_batched(cfgs, seeds, data, cfg, device: str, threads: int, gpu: bool) -> tuple:
    """(wall s, cpu s, mean final test acc, peak-memory text, eager wall s or 0) of one train_batched run."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    eager = 0.0
    if gpu:  # first without CUDA graphs (eager kernel launches), then as train_batched runs by default
        t = time.perf_counter()
        batched.train_batched(cfgs, seeds, data, cfg, progress=False, device=device, cuda_graphs=False)
        sync(device)
        eager = time.perf_counter() - t
        torch.cuda.reset_peak_memory_stats(device)
    t, c = time.perf_counter(), time.process_time()
    res = batched.train_batched(cfgs, seeds, data, cfg, progress=False, device=device)
    sync(device)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    torch.set_num_threads(before)
    acc = float(np.mean([r.summary["final_test_acc"] for r in res]))
    peak = f", cuda peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB" if gpu else ""
    return wall, cpu, acc, peak, eager


def case_members(case: str) -> tuple[list[dict], list[int]]:
    if case.startswith("widths"):
        k = int(case[len("widths"):])
        return [{"name": "mlp", "width": w} for w in range(1, k + 1)], [0] * k
    name, k = ("cnn", int(case[3:])) if case.startswith("cnn") else ("mlp", int(case[3:]))
    return [{"name": name}] * k, list(range(k))


DD_WIDTHS = (2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 47, 61, 80, 104, 135, 177, 230, 300)  # experiment/double_descent


def stacks_in_turn_vs_side_by_side(data, steps: int, threads: int) -> float:
    """The double-descent MLP grid as two groups (seeds 0 and 1, as its clean and noisy grids are), each
    cut into stacks by plan_groups, with the double-descent optimiser (SGD 0.01 / 0.9, reshuffled
    batches): trained one stack after another on `threads` torch threads, then side by side (one torch
    thread each, longest first), as the batched launcher (schedule.execute_groups) does. Prints both; returns the ratio."""
    cfg = {"steps": steps, "eval_every": steps, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
           "batch_order": "reshuffle"}
    cfgs = [{"name": "mlp", "width": w, "residual": False} for w in DD_WIDTHS]
    planned = [([cfgs[i] for i in part], [seed] * len(part)) for seed in (0, 1)
              for part in plan.plan_groups(cfgs, len(data.x), float("inf"))]
    planned.sort(key=lambda s: -plan.stack_cost(s[0]))

    def run(stack):
        return batched.train_batched(*stack, data, cfg, progress=False, plan=False)

    torch.set_num_threads(threads)
    t = time.perf_counter()
    for stack in planned:
        run(stack)
    in_turn = time.perf_counter() - t
    t = time.perf_counter()
    plan.run_side_by_side(run, planned, plan.side_by_side("mlp", threads))
    side = time.perf_counter() - t
    print(f"ddmlp     {len(DD_WIDTHS)} widths x 2 groups = {len(planned)} stacks, {steps} steps: one after another on "
          f"{threads} threads {in_turn:.1f} s | side by side, one thread each {side:.1f} s | speedup {in_turn / side:.2f}x")
    return in_turn / side


def check_float64(data, device: str, steps: int = 100) -> float:
    """Largest relative difference of the per-step train loss, batched vs one at a time, in float64 on
    `device` (Adam, sequential batches): MLP widths 3, 17, 64 and CNN channels 2, 9, 32. Prints and
    returns it (the CPU tests assert the same within 1e-4; float64 gives ~1e-12)."""
    from types import SimpleNamespace

    d = SimpleNamespace(x=data.x.double(), y=data.y, x_test=data.x_test.double(), y_test=data.y_test)
    cfg = {"steps": steps, "eval_every": 1}
    worst = 0.0
    for name, key, widths in (("mlp", "width", (3, 17, 64)), ("cnn", "channels", (2, 9, 32))):
        cfgs = [{"name": name, key: w} for w in widths]
        seeds = list(range(len(cfgs)))
        res = batched.train_batched(cfgs, seeds, d, cfg, progress=False, device=device)
        for c, s, r in zip(cfgs, seeds, res, strict=True):
            one = train.train(models.build_model(c, s).double(), d, cfg, s, progress=False, device=device)
            a, b = r.curves["train_loss"].to_numpy(), one.curves["train_loss"].to_numpy()
            worst = max(worst, float(np.max(np.abs(a - b) / np.abs(b))))
    print(f"float64 on {device}: batched vs one at a time, {steps} steps, MLP widths 3/17/64 and CNN channels "
          f"2/9/32: max relative train-loss difference {worst:.1e}")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batched-threads", type=int, default=None,
                    help="torch threads for the batched side only (default: --threads). One small model gains "
                         "nothing from a second thread; a stack of 32 can use both cores")
    ap.add_argument("--single-sample", type=int, default=4, help="members timed one at a time per case")
    ap.add_argument("--min-split", type=int, default=plan.MIN_SPLIT,
                    help="plan.MIN_SPLIT: smallest part of a stack trained side by side on several threads "
                         "(a huge value keeps every stack whole, for an A/B)")
    ap.add_argument("--repeats", type=int, default=3, help="alternations of the two paths per case; the fastest "
                    "of each is kept (the last line) and the ratio of medians printed too")
    ap.add_argument("--cases", default="mlp8,mlp32,mlp128,cnn32,widths64")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where both paths train")
    ap.add_argument("--side-by-side", default="ddmlp", help="also time the double-descent MLP stacks one after "
                    "another vs side by side (4 x --steps steps); empty to skip")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plan.MIN_SPLIT = args.min_split
    device, gpu = args.device, torch.device(args.device).type == "cuda"
    data = load_data(device)
    cfg = {"steps": args.steps, "eval_every": args.eval_every}
    where = (f"{torch.cuda.get_device_name(device)}" if gpu else
             f"CPU, mm 1024^3 at {matmul_gflops():.0f} GFLOP/s (idle machine: ~130 per thread)")
    print(f"torch {torch.__version__}, {args.threads} thread(s) one at a time, "
          f"{args.batched_threads or args.threads} batched, {args.steps} steps, eval every "
          f"{args.eval_every}, data {tuple(data.x.shape)} train / {tuple(data.x_test.shape)} test, {where}")
    warm = {"steps": 3, "eval_every": 3}  # the first conv sets up oneDNN, the first step allocates
    for name in ("mlp", "cnn"):
        train.train(models.build_model({"name": name}, 0), data, warm, 0, progress=False, device=device)
        batched.train_batched([{"name": name}] * 2, [0, 1], data, warm, progress=False, device=device)
    if gpu:
        check_float64(data, device)

    speedups, medians = {}, {}
    for case in args.cases.split(","):
        cfgs, seeds = case_members(case)
        k = len(cfgs)
        sample = max(args.single_sample, 8) if case.startswith("widths") else args.single_sample
        singles, runs = [], []
        for _ in range(args.repeats):  # alternate the two paths: a shared CPU's speed drifts by minutes
            singles.append(time_single(cfgs, seeds, data, cfg, sample, device))
            runs.append(time_batched(cfgs, seeds, data, cfg, device, args.batched_threads or args.threads, gpu))
        s_wall, s_cpu, s_acc = min(singles)
        b_wall, b_cpu, b_acc, peak, eager = min(runs)
        speedups[case] = s_wall * k / b_wall
        medians[case] = statistics.median(s[0] for s in singles) * k / statistics.median(r[0] for r in runs)
        if gpu:
            print(f"{case:9s} batched on {device}: eager launches {eager:.2f} s, CUDA graphs {b_wall:.2f} s "
                  f"({eager / b_wall:.2f}x)")
        est = plan.estimate_memory_mb(cfgs, len(data.x))
        groups = len(plan.plan_groups(cfgs, len(data.x), float("inf"), device=device))  # train_batched's stacks
        print(f"{case:9s} K={k:3d} one-at-a-time {s_wall * k:7.1f} s (extrapolated from {min(sample, k)} "
              f"members, {s_wall * 1e3:.0f} ms/model, cpu {s_cpu * k:.1f} s, test_acc {s_acc:.3f}) | batched "
              f"{b_wall:6.1f} s in {groups} stack(s) (cpu {b_cpu:.1f} s, test_acc {b_acc:.3f}) | speedup {speedups[case]:.2f}x "
              f"(cpu {s_cpu * k / b_cpu:.2f}x; ratio of medians {medians[case]:.2f}x) | fastest of {args.repeats}: "
              f"one-at-a-time {', '.join(f'{t[0] * k:.1f}' for t in singles)} s, batched "
              f"{', '.join(f'{r[0]:.1f}' for r in runs)} s | memory est {est:.0f} MB, maxrss {maxrss_mb():.0f} MB{peak}")
    if "ddmlp" in args.side_by_side and not gpu:  # side by side is a CPU schedule
        stacks_in_turn_vs_side_by_side(data, args.steps * 4, args.batched_threads or args.threads)
    if not gpu:
        print(f"machine check after: mm 1024^3 at {matmul_gflops():.0f} GFLOP/s")
    fmt = {c: f"{speedups[c]:.2f}x" if c in speedups else "n/a" for c in ("mlp32", "cnn32", "widths64")}
    print("ratio of medians: " + ", ".join(f"{c} {m:.2f}x" for c, m in medians.items()))
    print(f"batched speedup mlp32: {fmt['mlp32']}, cnn32: {fmt['cnn32']}, widths64: {fmt['widths64']}")


if __name__ == "__main__":
    cpu.configure_process()  # as the lab's processes: malloc keeps freed memory, fast exit
    main()
