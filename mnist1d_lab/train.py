"""The one plain training loop: one model, data as tensors on the device, minibatches by indexing.

The protocol (batch order, label noise, losses, evaluation points, summaries) lives in `protocol.py`
and is shared with the many-models loop. This module adds: config validation, the optimiser, the
loop itself and evaluation. No Hydra here: `cfg` is the plain `train` subtree (any Mapping).

Speed (docs/training.md, "Speed"): the loop never syncs with the host between evaluations
(no per-step `.item()`), uses fused optimiser kernels without torch.optim (optim.py), and flushes denormals.
"""

from __future__ import annotations

import difflib
import logging
import math
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import cpu, optim, protocol
from .errors import ConfigError
from .models import count_parameters

log = logging.getLogger(__name__)

# Mirrors conf/train/paper.yaml (a test checks they agree); missing keys fall back to these.
TRAIN_DEFAULTS: dict = {
    "optimizer": "adam", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "loss": "cross_entropy",
    "batch_size": 100, "steps": 6000, "epochs": None, "batch_order": "sequential", "eval_every": 250,
    "label_noise": 0.0, "label_noise_mode": "uniform", "label_noise_seed": None, "train_size": None,
    "val_split": 0.0, "eval_train_rows": None,
}

Hook = Callable[[int, nn.Module, optim.Optimizer], None]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def validate_train(cfg: Mapping, n_train: int) -> None:
    """Raise ConfigError (key `train.<key>`) for any bad or unknown knob; `n_train` = rows in the full
    training set."""
    for key in cfg:
        if key not in TRAIN_DEFAULTS:
            near = difflib.get_close_matches(str(key), list(TRAIN_DEFAULTS), n=1)
            raise ConfigError(f"train.{key}", cfg[key], "not a train knob" + (
                f" (did you mean train.{near[0]}?)" if near else "") + f"; knobs: {sorted(TRAIN_DEFAULTS)}")
    c = {**TRAIN_DEFAULTS, **cfg}

    def bad(key: str, allowed: str) -> ConfigError:
        return ConfigError(f"train.{key}", c[key], allowed)

    for key, choices in (("optimizer", protocol.OPTIMIZERS), ("loss", protocol.LOSSES),
                         ("batch_order", protocol.BATCH_ORDERS), ("label_noise_mode", protocol.LABEL_NOISE_MODES)):
        if c[key] not in choices:
            raise bad(key, f"one of {list(choices)}")
    if not _is_number(c["lr"]) or c["lr"] <= 0:
        raise bad("lr", "a positive number")
    for key in ("weight_decay", "momentum"):
        if not _is_number(c[key]) or c[key] < 0:
            raise bad(key, "a number >= 0")
    for key in ("batch_size", "eval_every") + (("steps",) if c["epochs"] is None else ("epochs",)):
        if not _is_int(c[key]) or c[key] < 1:
            raise bad(key, "a positive integer")
    if not _is_number(c["label_noise"]) or not 0 <= c["label_noise"] <= 1:
        raise bad("label_noise", "a fraction in [0, 1]")
    if c["label_noise_seed"] is not None and not _is_int(c["label_noise_seed"]):
        raise bad("label_noise_seed", "null or an integer")
    if c["eval_train_rows"] is not None and (not _is_int(c["eval_train_rows"]) or c["eval_train_rows"] < 1):
        raise bad("eval_train_rows", "null (every training row) or a positive integer")
    if not _is_number(c["val_split"]) or not 0 <= c["val_split"] < 1:
        raise bad("val_split", "a fraction in [0, 1)")
    n_val = round(c["val_split"] * n_train)
    if c["val_split"] > 0 and not 0 < n_val < n_train:
        raise bad("val_split", f"a fraction leaving >= 1 validation and >= 1 training row of {n_train}")
    available = n_train - n_val
    if c["train_size"] is not None and (not _is_int(c["train_size"]) or not 1 <= c["train_size"] <= available):
        raise bad("train_size", f"null or an integer in [1, {available}] ({n_train} rows, {n_val} held out)")
    n = available if c["train_size"] is None else c["train_size"]
    if c["batch_size"] > n:
        raise bad("batch_size", f"at most the training set size {n}")


