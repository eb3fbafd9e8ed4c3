"""The training protocol shared by the one-model loop (`train.py`) and the many-models loop (`batched/train.py`).

Both loops must feed a model of a given seed the same batches, the same noisy labels and the same loss,
and summarise their curves the same way; everything that defines "the same" lives here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError

if TYPE_CHECKING:  # pandas is imported when a run's curves are first read as a table (0.5 s per process)
    import pandas as pd

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("adam", "sgd")
BATCH_ORDERS = ("sequential", "reshuffle")
LABEL_NOISE_MODES = ("uniform", "different")
CURVE_COLUMNS = ("step", "train_loss", "train_acc", "test_loss", "test_acc")  # + val_loss, val_acc with a val split

# Independent random streams derived from the run seed (model init uses `seed` itself, see models.py).
_STREAMS = {"batch_order": 1, "label_noise": 2, "val_split": 3}


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of a run, independent of the other streams."""
    return int(np.random.SeedSequence([int(seed), _STREAMS[stream]]).generate_state(2, np.uint64)[0] >> 1)


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU torch generator for one named stream of a run."""
    return torch.Generator().manual_seed(stream_seed(seed, stream))


def loss_fn(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss over the batch.

    cross_entropy: mean_i -log softmax(z_i)[y_i].
    mse:           mean_i sum_k (z_ik - onehot(y_i)_k)^2, on the raw logits z (no softmax).
    """
    if name == "cross_entropy":
        return F.cross_entropy(logits, y)
    if name == "mse":
        onehot = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        return (logits - onehot).square().sum(-1).mean()
    raise ConfigError("train.loss", name, f"one of {list(LOSSES)}")


def num_updates(cfg: Mapping, n_train: int) -> int:
    """Optimiser updates of a run: `epochs * ceil(n / batch)` if epochs is set, else `steps`."""
    if cfg.get("epochs") is not None:
        return int(cfg["epochs"]) * math.ceil(n_train / int(cfg["batch_size"]))
    return int(cfg["steps"])


def eval_steps(total: int, every: int) -> list[int]:
    """Update counts after which to evaluate: 0, every, 2*every, ..., and always the last."""
    return sorted(set(range(0, total + 1, every)) | {total})


def batches(n: int, batch_size: int, order: str, gen: torch.Generator | None = None,
            device: str | torch.device = "cpu") -> Iterator:
    """Endless row selectors, one per update: slices (sequential) or index tensors (reshuffle).

    sequential: update s uses rows [(s*B) mod n, (s*B) mod n + B), clipped at n: the original's
        fixed order, identical every epoch (a short batch at the end when B does not divide n).
    reshuffle:  each epoch draws randperm(n) from `gen` (a CPU generator) and splits it into batches
        of B (the last may be short); batches never cross epochs. The epoch's permutation is copied
        to `device` once (on a GPU a per-step copy from host memory waits for the queued kernels).
    """
    if order == "sequential":
        step = 0
        while True:
            start = (step * batch_size) % n
            yield slice(start, min(start + batch_size, n))
            step += 1
    elif order == "reshuffle":
        while True:
            yield from torch.randperm(n, generator=gen).to(device).split(batch_size)
    else:
        raise ConfigError("train.batch_order", order, f"one of {list(BATCH_ORDERS)}")


def apply_label_noise(y: torch.Tensor, fraction: float, mode: str, gen: torch.Generator,
                      num_classes: int = 10) -> tuple[torch.Tensor, float]:
    """Replace each label with probability `fraction`; returns (noisy labels, fraction actually changed).

    uniform:   the new label is uniform over all classes, so it may equal the true one (the original).
    different: the new label is uniform over the other num_classes - 1 classes.
    """
    if mode not in LABEL_NOISE_MODES:
        raise ConfigError("train.label_noise_mode", mode, f"one of {list(LABEL_NOISE_MODES)}")
    if fraction <= 0:
        return y, 0.0
    y_cpu = y.cpu()
    pick = torch.rand(len(y_cpu), generator=gen) < fraction
    if mode == "uniform":
        new = torch.randint(0, num_classes, (len(y_cpu),), generator=gen)
    else:
        new = (y_cpu + torch.randint(1, num_classes, (len(y_cpu),), generator=gen)) % num_classes
    noisy = torch.where(pick, new, y_cpu)
    return noisy.to(y.device), float((noisy != y_cpu).float().mean())


@dataclass
class TrainResult:
    """What a training run returns: tidy curves (one row per evaluation) and a flat summary.

    The curves are kept as plain rows (`columns`, `rows`; step first) and become a pandas DataFrame on
    first access to `curves`: a run that only writes its record (`curves_csv`) never imports pandas,
    0.5 s of a ~2.8 s CLI run here.
    """

    columns: Sequence[str] = ()
    rows: list[list[float]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    stages: list[dict] | None = None  # several result rows of one run (stages.csv), e.g. one per round
    test_pred: np.ndarray | None = None  # (n_test,) final predicted class of every test row
    test_true: np.ndarray | None = None  # (n_test,) the true classes, for the confusion matrix

    @functools.cached_property
    def curves(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.columns)).astype({"step": "int64"})

    def curves_csv(self) -> str | None:
        """The curves as CSV text, as `curves.to_csv(index=False)` writes it (NaN as an empty cell);
        None for a run without curves."""
        if not self.rows:
            return None
        lines = [",".join(self.columns)]
        lines += [",".join([str(int(r[0])), *("" if v != v else repr(float(v)) for v in r[1:])]) for r in self.rows]
        return "\n".join(lines) + "\n"


