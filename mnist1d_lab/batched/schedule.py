"""Groups of Hydra jobs trained as stacks, one record per job: the batched launcher's side of the runner.

`group_key` says which jobs may share a stack; `execute_groups` plans each group with the batched path's
one planner (plan.plan_stacks), trains the stacks (side by side where that pays) and writes every job's
record as `runner.execute` would; `single_cost` is the planner's estimate of one job alone (the ETA).
Only experiments that declare `BATCHABLE = True` are stacked; any other experiment's jobs run through
`runner.execute` (the experiment's own run), one at a time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from .. import batched, cpu, experiments, protocol, records, runner
from ..errors import ConfigError
from ..train import TRAIN_DEFAULTS
from . import plan
from .models import FAMILIES, WIDTH_KEY

log = logging.getLogger(__name__)


def group_key(cfg: DictConfig) -> str | None:
    """Jobs with equal group keys differ only in what a stack may differ in (seed, width / channels, and
    train_size where batched.nested_size allows it: nested sets, whole batches, a fixed step count);
    None for a job that trains alone (its experiment does not declare BATCHABLE = True)."""
    try:
        if not experiments.batchable(cfg.experiment_name):
            return None
    except ConfigError:  # an unknown experiment fails with its proper error when the job runs
        return None
    plain = records.to_plain(cfg)
    plain.pop("seed", None)
    plain["model"] = {k: v for k, v in plain["model"].items() if k != WIDTH_KEY.get(plain["model"].get("name"))}
    if batched.nested_size(plain["train"], plain["train"].get("train_size")) is None:
        plain["train"].pop("train_size")
    return records.run_key(plain)


@dataclass
class _Stack:
    """One planned stack: members (indices into its group's jobs), the group, its estimated cost."""
    group: int
    members: list[int]
    cost: float
    side: int  # stacks of its family that train at once (plan.side_by_side)
    threads: int  # torch threads it trains on: 1 when planned side by side, else its program's threads


def execute_groups(groups: Sequence[tuple[list[DictConfig], list[Path]]], workers: int = 1,
                   memory_budget_mb: float | None = None,
                   done: Callable[[int, int, dict], None] | None = None,
                   side_by_side: bool = True,
                   planned: Callable[[list[dict[tuple[int, int], float]]], None] | None = None
                   ) -> list[list[dict]]:
    """Run groups of jobs (each sharing a group_key) as batched programs; one record per job, as
    runner.execute writes it, and the summaries per group in job order.

    Finished jobs are skipped member by member; a group whose experiment is not batchable, whose members
    cannot batch (e.g. the GRU, a knob the stacked path does not implement), or with one job left, runs
    one job at a time through runner.execute. Each group is cut into stacks (plan.plan_stacks, within
    `memory_budget_mb` in all); stacks of families that gain from it (plan.side_by_side: MLPs on CPU;
    not with side_by_side=False) train side by side, one torch thread each, longest first, across
    groups (large stacks cut into parts, plan.spread); then the others, one after another on all
    threads. Threads are the config's (plan.batched_threads: num_threads, or 2 when null), never the
    cores, so a config is cut into the same stacks and parts on any machine. Records are written as
    each stack finishes; then, in the calling thread, `done(group index, job index, summary)` is called
    for each of its jobs (the launcher's per-job bookkeeping).
    A failure of a stack is recorded for each of its members; with stop_on_error, stacks not yet
    started are not started. Before any training, `planned([{(group, job): weight}, ...])` gets, per
    stack (jobs that finish together; one job each when run one at a time), each job's share of the
    estimated wall time (plan.stack_cost x steps, divided among a stack's members and by the stacks
    running at once), for a cost-weighted ETA; jobs without an estimate (a GRU) are left out.
    """
    from ..data import load

    for cfgs, _ in groups:
        for cfg in cfgs:
            runner.validate(cfg)
    summaries: list[list[dict | None]] = []
    contexts, stacked, sequential = [], [], []
    for g, (cfgs, out_dirs) in enumerate(groups):
        summaries.append([runner.lookup(c, Path(d)) for c, d in zip(cfgs, out_dirs, strict=True)])
        todo = [i for i, s in enumerate(summaries[g]) if s is None]
        ok, reason = _can_stack([cfgs[i] for i in todo]) if todo else (False, "")
        contexts.append(None)
        if len(todo) < 2 or not ok:
            if len(todo) > 1:
                log.info("running %d jobs one at a time: %s", len(todo), reason)
            sequential.append((g, todo))
            continue
        first = cfgs[todo[0]]
        device, threads = runner.resolve_device(first.device), plan.batched_threads(first.num_threads)
        side = plan.side_by_side(first.model.name, threads, device) if side_by_side else 1
        data = load(first.data, device=device)
        train_cfg = {**TRAIN_DEFAULTS, **first.train}
        rows = [protocol.split_sizes({**train_cfg, "train_size": cfgs[i].train.train_size}, data.n_train)[0]
                for i in todo]  # members' train sizes may differ (group_key)
        n_train = max(rows)
        steps = protocol.num_updates(train_cfg, n_train)
        parts = plan.plan_stacks([cfgs[i].model for i in todo], n_train, int(first.train.batch_size), device,
                                 threads, memory_budget_mb or math.inf, side,  # side by side share the budget
                                 plan.member_costs(train_cfg, rows, len(data.x_test)))
        for part in parts:
            stacked.append(_Stack(g, [todo[j] for j in part.members], steps * part.cost, side,
                                  1 if side > 1 else threads))
        contexts[g] = (data, device, threads)
        log.info("training %d runs as one batched program (%s, %d stack(s)%s)", len(todo), first.model.name,
                 len(parts), f", up to {side} side by side" if side > 1 else "")

    def run(stack: _Stack) -> _Stack:  # on the torch threads set by the caller (1 side by side)
        cfgs, out_dirs = groups[stack.group]
        data, device, _ = contexts[stack.group]
        first = cfgs[stack.members[0]]
        start = time.perf_counter()
        results, error = runner._attempt(lambda: batched.train_batched(  # looked up now: tests replace it
            [cfgs[i].model for i in stack.members], [cfgs[i].seed for i in stack.members], data, first.train,
            progress=first.progress, device=device, plan=False, cuda_graphs=first.get("cuda_graphs", True),
            train_sizes=[cfgs[i].train.train_size for i in stack.members]),
            "batched stack", record_config_errors=True)  # a sweep's job: recorded, never stops the others
        wall = (time.perf_counter() - start) / len(stack.members)  # the stack's wall time, shared equally
        threads = _threads_used(first, stack, device)
        for j, i in enumerate(stack.members):
            summaries[stack.group][i] = runner.finish(cfgs[i], Path(out_dirs[i]), results[j] if results else None,
                                                      error, wall, device, threads)
        runner._stop_if_asked(first, error)
        return stack

    def notify(stack: _Stack) -> None:
        for i in stack.members if done else ():
            done(stack.group, i, summaries[stack.group][i])

    pool = sorted((s for s in stacked if s.side > 1), key=lambda s: -s.cost)  # longest first
    if len(pool) < 2:
        pool = []  # one alone runs below, on all threads (train_batched may still split it)
    if planned is not None:
        shares = [{(s.group, i): s.cost / len(s.members) / (s.side if pool and s.side > 1 else 1) for i in s.members}
                  for s in stacked]
        singles = [((g, i), single_cost(groups[g][0][i])) for g, todo in sequential for i in todo]
        planned(shares + [{job: cost} for job, cost in singles if cost is not None])
    for g, todo in sequential:
        for i in todo:
            cfgs, out_dirs = groups[g]
            summaries[g][i] = runner.execute(cfgs[i], out_dirs[i], workers, in_sweep=True)
            if done:
                done(g, i, summaries[g][i])
    if pool:
        plan.run_side_by_side(run, pool, pool[0].side, notify)
    for stack in stacked:
        if not pool or stack.side == 1:
            torch.set_num_threads(stack.threads)  # 1 for a lone stack planned side by side
            notify(run(stack))
    return summaries


def _threads_used(cfg: DictConfig, stack: _Stack, device: str) -> cpu.Threads:
    """The torch threads a stack trained on, and why (env.json): called in the thread that trained it."""
    threads = torch.get_num_threads()  # 1 side by side; else its own, set before it ran
    parts = len(plan.spread(stack.members, min(threads, plan.MAX_WORKERS))) if plan.on_cpu(device) else 1
    why = (f"num_threads={cfg.num_threads}" if cfg.num_threads is not None else
           f"num_threads=null: the batched launcher's {plan.BATCHED_THREADS} threads")
    if parts > 1:  # train_batched trains it as parts side by side (plan.spread)
        return cpu.Threads(1, f"{why}; a stack of {len(stack.members)} as {parts} parts side by side, one thread each")
    if stack.side > 1:
        return cpu.Threads(threads, f"{why}; {cfg.model.name} stacks side by side, one thread each")
    return cpu.Threads(threads, f"{why}; {cfg.model.name} stacks one after another on {threads} thread(s)")


def _can_stack(cfgs: Sequence[DictConfig]) -> tuple[bool, str]:
    """(True, "") if these jobs may train as stacks: a batchable experiment, members that can batch."""
    name = cfgs[0].experiment_name
    if not experiments.batchable(name):
        return False, f"experiment {name!r} does not declare BATCHABLE = True"
    return batched.can_batch([c.model for c in cfgs], cfgs[0].train, [c.train.train_size for c in cfgs])


def single_cost(cfg: DictConfig) -> float | None:
    """The planner's cost estimate (plan.stack_cost x steps) of one job trained alone; None for
    families it does not model (the GRU), experiments that are not batchable, or a config it cannot read."""
    from ..data import split_rows

    try:  # only for the ETA: a config that is wrong here fails with its proper error when it runs
        model = records.to_plain(cfg.model)
        if model["name"] not in FAMILIES or not experiments.batchable(cfg.experiment_name):
            return None
        train_cfg = {**TRAIN_DEFAULTS, **cfg.train}
        n_train = protocol.split_sizes(train_cfg, split_rows(cfg.data)[0])[0]  # generated rows (a guess if frozen)
        return protocol.num_updates(train_cfg, n_train) * plan.stack_cost([model], runner.resolve_device(cfg.device))
    except Exception:  # noqa: BLE001
        return None