def make_optimizer(model: nn.Module, cfg: Mapping) -> optim.Optimizer:
    """Adam or SGD (with momentum) from the config: torch's fused kernels without torch.optim (optim.py)."""
    return optim.make(model.parameters(), cfg["optimizer"], float(cfg["lr"]), float(cfg["weight_decay"]),
                      float(cfg["momentum"]) if cfg["optimizer"] == "sgd" else 0.0)


# Rows per forward pass when evaluating on the CPU. In one pass over 12,000 test rows, a 100-channel CNN's
# activations take ~250 MB, and a sweep of growing widths left each pass's freed buffers too small for
# the next (cpu.configure_process keeps freed memory): the double-descent sweep peaked at 2.5 GB of resident memory.
# In chunks of 1,024 rows it peaked at 0.76 GB. Evaluation got faster on one thread (12,000 rows: paper MLP
# 9.4 -> 6.3 ms, 300-wide MLP 58 -> 33 ms, 100-channel CNN 265 -> 214 ms) and stayed within 10 % either way
# on two (docs/training.md, "Speed").
EVAL_ROWS = 1024


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """(2,) tensor on the device: [mean loss, accuracy as a fraction] over all rows; on the CPU the
    forward pass runs in chunks of EVAL_ROWS rows (on a GPU in one)."""
    chunked = x.is_cpu and len(x) > EVAL_ROWS
    logits = torch.cat([model(part) for part in x.split(EVAL_ROWS)]) if chunked else model(x)  # (n, 10)
    acc = (logits.argmax(-1) == y).to(logits.dtype).mean()
    return torch.stack([protocol.loss_fn(loss, logits, y), acc])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """(n,) int64 predicted class of every row of x (on the CPU in chunks of EVAL_ROWS rows)."""
    was_training = model.training
    model.eval()
    parts = x.split(EVAL_ROWS) if x.is_cpu else (x,)
    pred = torch.cat([model(part).argmax(-1) for part in parts]).cpu().numpy().astype(np.int64)
    model.train(was_training)
    return pred


GRAPH_WARMUP = 3  # eager updates (on a side stream) before the update is captured as a CUDA graph


def can_graph(device: torch.device, hook: Hook | None, n: int, batch_size: int) -> bool:
    """Whether the training step can be one CUDA graph: on the current CUDA device (GraphedUpdate's
    streams live there; another GPU trains eagerly), no per-step hook (it may do anything to the model),
    and every batch the same shape (batch_size divides the training rows)."""
    return (device.type == "cuda" and hook is None and n % batch_size == 0
            and (device.index is None or device.index == torch.cuda.current_device()))