def summarize_curves(columns: Sequence[str], rows: Sequence[Sequence[float]]) -> dict:
    """Final and best metrics from the curves (`columns`, `rows`: step first), with honest labels.

    `best_test_*` picks the step by test accuracy (the original notebooks' practice: optimistic).
    `val_selected_*` picks the step by validation accuracy, when a validation split exists.
    Ties go to the earliest step; NaN never wins (as pandas' idxmax).
    """
    col = {c: i for i, c in enumerate(columns)}

    def argmax(name: str) -> list[float] | None:
        best = None
        for r in rows:
            v = r[col[name]]
            if v == v and (best is None or v > best[col[name]]):
                best = r
        return best

    last = rows[-1]
    out = {f"final_{c}": float(last[i]) for c, i in col.items() if c != "step"}
    out["steps"] = int(last[0])
    best = argmax("test_acc")
    out["best_test_acc"], out["best_test_step"] = float(best[col["test_acc"]]), int(best[0])
    sel = argmax("val_acc") if "val_acc" in col else None
    if sel is not None:
        out["val_selected_step"] = int(sel[0])
        out["val_selected_val_acc"] = float(sel[col["val_acc"]])
        out["val_selected_test_acc"] = float(sel[col["test_acc"]])
    return out


class DataLike(Protocol):
    """What the training loops need from a dataset (e.g. `data.DataSplit`): float inputs, int64 labels."""

    x: torch.Tensor  # (n, L)
    y: torch.Tensor  # (n,)
    x_test: torch.Tensor  # (n_test, L)
    y_test: torch.Tensor  # (n_test,)


@dataclass
class PreparedData:
    """Tensors one run trains and evaluates on; `y` holds the (possibly noisy) labels as trained.

    x: (n, L) float, y: (n,) int64 noisy, y_clean: (n,) int64 before noise, x_test/y_test: full test
    set, x_val/y_val: the held-out validation rows, or None without a val split.
    """

    x: torch.Tensor
    y: torch.Tensor
    y_clean: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


def scored_train_rows(cfg: Mapping, n_train: int) -> int:
    """How many training rows an evaluation scores (the first ones): all n_train, or `eval_train_rows`
    when set and smaller. Training itself always draws from all n_train."""
    cap = cfg.get("eval_train_rows")
    return n_train if cap is None else min(n_train, int(cap))


def split_sizes(cfg: Mapping, n: int) -> tuple[int, int]:
    """(n_train, n_val) after holding out `val_split` of the n training rows and cutting to `train_size`."""
    n_val = int(round(float(cfg.get("val_split") or 0.0) * n))
    available = n - n_val
    size = cfg.get("train_size")
    return (available if size is None else int(size)), n_val


def prepare_data(data: DataLike, cfg: Mapping, seed: int) -> tuple[PreparedData, dict]:
    """Hold out the val split, cut to train_size, add label noise to the training labels; returns (data, info).

    `data` has x (n, L) float, y (n,) int64, x_test, y_test (a `data.DataSplit` or anything alike).
    Val rows are drawn at random with generator(seed, "val_split"); the remaining rows keep their
    original order (so sequential batches match the original), and the first `train_size` are kept.
    Label noise uses `label_noise_seed` if set, else generator(seed, "label_noise").
    """
    n = len(data.x)
    n_train, n_val = split_sizes(cfg, n)
    x_val = y_val = None
    x, y = data.x, data.y
    if n_val > 0:
        val_rows = torch.randperm(n, generator=generator(seed, "val_split"))[:n_val].sort().values
        keep = torch.ones(n, dtype=torch.bool)
        keep[val_rows] = False  # train rows stay in their original order
        val_rows, keep = val_rows.to(x.device), keep.to(x.device)
        x_val, y_val, x, y = x[val_rows], y[val_rows], x[keep], y[keep]
    x, y_clean = x[:n_train], y[:n_train]
    noise_seed = cfg.get("label_noise_seed")
    noise_seed = stream_seed(seed, "label_noise") if noise_seed is None else int(noise_seed)
    y_noisy, changed = apply_label_noise(y_clean, float(cfg.get("label_noise") or 0.0),
                                         cfg.get("label_noise_mode", "uniform"),
                                         torch.Generator().manual_seed(noise_seed))
    info = {"n_train": n_train, "n_val": n_val, "label_noise_changed_fraction": changed,
            "label_noise_seed": noise_seed}
    return PreparedData(x, y_noisy, y_clean, data.x_test, data.y_test, x_val, y_val), info
