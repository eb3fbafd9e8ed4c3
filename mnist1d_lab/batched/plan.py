"""Which members train together, and how stacks share the cores: the one planner of the batched path
(`train_batched` and the launcher's `schedule.execute_groups` both plan with `plan_stacks`).

* `plan_stacks`: a group's members (same family, same knobs but width) as the stacks to train, each
  with the torch threads it trains on and its estimated cost per step.
* A cost model (`stack_cost`: forward multiply-adds and activations per example at the padded width,
  for the members rounded up to a multiple of the stack's torch threads, plus a fixed per-step overhead)
  and a memory estimate (`estimate_memory_mb`) per stack.
* `plan_groups`: members sorted by width, cut into stacks that fit a memory budget and minimise the
  estimated time (exact dynamic programming).
* Side by side: `side_by_side` says how many stacks of a family should train at once on CPU,
  `spread` cuts a large stack into parts (interleaved, or balanced by `member_costs`), and
  `run_side_by_side` runs parts or stacks in Python threads with one torch thread each (torch ops
  release the GIL).
* Threads: all of it is planned for `batched_threads(num_threads)` threads (2 when num_threads is null),
  a function of the config alone, so the same config is cut the same way on any machine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from .. import protocol
from .models import member_width, stacked_num_params

EVAL_ELEMS = 8_000_000  # activation elements per evaluation chunk (about 32 MB in float32)


def act_per_example(name: str, width: int, depth: int) -> int:
    """Activation elements kept per example and member for backward (rough, padded width)."""
    if name == "logistic":
        return 3 * 10
    if name == "mlp":
        return 3 * depth * width + 3 * 10
    return 3 * width * (19 + 10 + 5) + 3 * 10  # the paper's CNN lengths; deeper/shorter nets use less


def _memory_mb(name: str, K: int, width: int, depth: int, n_train: int, batch_size: int,
               dtype_bytes: int = 4) -> float:
    params = 4 * K * stacked_num_params(name, width, depth)
    act = act_per_example(name, width, depth)
    eval_rows = min(n_train, max(1, EVAL_ELEMS // (K * act)))
    acts = K * act * (batch_size + eval_rows)
    return (dtype_bytes * (params + acts) + 8 * K * n_train + dtype_bytes * K * batch_size * 40) / 2**20


def _depth(cfg: Mapping) -> int:
    return int(cfg.get("depth") or (2 if cfg["name"] == "mlp" else 3))


def estimate_memory_mb(model_cfgs: Sequence[Mapping], n_train: int, batch_size: int = 100,
                       dtype_bytes: int = 4) -> float:
    """Estimated peak MB of one stack: params + grads + 2 Adam moments, batch and eval activations, labels."""
    first = model_cfgs[0]
    return _memory_mb(first["name"], len(model_cfgs), max(member_width(c) for c in model_cfgs), _depth(first),
                      n_train, batch_size, dtype_bytes)


# A stacked step's fixed cost (about 0.5 ms of per-op overhead on this kind of CPU), in the units of
# _flops_per_example: forward multiply-adds per example (x3 for backward, x100 examples, at ~100 GFLOP/s).
GROUP_OVERHEAD = 150_000
# The same on two or more torch threads, where every op also starts and joins a parallel region; with
# ACT_WEIGHT and the thread rounding in stack_cost it picks the double-descent CNN stacks that trained
# fastest on 2 threads (docs/batched.md).
GROUP_OVERHEAD_THREADS = 350_000
# Elementwise passes (bias, ReLU and its backward, im2col, optimiser) scale with the activations a member
# keeps, not with its multiply-adds: cost units per activation element (act_per_example). It matters for
# narrow CNNs (102 activations per channel against 45 multiply-adds per channel squared).
ACT_WEIGHT = 15
# On a GPU an eagerly launched step is all overhead (kernel launches, Python): on an H200, double-descent
# stacks took the same time whatever their size (20,000 steps: MLP stacks of 13 and 2 members 35.5 and
# 36.2 s, CNN stacks of 9 and 3 members 52.7 and 57 s), so the planner keeps a group one stack unless the
# memory budget cuts it.
GPU_GROUP_OVERHEAD = 1e12
# Replayed as CUDA graphs (train.GraphedUpdate, the default), a GPU stack's time grows with its size again:
# on an H100 the double-descent stacks of 19 MLPs (padded to 300) and 29 CNNs (padded to 100) took 5.0-5.3
# and 25.8 s for 20,000 steps, which this overhead (in _flops_per_example units) plus the padded members
# fits. stack_cost, i.e. the sweep ETA, uses it; splitting GPU groups by it is not measured, so not done.
GPU_STEP_OVERHEAD = 8e5


def _flops_per_example(cfg: Mapping, input_len: int = 40) -> float:
    """Forward multiply-adds per example of one member at its own width (a cost model, not a count)."""
    name, w = cfg["name"], member_width(cfg)
    if name == "logistic":
        return 10 * input_len
    if name == "mlp":
        return input_len * w + (_depth(cfg) - 1) * w * w + 10 * w
    return 5 * 19 * w + 3 * w * w * (10 + 5) + 5 * w * 10  # the paper's CNN layout: lengths 19, 10, 5


def on_cpu(device: str | torch.device) -> bool:
    """Whether `device` ("cpu", "cuda:0", a torch.device) is the CPU, where the CPU cost model and side by side apply."""
    return str(device).startswith("cpu")


def _member_cost(cfg: Mapping, cpu: bool) -> float:
    """One member's share of a step (cost units): multiply-adds, plus weighted activations on CPU."""
    flops = _flops_per_example(cfg)
    return flops + ACT_WEIGHT * act_per_example(cfg["name"], member_width(cfg), _depth(cfg)) if cpu else flops


