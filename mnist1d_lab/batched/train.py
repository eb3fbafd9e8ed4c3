"""Many models in one program: train K members with the same inputs and records as K runs of train.train.

Members may differ in `seed`, in width (MLP `width`, CNN `channels`) and in `train_size` (nested training
sets: the first n_k rows of one pool, each a whole number of batches, no val split, a fixed step count;
`sizes_can_differ`); everything else must match, and every model and training knob must be one the stacked
path implements (`can_batch` says why not).
Member k is built exactly as models.build_model(model_cfgs[k], seeds[k]), copied into stacked,
zero-padded parameters (`StackedModel`, batched/models.py, whose docstring explains why padding is
exact), and gets the same prepared data (protocol.prepare_data: val split, train_size, label noise from
its own seed), the same batch order (sequential: one shared order, or its own when sizes differ;
reshuffle: its own permutations from protocol.generator(seed_k, "batch_order"); gathered into a (K, B, L)
batch), the same optimiser
(train.make_optimizer over the stacked tensors; Adam and SGD are elementwise, so per member), the same
evaluation points and records, and the same final test predictions (`test_pred`, `test_true`). The loss
is the SUM over members of each member's mean loss.

Speed: on CPU each step's gradients are computed by hand (StackedModel.hand_grads, batched/ops.py: the
same maths as autograd, without its engine); layers are bmm (a shared batch is broadcast to the K
members without a copy; the CNN's first conv on a shared batch is one im2col mm; later convs im2col
patches + bmm), Adam is fused, denormals are flushed, and there is no host sync between evaluations.
Evaluation on CPU runs member by member through train.evaluate, as train.train evaluates its model
(0-25 % faster on a 2-core CPU than one stacked pass); on a GPU all members at once over chunks of rows
(member by member when their train sizes differ).
Members of very different widths run as a few width buckets (plan.plan_stacks).

Falls back (can_batch -> False): the GRU (aten's GRU kernel has no stacked form; run it one at a time),
mixed families or any model knob other than width/channels differing, a model knob or value outside
models.MODEL_KEYS, and a train knob or value outside TRAIN_KEYS (a new knob might couple members or
need its own stacked form). Divergence: as in train.train, a member whose full-train loss is non-finite
at an evaluation stops there (diverged=True); NaNs never leave a member's block, and the member is then
zeroed and frozen while the others go on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import cpu, optim, protocol
from ..errors import ConfigError
from ..models import count_parameters, model_kwargs
from ..train import (
    TRAIN_DEFAULTS,
    GraphedUpdate,
    can_graph,
    evaluate,
    make_optimizer,
    predict,
    validate_train,
)
from .models import WIDTH_KEY, StackedModel, unsupported
from .ops import member_losses
from .plan import (
    EVAL_ELEMS,
    MAX_WORKERS,
    act_per_example,
    member_costs,
    on_cpu,
    plan_stacks,
    run_side_by_side,
    spread,
)

log = logging.getLogger(__name__)

Hook = Callable[[int, StackedModel, optim.Optimizer], None]

_ANY = None
# Every train knob the stacked loop implements, with the values it implements (_ANY: whatever
# train.validate_train accepts). A knob not listed here (one added to train.TRAIN_DEFAULTS later) or
# another value makes can_batch refuse, so the job trains one at a time instead of the knob being ignored.
TRAIN_KEYS: dict[str, tuple | None] = {
    "optimizer": ("adam", "sgd"),  # elementwise: each member's update is its own
    "lr": _ANY, "momentum": _ANY, "weight_decay": _ANY,
    "loss": ("cross_entropy", "mse"),  # ops.member_losses and ops.head_loss_* implement these
    "batch_size": _ANY, "steps": _ANY, "epochs": _ANY,
    "batch_order": ("sequential", "reshuffle"),
    "eval_every": _ANY,
    "label_noise": _ANY, "label_noise_mode": _ANY, "label_noise_seed": _ANY,  # protocol.prepare_data, shared
    "train_size": _ANY, "val_split": _ANY, "eval_train_rows": _ANY,
}


def batch_key(model_cfg: Mapping) -> tuple:
    """Hashable key: members whose keys are equal (and same train cfg) can share one stack."""
    cfg = model_kwargs(model_cfg)
    cfg.pop(WIDTH_KEY.get(model_cfg["name"], ""), None)
    return (model_cfg["name"], tuple(sorted((k, repr(v)) for k, v in cfg.items())))


def nested_size(cfg: Mapping, train_size) -> str | None:
    """Why a member of train cfg `cfg` with this train_size cannot share a stack with members of other
    sizes, or None: it can when its size is a whole number of batches of one pool (no val split: its rows
    depend on the seed) and the step count does not depend on it (`epochs` unset). Member k then trains
    on the first n_k rows, drawing its batches as a plain run of that size would."""
    c = {**TRAIN_DEFAULTS, **cfg}
    batch = int(c["batch_size"])
    if c.get("epochs") is not None:
        return "train.train_size differs while train.epochs is set (members would take different numbers of steps)"
    if float(c.get("val_split") or 0.0) > 0:
        return "train.train_size differs with a val split (each member's training rows depend on its seed)"
    if train_size is None or int(train_size) % batch:
        return f"train.train_size differs and {train_size} is not a multiple of train.batch_size={batch}"
    return None


def sizes_can_differ(cfg: Mapping, train_sizes: Sequence) -> str | None:
    """Why members of train cfg `cfg` cannot have these per-member train sizes in one stack, or None."""
    if len(set(train_sizes)) <= 1:
        return None
    return next((r for r in (nested_size(cfg, n) for n in train_sizes) if r), None)


def can_batch(model_cfgs: Sequence[Mapping], cfg: Mapping, train_sizes: Sequence | None = None) -> tuple[bool, str]:
    """(True, "") if these members can train as one stack under train cfg `cfg` (member k with
    train_size train_sizes[k] when given), else (False, reason)."""
    if not model_cfgs:
        return False, "no members"
    if train_sizes is not None:
        reason = sizes_can_differ(cfg, train_sizes)
        if reason:
            return False, reason
    for model_cfg in model_cfgs:
        reason = unsupported(model_cfg)
        if reason:
            return False, reason
    try:
        keys = {batch_key(c) for c in model_cfgs}
    except ConfigError as err:
        return False, str(err)
    if len(keys) > 1:
        name = model_cfgs[0]["name"]
        return False, f"members differ in more than seed and {WIDTH_KEY.get(name, 'nothing')}: {sorted(keys)}"
    for key, value in cfg.items():
        if key not in TRAIN_KEYS:
            return False, f"train.{key} is not implemented by the stacked loop (it might couple members)"
        if TRAIN_KEYS[key] is not _ANY and value not in TRAIN_KEYS[key]:
            return False, f"train.{key}={value!r} is not implemented by the stacked loop (one of {list(TRAIN_KEYS[key])})"
    return True, ""


@torch.no_grad()
def _evaluate(model: StackedModel, x: torch.Tensor, y: torch.Tensor, loss: str, chunk: int) -> torch.Tensor:
    """(K, 2) [mean loss, accuracy] per member; x (n, L) shared or (K, n, L), y (K, n)."""
    n = y.shape[1]
    total = torch.zeros(model.K, 2, dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk):
        xs, ys = x[..., start:start + chunk, :], y[:, start:start + chunk]
        logits = model(xs)  # (K, b, C)
        total[:, 0] += member_losses(loss, logits, ys).sum(-1)
        total[:, 1] += (logits.argmax(-1) == ys).sum(-1).to(x.dtype)
    return total / n


def _evaluate_member(model: StackedModel, k: int, splits: Mapping, loss: str, n_train: int) -> torch.Tensor:
    """Member k's [loss, acc] for each split in one row, evaluated as train.train evaluates its model: on
    CPU as fast as the stacked pass or up to 25 % faster (stacks of 32-128; whole-split products stay large,
    where the stack's chunks of rows are small per member or leave the cache). `n_train`: the training
    rows member k's evaluation scores (the first n of the shared ones: its own when members' train sizes
    differ, at most `eval_train_rows`)."""
    m = model.member_model(k).eval()
    rows = _scored_rows(splits, n_train)
    return torch.cat([evaluate(m, (xs if xs.dim() == 2 else xs[k])[rows[name]], ys[k, rows[name]], loss)
                      for name, (xs, ys) in splits.items()])


def _scored_rows(splits: Mapping, n_train: int) -> dict[str, slice]:
    """Per split, the rows an evaluation scores: all of them, the first n_train of the training rows."""
    return {name: slice(None) for name in splits} | {"train": slice(0, n_train)}


def _stack_same(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """One shared tensor if all members have the same one, else stacked along a new first axis."""
    first = ts[0]
    if all(t is first or (t.shape == first.shape and torch.equal(t, first)) for t in ts[1:]):
        return first
    return torch.stack(list(ts))


def train_batched(model_cfgs: Sequence[Mapping], seeds: Sequence[int], data, cfg: Mapping,
                  progress: bool = True, device: str | torch.device | None = None, hook: Hook | None = None,
                  memory_budget_mb: float | None = None, dtype: torch.dtype | None = None,
                  plan: bool = True, cuda_graphs: bool = True, train_sizes: Sequence | None = None
                  ) -> list[protocol.TrainResult]:
    """Train member k = (model_cfgs[k], seeds[k]) as train.train would, all at once; one TrainResult each.

    `train_sizes[k]`, when given, is member k's train.train_size (sizes_can_differ says when they may differ).
    `hook(step, stacked_model, optimizer)` runs after every update. Members are split into stacks by
    plan.plan_stacks (width buckets: padding width 1 to 64 costs more than a second stack) and the
    stacks run one after another; within `memory_budget_mb` if given. On CPU with several torch threads
    and no hook, a stack of 2 * plan.MIN_SPLIT or more members trains as parts side by side
    (`plan.spread`). With a hook and no budget they stay one stack, so the hook sees every member;
    with `plan=False` too (the caller planned the stacks: `schedule.execute_groups` writes records stack
    by stack). `dtype` defaults to data.x's. On CUDA each stack's update is replayed as one CUDA graph
    (train.GraphedUpdate) when there is no hook and every batch is full; `cuda_graphs=False` keeps it eager.
    """
    if len(model_cfgs) != len(seeds):
        raise ValueError(f"{len(model_cfgs)} model configs but {len(seeds)} seeds")
    if train_sizes is not None and len(train_sizes) != len(seeds):
        raise ValueError(f"{len(train_sizes)} train sizes but {len(seeds)} seeds")
    ok, reason = can_batch(model_cfgs, cfg, train_sizes)
    if not ok:
        raise ConfigError("model", [dict(c) for c in model_cfgs][:3], f"members that can batch: {reason}")
    cfg = {**TRAIN_DEFAULTS, **cfg}
    sizes = list(train_sizes) if train_sizes is not None else [cfg["train_size"]] * len(seeds)
    for size in set(sizes):
        validate_train({**cfg, "train_size": size}, len(data.x))
    rows = [protocol.split_sizes({**cfg, "train_size": size}, len(data.x))[0] for size in sizes]
    n_train, costs = max(rows), member_costs(cfg, rows, len(data.x_test))
    budget = math.inf if memory_budget_mb is None else memory_budget_mb
    where = device or data.x.device
    threads = torch.get_num_threads()
    stacks = plan_stacks(model_cfgs, n_train, int(cfg["batch_size"]), where, threads, budget, 1, costs) if plan else []
    groups = [s.members for s in stacks]
    if len(groups) <= 1 or (memory_budget_mb is None and hook is not None):
        groups = [list(range(len(model_cfgs)))]  # with a hook and no budget: one stack, the hook sees all
    workers = 1 if hook is not None or not on_cpu(where) else min(threads, MAX_WORKERS)
    results: list = [None] * len(model_cfgs)

    def run(group: list[int]) -> tuple[list[int], list]:
        return group, _train_group([model_cfgs[i] for i in group], [seeds[i] for i in group], data, cfg,
                                   progress, device, hook, dtype, cuda_graphs, [sizes[i] for i in group])

    for stack in groups:  # one after another; a large stack is split into parts trained side by side
        parts = spread(stack, workers, costs)
        for group, out in [run(parts[0])] if len(parts) == 1 else run_side_by_side(run, parts, len(parts)):
            for i, r in zip(group, out, strict=True):
                results[i] = r
    return results


def _train_group(model_cfgs, seeds, data, cfg, progress, device, hook, dtype,
                 cuda_graphs: bool = True, sizes: Sequence | None = None) -> list[protocol.TrainResult]:
    cpu.tune()  # flushed denormals, no page faults from freed activations (cpu.py)
    device = torch.device(device) if device is not None else data.x.device
    dtype = dtype or data.x.dtype
    K = len(seeds)
    sizes = list(sizes) if sizes is not None else [cfg["train_size"]] * K
    model = StackedModel(model_cfgs, seeds, data.x.shape[1], 10, dtype, device)
    preps, infos = zip(*(protocol.prepare_data(data, {**cfg, "train_size": n}, s)
                         for n, s in zip(sizes, seeds, strict=True)), strict=True)
    ns = [len(p.y) for p in preps]  # each member's training rows: the first ns[k] of the largest member's
    widest = preps[ns.index(max(ns))]
    own_rows = len(set(ns)) > 1  # sizes differ: member k draws from and is scored on its own first ns[k] rows
    scored = [protocol.scored_train_rows(cfg, n) for n in ns]  # the training rows each evaluation scores

    def split(xs, ys):  # x shared (n, L) or per member (K, n, L); labels always (K, n)
        return _stack_same([t.to(device, dtype) for t in xs]), torch.stack([t.to(device) for t in ys])

    def padded(y: torch.Tensor) -> torch.Tensor:  # a member's labels, padded to the widest set (never drawn)
        return torch.cat([y, widest.y[len(y):]])

    splits = {"train": split([widest.x] * K if own_rows else [p.x for p in preps], [padded(p.y) for p in preps]),
              "test": split([p.x_test for p in preps], [p.y_test for p in preps])}
    if preps[0].x_val is not None:
        splits["val"] = split([p.x_val for p in preps], [p.y_val for p in preps])
    x, y = splits["train"]
    batch_size, loss_name = int(cfg["batch_size"]), cfg["loss"]
    total = protocol.num_updates(cfg, ns[0])  # the same for every member (sizes_can_differ)
    evals = set(protocol.eval_steps(total, int(cfg["eval_every"])))
    shared = per_member = None
    if cfg["batch_order"] == "sequential" and not own_rows:  # one order for all: the first layer is one shared mm
        shared = protocol.batches(ns[0], batch_size, "sequential")
    else:
        gens = [protocol.generator(s, "batch_order") for s in seeds]
        per_member = _member_batches(ns, batch_size, gens, device, cfg["batch_order"])
    members = torch.arange(K, device=device).unsqueeze(1)  # (K, 1) for per-member gathers
    optimizer = make_optimizer(model, cfg)
    columns = ["step"] + [f"{s}_{m}" for s in splits for m in ("loss", "acc")]
    records: list[list[list[float]]] = [[] for _ in range(K)]
    alive = [True] * K
    weight = torch.ones(K, dtype=dtype, device=device)  # 0 for diverged members

    def run_eval(step: int) -> None:
        if device.type == "cpu":  # diverged members (zeroed, frozen) are not evaluated again
            metrics = torch.stack([_evaluate_member(model, k, splits, loss_name, scored[k])
                                   if alive[k] else torch.zeros(2 * len(splits), dtype=dtype) for k in range(K)])
        elif own_rows:  # members score their own training rows: one member at a time
            metrics = torch.stack([_evaluate_member(model, k, splits, loss_name, scored[k]) for k in range(K)])
        else:  # all members at once, in chunks of rows that keep the activations within EVAL_ELEMS
            chunk = max(1, EVAL_ELEMS // (K * act_per_example(model.name, model.P, 1 + len(getattr(model, "ws", [])))))
            rows = _scored_rows(splits, scored[0])
            metrics = torch.cat([_evaluate(model, xs[..., rows[name], :], ys[:, rows[name]], loss_name, chunk)
                                 for name, (xs, ys) in splits.items()], 1)
        for k, row in enumerate(metrics.tolist()):  # the one host sync per evaluation
            if alive[k]:
                records[k].append([float(step)] + row)
                if not math.isfinite(row[0]):
                    alive[k] = False
                    _freeze(model, optimizer, k)
                    weight[k] = 0.0

    def update(xb: torch.Tensor, yb: torch.Tensor) -> None:
        stacked_update(model, optimizer, xb, yb, loss_name, weight)

    graphed = (GraphedUpdate(update) if cuda_graphs and all(can_graph(device, hook, n, batch_size) for n in set(ns))
               else None)
    bar = tqdm(total=total, disable=not progress, desc=f"train x{K}", unit="step", leave=False)
    start = time.perf_counter()
    run_eval(0)
    for step in range(1, total + 1):
        if not any(alive):
            break
        if shared is not None:
            sel = next(shared)
            xb, yb = x[..., sel, :], y[:, sel]  # (B, L) shared or (K, B, L); (K, B)
        else:
            idx = next(per_member)  # (K, B)
            xb = x[idx] if x.dim() == 2 else x[members, idx]  # (K, B, L)
            yb = y.gather(1, idx)
        (graphed or update)(xb, yb)
        if hook is not None:
            hook(step, model, optimizer)
        if step in evals:
            run_eval(step)
            bar.update(step - bar.n)
    bar.close()
    seconds = time.perf_counter() - start

    results = []
    x_test, y_test = splits["test"]
    for k in range(K):
        member = model.member_model(k)
        test_pred = predict(member, x_test if x_test.dim() == 2 else x_test[k])  # as train.train predicts
        summary = {**protocol.summarize_curves(columns, records[k]), **infos[k], "diverged": not alive[k],
                   "num_params": count_parameters(member), "train_seconds": seconds / K}
        results.append(protocol.TrainResult(columns=columns, rows=records[k], summary=summary, model=member.train(),
                                            test_pred=test_pred, test_true=y_test[k].cpu().numpy().astype(np.int64)))
    log.info("trained %d members x %d steps in %.1f s", K, total, seconds)
    return results


def stacked_update(model: StackedModel, optimizer: optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   loss: str, weight: torch.Tensor) -> None:
    """One optimiser step of every member on its batch: x (B, L) shared or (K, B, L), labels y (K, B), loss
    weights (K,) (0 for a frozen member). The loss is the SUM of the members' weighted mean losses."""
    if model.can_hand_step(x):  # CPU: the same gradients without autograd's engine (ops.py)
        optimizer.zero_grad()
        model.hand_grads(x, y, loss, weight)
    else:
        losses = member_losses(loss, model(x), y).mean(-1)  # (K,) each member's mean loss
        optimizer.zero_grad()
        (losses * weight).sum().backward()  # sum: every member gets exactly its own gradient
    optimizer.step()


