"""Run one configured job: validate, skip if the store has it, train, write the record. No Hydra here."""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from . import cpu, experiments, paths, protocol, records
from .context import RunContext
from .errors import ConfigError
from .models import model_kwargs
from .train import TRAIN_DEFAULTS

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """`auto` -> cuda when available, else cpu; otherwise check the name."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError("device", name, "auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and not torch.cuda.is_available()):
        raise ConfigError("device", name, "auto, cpu, or cuda[:N] on a machine with CUDA")
    return str(dev)


def default_threads(workers: int = 1) -> int:
    """CPU cores (this process may use) divided by the number of parallel workers, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _expected_n_train(data_cfg: DictConfig) -> int | None:
    """Training rows a generated dataset will have (the original keeps num_samples // 10 per class)."""
    if data_cfg.get("source", "generate") != "generate":
        return None
    return int((data_cfg.num_samples // 10) * 10 * data_cfg.train_split)


def validate(cfg: DictConfig) -> None:
    """Check everything that can be checked before any work; raises ConfigError."""
    from .data import validate as validate_data
    from .train import validate_train

    experiments.get(cfg.experiment_name)
    model_kwargs(cfg.model)
    validate_data(cfg.data)
    n_train = _expected_n_train(cfg.data)
    if n_train is not None:  # a frozen dataset's size is known only after loading: train() checks then
        validate_train(cfg.train, n_train=n_train)
    resolve_device(cfg.device)
    if cfg.num_threads is not None and (not isinstance(cfg.num_threads, int) or cfg.num_threads < 1):
        raise ConfigError("num_threads", cfg.num_threads, "null or a positive integer")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError("seed", cfg.seed, "an integer")


def setup_torch(cfg: DictConfig, workers: int = 1) -> int:
    """Set the thread count deliberately (no oversubscription) and flush denormals; returns threads."""
    threads = cfg.num_threads or default_threads(workers)
    torch.set_num_threads(threads)
    cpu.tune()  # flushed denormals (cpu.py)
    return threads


def finish(cfg: DictConfig, out_dir: Path, result, error: str | None, wall: float, device: str,
           threads: int) -> dict:
    """Write a run's record into out_dir and, when finished, into the store; returns its summary.

    From the result (protocol.TrainResult) it writes curves.csv, stages.csv, the test predictions
    (artifacts test_pred.npy, test_true.npy and test_confusion.csv) and, with save_model=true, the
    weights (artifact model.pt); the experiment's own artifacts are already in out_dir/artifacts/.
    """
    summary = dict(result.summary) if result is not None else {}
    diverged = summary.get("diverged") or not math.isfinite(summary.get("final_train_loss", 0.0))
    status = "failed" if error else "diverged" if diverged else "complete"
    summary.update(status=status, error=error, run_key=records.run_key(cfg), experiment_name=cfg.experiment_name,
                   wall_time_s=round(wall, 3))
    seeds = {"seed": cfg.seed, "data.seed": cfg.data.seed, "label_noise_seed": summary.get("label_noise_seed")}
    env = records.environment(device, seeds, threads)
    tables = _write_result_artifacts(cfg, Path(out_dir), result) if result is not None else {}
    records.write_record(out_dir, cfg, summary, result.curves_csv() if result is not None else None, env, tables)
    if status in records.DONE_STATUSES:
        records.file_into_store(out_dir, paths.store_dir(cfg.paths.output_dir) / summary["run_key"])
        RunContext(Path(out_dir), checkpoint_dir=paths.partial_dir(cfg.paths.output_dir, summary["run_key"])
                   ).discard_checkpoints()
    return summary


def _write_result_artifacts(cfg: DictConfig, out_dir: Path, result) -> dict[str, str]:
    """Write the result's test predictions and (save_model=true) weights as artifacts; returns the CSV
    tables of the record (stages.csv, test_confusion.csv) as text by file name."""
    ctx = RunContext(out_dir)
    tables = {}
    if result.test_pred is not None and result.test_true is not None:
        ctx.save_artifact(paths.TEST_PRED_ARTIFACT, result.test_pred)
        ctx.save_artifact(paths.TEST_TRUE_ARTIFACT, result.test_true)
        num_classes = max(10, int(max(result.test_true.max(initial=0), result.test_pred.max(initial=0))) + 1)
        tables[paths.CONFUSION_FILE] = records.confusion_csv(
            records.confusion_matrix(result.test_true, result.test_pred, num_classes))
    if cfg.get("save_model") and result.model is not None:
        ctx.save_artifact(paths.MODEL_ARTIFACT, {k: v.detach().cpu() for k, v in result.model.state_dict().items()})
    if result.stages:
        import csv
        import io

        columns = list(dict.fromkeys(k for row in result.stages for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.stages)
        tables[paths.STAGES_FILE] = buf.getvalue()
    return tables


def lookup(cfg: DictConfig, out_dir: Path) -> dict | None:
    """If the store holds cfg's finished record (and not force): copy it to out_dir, log the skip and
    return its summary marked `skipped`; else None."""
    store = records.finished(cfg)
    if store is None:
        return None
    summary = records.reuse(store, out_dir)
    log.info("skipped: complete record %s in the store", summary["run_key"])
    return summary


def execute(cfg: DictConfig, out_dir: Path, workers: int = 1) -> dict:
    """Run one job end to end and return its summary (status: complete, diverged, failed or skipped).

    Raises ConfigError for bad input (before any work where possible). Other exceptions are recorded
    as `failed` and swallowed; with cfg.stop_on_error the record is written and then RuntimeError raised.
    """
    validate(cfg)
    out_dir = Path(out_dir)
    found = lookup(cfg, out_dir)
    if found is not None:
        return found
    device, threads = resolve_device(cfg.device), setup_torch(cfg, workers)
    start = time.perf_counter()
    experiment = experiments.get(cfg.experiment_name)
    ctx = RunContext(out_dir, device=device, progress=bool(cfg.progress),
                     checkpoint_dir=paths.partial_dir(cfg.paths.output_dir, records.run_key(cfg)))
    if cfg.get("force"):
        ctx.discard_checkpoints()  # force=true recomputes every stage too
    result, error = _attempt(lambda: experiment.run(cfg, ctx), "run")
    summary = finish(cfg, out_dir, result, error, time.perf_counter() - start, device, threads)
    _stop_if_asked(cfg, error)
    return summary


def _attempt(fn, what: str) -> tuple:
    """(fn(), None), or (None, error text) when fn raised (logged with its traceback). Bad input
    (ConfigError) is not a failed run: it propagates."""
    try:
        return fn(), None
    except ConfigError:
        raise
    except Exception as exc:  # a failed run is recorded, and the sweep carries on
        error = f"{type(exc).__name__}: {exc}"
        log.error("%s failed: %s\n%s", what, error, traceback.format_exc())
        return None, error


def _stop_if_asked(cfg: DictConfig, error: str | None) -> None:
    """With stop_on_error=true, a failed run (already recorded) stops the sweep."""
    if error and cfg.stop_on_error:
        raise RuntimeError(f"stopping the sweep (stop_on_error=true): {error}")


def group_key(cfg: DictConfig) -> str:
    """Runs with equal group keys differ only in what the batched trainer can stack (seed, width)."""
    from .batched_models import WIDTH_KEY

    plain = records.to_plain(cfg)
    plain.pop("seed", None)
    plain["model"] = {k: v for k, v in plain["model"].items() if k != WIDTH_KEY.get(plain["model"].get("name"))}
    return records.run_key(plain)


@dataclass
class _Stack:
    """One planned stack: members (indices into its group's jobs), the group, its estimated cost."""
    group: int
    members: list[int]
    cost: float
    side: int  # stacks of its family that train at once (stacks.side_by_side)


def execute_groups(groups: Sequence[tuple[list[DictConfig], list[Path]]], workers: int = 1,
                   memory_budget_mb: float | None = None,
                   done: Callable[[int, int, dict], None] | None = None,
                   side_by_side: bool = True,
                   planned: Callable[[list[dict[tuple[int, int], float]]], None] | None = None
                   ) -> list[list[dict]]:
    """Run groups of jobs (each sharing a group_key) as batched programs; one record per job, as
    execute() writes, and the summaries per group in job order.

    Finished jobs are skipped member by member; a group whose members cannot batch (e.g. the GRU), or
    with one job left, runs one job at a time. Each group is cut into stacks (stacks.plan_groups, within
    `memory_budget_mb` in all); stacks of families that gain from it (stacks.side_by_side: MLPs on
    CPU; not with side_by_side=False) train side by side, one torch thread each, longest first, across
    groups (large stacks cut into parts, stacks.spread); then the others, one after another on all
    threads. Records are written as each stack finishes; then, in the calling thread, `done(group
    index, job index, summary)` is called for each of its jobs (the launcher's per-job bookkeeping).
    A failure of a stack is recorded for each of its members; with stop_on_error, stacks not yet
    started are not started. Before any training, `planned([{(group, job): weight}, ...])` gets, per
    stack (jobs that finish together; one job each when run one at a time), each job's share of the
    estimated wall time (stacks.stack_cost x steps, divided among a stack's members and by the stacks
    running at once), for a cost-weighted ETA; jobs without an estimate (a GRU) are left out.
    """
    from . import batched, stacks
    from .data import load

    for cfgs, _ in groups:
        for cfg in cfgs:
            validate(cfg)
    summaries: list[list[dict | None]] = []
    contexts, stacked, sequential = [], [], []
    for g, (cfgs, out_dirs) in enumerate(groups):
        summaries.append([lookup(c, Path(d)) for c, d in zip(cfgs, out_dirs, strict=True)])
        todo = [i for i, s in enumerate(summaries[g]) if s is None]
        ok, reason = batched.can_batch([cfgs[i].model for i in todo], cfgs[todo[0]].train) if todo else (False, "")
        contexts.append(None)
        if len(todo) < 2 or not ok:
            if len(todo) > 1:
                log.info("running %d jobs one at a time: %s", len(todo), reason)
            sequential.append((g, todo))
            continue
        first = cfgs[todo[0]]
        device, threads = resolve_device(first.device), setup_torch(first, workers)
        side = stacks.side_by_side(first.model.name, threads, device) if side_by_side else 1
        data = load(first.data, device=device)
        train_cfg = {**TRAIN_DEFAULTS, **first.train}
        n_train = protocol.split_sizes(train_cfg, data.n_train)[0]
        budget = (memory_budget_mb or math.inf) / side  # stacks side by side share the budget
        steps = protocol.num_updates(train_cfg, n_train)
        per_stack = stacks.stack_threads(first.model.name, threads, device)  # 1 for stacks side by side
        parts = stacks.plan_groups([cfgs[i].model for i in todo], n_train, budget, int(first.train.batch_size),
                                   device, per_stack)
        for part in parts:  # side by side, a large stack is cut into interleaved parts (stacks.spread)
            for members in stacks.spread([todo[j] for j in part], side):
                cost = steps * stacks.stack_cost([cfgs[i].model for i in members], device, per_stack)
                stacked.append(_Stack(g, members, cost, side))
        contexts[g] = (data, device, threads)
        log.info("training %d runs as one batched program (%s, %d stack(s)%s)", len(todo), first.model.name,
                 len(parts), f", up to {side} side by side" if side > 1 else "")

    def run(stack: _Stack) -> _Stack:  # on the torch threads set by the caller (1 side by side)
        cfgs, out_dirs = groups[stack.group]
        data, device, _ = contexts[stack.group]
        first = cfgs[stack.members[0]]
        start = time.perf_counter()
        results, error = _attempt(lambda: batched.train_batched(
            [cfgs[i].model for i in stack.members], [cfgs[i].seed for i in stack.members], data, first.train,
            progress=first.progress, device=device, plan=False, cuda_graphs=first.get("cuda_graphs", True)),
            "batched stack")
        wall = (time.perf_counter() - start) / len(stack.members)  # the stack's wall time, shared equally
        for j, i in enumerate(stack.members):
            summaries[stack.group][i] = finish(cfgs[i], Path(out_dirs[i]), results[j] if results else None,
                                               error, wall, device, torch.get_num_threads())
        _stop_if_asked(first, error)
        return stack

    def notify(stack: _Stack) -> None:
        for i in stack.members if done else ():
            done(stack.group, i, summaries[stack.group][i])

    pool = sorted((s for s in stacked if s.side > 1), key=lambda s: -s.cost)  # longest first
    if len(pool) < 2:
        pool = []  # one alone runs below, on all threads (train_batched may still split it)
    if planned is not None:
        plan = [{(s.group, i): s.cost / len(s.members) / (s.side if pool and s.side > 1 else 1) for i in s.members}
                for s in stacked]
        singles = [((g, i), single_cost(groups[g][0][i])) for g, todo in sequential for i in todo]
        planned(plan + [{job: cost} for job, cost in singles if cost is not None])
    for g, todo in sequential:
        for i in todo:
            cfgs, out_dirs = groups[g]
            summaries[g][i] = execute(cfgs[i], out_dirs[i], workers)
            if done:
                done(g, i, summaries[g][i])
    if pool:
        stacks.run_side_by_side(run, pool, pool[0].side, notify)
    for stack in stacked:
        if not pool or stack.side == 1:
            torch.set_num_threads(contexts[stack.group][2])  # its group's thread count (setup_torch)
            notify(run(stack))
    return summaries


def single_cost(cfg: DictConfig) -> float | None:
    """The planner's cost estimate (stacks.stack_cost x steps) of one job trained alone; None for
    families it does not model (the GRU) or a config it cannot read."""
    from . import stacks
    from .batched_models import BATCHABLE
    from .data import split_rows

    try:  # only for the ETA: a config that is wrong here fails with its proper error when it runs
        model = records.to_plain(cfg.model)
        if model["name"] not in BATCHABLE:
            return None
        train_cfg = {**TRAIN_DEFAULTS, **cfg.train}
        n_train = protocol.split_sizes(train_cfg, split_rows(cfg.data)[0])[0]  # generated rows (a guess if frozen)
        return protocol.num_updates(train_cfg, n_train) * stacks.stack_cost([model], resolve_device(cfg.device))
    except Exception:  # noqa: BLE001
        return None