def _cpu_overhead(threads: int) -> float:
    return GROUP_OVERHEAD if threads <= 1 else GROUP_OVERHEAD_THREADS


def thread_slots(k: int, threads: int) -> int:
    """Members a stack of k pays for on `threads` torch threads: k rounded up to a multiple of threads.

    torch's CPU bmm hands each thread whole matrices of the batch, so on 2 threads a stack of 3 costs
    what a stack of 4 does (one (1000 x 300) @ (300 x 100) product took 0.34 ms per matrix in stacks of
    1, 2, 4 and 6, and 0.45 ms in a stack of 3). A single matrix is split inside the product instead."""
    return k if k < threads else -(-k // threads) * threads


def stack_cost(model_cfgs: Sequence[Mapping], device: str | torch.device = "cpu", threads: int = 1) -> float:
    """Estimated time of one stack per step (relative units) on `threads` torch threads: overhead +
    padded members (thread_slots of them)."""
    cpu = on_cpu(device)
    overhead = _cpu_overhead(threads) if cpu else GPU_STEP_OVERHEAD
    return overhead + thread_slots(len(model_cfgs), threads if cpu else 1) * max(_member_cost(c, cpu) for c in model_cfgs)


SIDE_BY_SIDE = ("logistic", "mlp", "cnn")  # families whose stacks train side by side (side_by_side)
# The threads a batched program plans and trains with when num_threads is null: two MLP stacks (or parts)
# side by side on one torch thread each, CNN stacks on 2 torch threads. A constant, not the cores: the
# same config is cut into the same stacks and parts, and so gives the same float32 numbers, on a laptop
# and on a server.
BATCHED_THREADS = 2


def batched_threads(num_threads: int | None) -> int:
    """The threads a batched program plans with (side_by_side, stack_threads, plan_stacks): `num_threads`,
    or BATCHED_THREADS when null; a function of the config alone, never of the cores."""
    return BATCHED_THREADS if num_threads is None else int(num_threads)


def side_by_side(name: str, threads: int, device: str | torch.device = "cpu") -> int:
    """How many stacks of family `name` should train at once, each on one torch thread (Python threads),
    in a program of `threads` threads (batched_threads).

    MKL's bmm at MLP shapes gains little from a second thread (docs/batched.md), so on 2 cores two MLP
    stacks on one thread each finish sooner than the same two one after the other on two threads:
    1.38-1.54x for double-descent MLP stacks (4 repeats, 2,000 steps). CNN stacks train side by side too:
    their products do use a second thread, but two threads that sleep while they wait (the passive
    OpenMP policy the entry points set, cpu.py) wake up late for every small parallel region; one
    thread each, nothing waits. The full double-descent figure took 9:23 this way, 9:32 with its CNN
    stacks on 2 spinning threads and 13:57 on 2 sleeping ones (2-core x86 CPU). On CUDA, stacks run
    one at a time.
    """
    if name not in SIDE_BY_SIDE or not on_cpu(device):
        return 1
    return max(1, min(threads, MAX_WORKERS))


def stack_threads(name: str, threads: int, device: str | torch.device = "cpu") -> int:
    """Torch threads one stack of family `name` trains on: 1 where its stacks run side by side."""
    return 1 if side_by_side(name, threads, device) > 1 or not on_cpu(device) else threads


def plan_groups(model_cfgs: Sequence[Mapping], n_train: int, budget_mb: float,
                batch_size: int = 100, device: str | torch.device = "cpu", threads: int = 1) -> list[list[int]]:
    """Split member indices into groups that fit `budget_mb` and minimise estimated time.

    Members are sorted by width; a group pays its widest member's cost for every member (padding) plus a
    fixed per-step overhead, so a wide width range is cut into buckets of similar widths while small,
    overhead-bound members share one group. A stack that will run on several torch threads pays for its
    members rounded up to a multiple of them (thread_slots). Exact dynamic programming over the sorted
    order. On a GPU the overhead is everything (GPU_GROUP_OVERHEAD): groups are cut only to fit the budget.
    """
    cpu_side = on_cpu(device)
    overhead = _cpu_overhead(threads) if cpu_side else GPU_GROUP_OVERHEAD
    slots = functools.partial(thread_slots, threads=threads if cpu_side else 1)
    order = sorted(range(len(model_cfgs)), key=lambda i: member_width(model_cfgs[i]))
    if not order:
        return []
    cost = [_member_cost(model_cfgs[i], cpu_side) for i in order]
    name, depth = model_cfgs[order[0]]["name"], _depth(model_cfgs[order[0]])
    n = len(order)
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: cheapest plan for the j narrowest members
        width = member_width(model_cfgs[order[j - 1]])
        for i in range(j - 1, -1, -1):  # the last group is order[i:j], padded to order[j-1]'s width
            if j - i > 1 and _memory_mb(name, j - i, width, depth, n_train, batch_size) > budget_mb:
                break  # a single member always gets a group, even over budget
            total = best[i] + overhead + slots(j - i) * cost[j - 1]
            if total < best[j]:
                best[j], cut[j] = total, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def run_side_by_side(fn: Callable, items: Sequence, workers: int, done: Callable | None = None) -> list:
    """[fn(item) for item in items], run in `workers` Python threads with ONE torch thread each (torch
    ops release the GIL), started in the order given; done(result) is called in this thread as each
    finishes. On an error, items not yet started are cancelled and the error is raised once the
    running ones end. torch's thread count is process-wide, so it is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max(1, min(workers, len(items)))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                for f in as_completed(futures):
                    if done is not None:
                        done(f.result())
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        torch.set_num_threads(threads)


MAX_WORKERS = 16  # stacks or parts side by side at most (one torch thread each), whatever num_threads says
MIN_SPLIT = 8     # a stack is split only into parts of at least this many members


def spread(group: list[int], workers: int, costs: Sequence[float] | None = None) -> list[list[int]]:
    """Split a stack into up to `workers` parts of at least MIN_SPLIT members, to be trained side by side
    in Python threads with one torch thread each: interleaved (each keeps the width mix), or, when
    `costs` (indexed like the members) differ within the group, balanced by cost (heaviest first onto
    the lightest part): members with nested training sets score 1,000 to 50,000 training rows at
    every evaluation, and interleaving them left one part 20 % longer than the other.

    Why: MKL's bmm at these shapes (e.g. 32 x (100 x 100 @ 100 x 100)) gains nothing from a second
    thread on a 2-core CPU, so one stack on two torch threads leaves a core mostly idle. On 2 cores, two parts in
    two Python threads (ops release the GIL) trained 32 paper MLPs ~10 % faster and 32 CNNs 1 % and
    21 % faster (two repeats). Small stacks are left whole (MIN_SPLIT): in a double-descent re-run
    with parts of 2-5 CNNs, those stacks were not faster (176-320 s against 166-283 s whole).
    The parts together hold what the stack held, so memory stays within the stack's budget. Members
    never mix, so each member trains as it would in any stack (float32 summation order aside, as
    between thread counts).
    """
    n = max(1, min(workers, len(group) // MIN_SPLIT))
    if costs is None or len({costs[i] for i in group}) <= 1:
        return [list(group[i::n]) for i in range(n)]
    parts: list[list[int]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for i in sorted(group, key=lambda i: -costs[i]):
        j = min(range(n), key=lambda j: (loads[j], len(parts[j])))
        parts[j].append(i)
        loads[j] += costs[i]
    return [sorted(part, key=group.index) for part in parts]


TRAIN_ROW_COST = 3  # a training row (forward, backward, update) costs about 3 evaluated rows


def member_costs(cfg: Mapping, train_rows: Sequence[int], scored_rows: int) -> list[float] | None:
    """Relative cost of each member of a stack (train cfg `cfg`, member k training on train_rows[k] rows),
    or None when all train on the same rows (equal costs): its training steps (steps x batch_size rows,
    x TRAIN_ROW_COST) plus its evaluations of its own training rows (protocol.scored_train_rows) and the
    `scored_rows` (test rows) every member scores."""
    if len(set(train_rows)) <= 1:
        return None
    steps = protocol.num_updates(cfg, max(train_rows))  # the same for every member (batched.sizes_can_differ)
    evals = len(protocol.eval_steps(steps, int(cfg["eval_every"])))
    return [steps * int(cfg["batch_size"]) * TRAIN_ROW_COST + evals * (protocol.scored_train_rows(cfg, n) + scored_rows)
            for n in train_rows]


@dataclass
class Stack:
    """One planned stack: its members (indices into the planned configs), the torch threads it trains on,
    its estimated time per step (stack_cost)."""
    members: list[int]
    threads: int
    cost: float


def plan_stacks(model_cfgs: Sequence[Mapping], n_train: int, batch_size: int, device: str | torch.device,
                threads: int, budget_mb: float = math.inf, side: int = 1, costs: Sequence[float] | None = None
                ) -> list[Stack]:
    """The stacks to train a group of members (one family, equal knobs but width) as, narrowest first.

    `threads`: the torch threads available; `side`: stacks of this group that will train at once
    (side_by_side), which share `budget_mb`. Each stack trains on stack_threads(...) torch threads; the
    members are cut into width buckets by plan_groups, and each bucket into `side` interleaved parts
    (spread, balanced by the members' `costs` when given: member_costs) when stacks train side by side.
    """
    if not model_cfgs:
        return []
    per_stack = stack_threads(model_cfgs[0]["name"], threads, device)  # 1 where stacks train side by side
    groups = plan_groups(model_cfgs, n_train, budget_mb / side, batch_size, device, per_stack)
    return [Stack(members, per_stack, stack_cost([model_cfgs[i] for i in members], device, per_stack))
            for group in groups for members in spread(group, side, costs)]