MEMBER_BATCH_BLOCK = 100  # steps of per-member row indices drawn at once when sizes differ (one device copy)


def _member_batches(ns: Sequence[int], batch_size: int, gens: Sequence[torch.Generator], device,
                    order: str = "reshuffle") -> Iterator[torch.Tensor]:
    """Endless (K, B) row indices, member k's row k drawn exactly as protocol.batches(ns[k], batch_size,
    order, gens[k]) draws it (reshuffle: one randperm per epoch, split into batches; sequential: the
    fixed order), one copy to the device per epoch when all members have the same rows (on a GPU a
    per-step copy from host memory waits for the queued kernels), per MEMBER_BATCH_BLOCK steps when their
    sizes differ."""
    if order == "reshuffle" and len(set(ns)) == 1:
        while True:
            yield from torch.stack([torch.randperm(ns[0], generator=g) for g in gens]).to(device).split(batch_size, 1)
    draws = [protocol.batches(n, batch_size, order, g) for n, g in zip(ns, gens, strict=True)]

    def rows(sel) -> torch.Tensor:
        return torch.arange(sel.start, sel.stop) if isinstance(sel, slice) else sel

    while True:  # every size is a whole number of batches (sizes_can_differ): every batch is full
        block = [torch.stack([rows(next(d)) for _ in range(MEMBER_BATCH_BLOCK)]) for d in draws]  # K x (T, B)
        yield from torch.stack(block, 1).to(device).unbind(0)  # one copy to the device per T steps


@torch.no_grad()
def _freeze(model: StackedModel, optimizer: optim.Optimizer, k: int) -> None:
    """Zero member k's parameters and optimiser state: with zero loss weight it then never moves."""
    for name, p in model.named_parameters():
        tensors = [p] + [s for s in optimizer.state.get(p, {}).values() if torch.is_tensor(s) and s.shape == p.shape]
        for t in tensors:
            model.member_view(name, t, k).zero_()