class GraphedUpdate:
    """`update(xb, yb)` (forward, loss, backward, optimiser step) replayed as one CUDA graph.

    On a GPU a training step (one model, or a stack of them in batched/train.py) is tens to hundreds of small
    kernels whose launches (Python, dispatcher, driver) take longer than the kernels run: replayed, the
    paper's CNN trained 7.7x faster on an H100 (docs/batched.md). The graph is recorded once, after
    GRAPH_WARMUP ordinary updates made on a side stream (torch.cuda.graph's recipe: lazy initialisation
    and the optimiser's state happen outside the capture), and every later update copies its batch into
    the graph's input tensors and replays it: the same kernels on the same memory (parameters, gradients,
    optimiser state are updated in place), so the numbers are those of the eager loop, bit for bit (GPU
    tests). Evaluations and the divergence freeze work on the same parameter tensors between replays.
    If the capture fails (an op that cannot be captured), it warns once and stays eager.
    """

    def __init__(self, update: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        self.update, self.calls, self.graph, self.inputs = update, 0, None, None
        self.side = torch.cuda.Stream()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        self.calls += 1
        if self.graph is not None:
            for static, new in zip(self.inputs, (xb, yb), strict=True):
                static.copy_(new)
            self.graph.replay()
        elif self.calls <= GRAPH_WARMUP or self.inputs is not None:  # warming up, or the capture failed
            self._eager(xb, yb)
        else:
            self.inputs = (xb.clone(), yb.clone())
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.update(*self.inputs)
            except RuntimeError as err:
                log.warning("CUDA graph capture failed, training eagerly: %s", err)
                torch.cuda.synchronize()
                self._eager(xb, yb)
                return
            self.graph = graph
            self.graph.replay()  # the capture only recorded this update

    def _eager(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        current = torch.cuda.current_stream()
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            self.update(xb, yb)
        current.wait_stream(self.side)


def train(model: nn.Module, data: protocol.DataLike, cfg: Mapping, seed: int, hook: Hook | None = None,
          progress: bool = True, device: str | torch.device | None = None,
          cuda_graphs: bool = True) -> protocol.TrainResult:
    """Train `model` on `data` (x, y, x_test, y_test) under the `train` config; returns curves + summary.

    `seed` is the run seed (batch order, val split, label noise; the model was built from it too).
    `hook(step, model, optimizer)` runs after every update, before any evaluation at that step.
    Evaluation at protocol.eval_steps (step 0 = before any update) on the training set (noisy labels, as
    trained; its first `eval_train_rows` rows when set), the test set and the val set. Stops early,
    `diverged=True`, at the first evaluation with a non-finite training loss. On CUDA the update is
    replayed as one CUDA graph (GraphedUpdate) when there is no hook and every batch is full;
    `cuda_graphs=False` keeps it eager.
    """
    cfg = {**TRAIN_DEFAULTS, **cfg}
    validate_train(cfg, len(data.x))
    cpu.tune()  # flushed denormals (cpu.py)
    device = torch.device(device) if device is not None else data.x.device
    model = model.to(device)
    dtype = next(model.parameters()).dtype  # data follow the model (float64 runs for exact comparisons)
    prep, info = protocol.prepare_data(data, cfg, seed)
    x, y = prep.x.to(device, dtype), prep.y.to(device)  # (n, L), (n,)
    scored = protocol.scored_train_rows(cfg, len(x))  # the training rows each evaluation scores
    splits = {"train": (x[:scored], y[:scored]), "test": (prep.x_test.to(device, dtype), prep.y_test.to(device))}
    if prep.x_val is not None:
        splits["val"] = (prep.x_val.to(device, dtype), prep.y_val.to(device))

    n, batch_size, loss_name = len(x), int(cfg["batch_size"]), cfg["loss"]
    total = protocol.num_updates(cfg, n)
    evals = set(protocol.eval_steps(total, int(cfg["eval_every"])))
    rows = protocol.batches(n, batch_size, cfg["batch_order"], protocol.generator(seed, "batch_order"), device)
    optimizer = make_optimizer(model, cfg)
    columns = ["step"] + [f"{s}_{m}" for s in splits for m in ("loss", "acc")]
    records: list[list[float]] = []

    def run_eval(step: int) -> list[float]:
        model.eval()
        metrics = torch.cat([evaluate(model, xs, ys, loss_name) for xs, ys in splits.values()])
        model.train()
        row = [float(step)] + metrics.tolist()  # the one host sync per evaluation
        records.append(row)
        return row

    def update(xb: torch.Tensor, yb: torch.Tensor) -> None:
        batch_loss = protocol.loss_fn(loss_name, model(xb), yb)  # stays on device: no sync
        optimizer.zero_grad()  # grads set to None (optim.FusedOptimizer: a plain loop, no torch.optim Python)
        batch_loss.backward()
        optimizer.step()

    graphed = GraphedUpdate(update) if cuda_graphs and can_graph(device, hook, n, batch_size) else None
    bar = tqdm(total=total, disable=not progress, desc="train", unit="step", leave=False)
    start, done, diverged = time.perf_counter(), 0, False
    run_eval(0)
    for step in range(1, total + 1):
        sel = next(rows)  # slice (sequential) or (B,) index tensor (reshuffle)
        (graphed or update)(x[sel], y[sel])
        if hook is not None:
            hook(step, model, optimizer)
        if step in evals:
            row = run_eval(step)
            bar.set_postfix(test_acc=f"{row[columns.index('test_acc')]:.3f}", refresh=False)
            bar.update(step - done)  # refreshes the bar, postfix included
            done = step
            if not math.isfinite(row[1]):  # row[1] = full-train loss; NaN/inf: the run has diverged
                diverged = True
                break
    bar.close()
    seconds = time.perf_counter() - start

    summary = {**protocol.summarize_curves(columns, records), **info, "diverged": diverged,
               "num_params": count_parameters(model), "train_seconds": seconds}
    log.info("trained %d steps in %.1f s: test_acc %.4f%s", done, seconds, summary["final_test_acc"],
             " (diverged)" if diverged else "")
    x_test, y_test = splits["test"]
    return protocol.TrainResult(columns=columns, rows=records, summary=summary, model=model,
                                test_pred=predict(model, x_test), test_true=y_test.cpu().numpy().astype(np.int64))
