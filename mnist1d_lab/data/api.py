"""The lab's entry points: generate (numpy, original keys), load (tensors on a device), Dataset, export."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import knobs, validate
from .exact import make_dataset, seq_permutation
from .fast import make_fast
from .store import cached, load_frozen, save_npz

log = logging.getLogger(__name__)


@dataclass
class DataSplit:
    """Train and test tensors: x (n, L) float32, y (n,) int64; t is the plotting axis (numpy) or None."""

    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    t: np.ndarray | None = None

    @classmethod
    def from_numpy(cls, d: Mapping[str, Any]) -> DataSplit:
        """From a dict with the original keys."""
        f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        i = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64)  # noqa: E731
        t = None if d.get("t") is None else np.asarray(d["t"])
        return cls(f(d["x"]), i(d["y"]), f(d["x_test"]), i(d["y_test"]), t)

    def to(self, device: str | torch.device) -> DataSplit:
        """A copy with all tensors on `device`."""
        return replace(self, x=self.x.to(device), y=self.y.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device))

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return len(self.x)

    @property
    def input_len(self) -> int:
        """Sequence length (40 by default)."""
        return self.x.shape[1]


def _reverse(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "x": np.ascontiguousarray(d["x"][:, ::-1]), "x_test": np.ascontiguousarray(d["x_test"][:, ::-1])}


def generate(cfg: Mapping | Any | None = None) -> dict[str, Any]:
    """The dataset of a `data` config as numpy arrays with the original keys (no cache)."""
    validate(cfg)
    a = knobs(cfg)
    if a["source"] == "frozen":
        d = dict(load_frozen(a["path"]))
        if a["shuffle_seq"]:  # the permutation the original would draw for these knobs
            perm = seq_permutation(a)
            d["x"], d["x_test"] = d["x"][:, perm], d["x_test"][:, perm]
    elif a["generator"] == "exact":
        d = make_dataset(a)
    else:
        d = make_fast(a)
    return _reverse(d) if a["reverse"] else d


def dataset(cfg: Mapping | Any | None = None) -> dict[str, Any]:
    """generate(cfg), through the disk cache when cfg.cache (generated sources only)."""
    validate(cfg)
    a = knobs(cfg)
    if a["cache"] and a["source"] == "generate":
        return cached(a, generate)
    return generate(a)


def load(cfg: Mapping | Any | None = None, device: str | torch.device = "cpu") -> DataSplit:
    """Validate a `data` config, build or fetch the dataset, and return float32/int64 tensors on `device`."""
    return DataSplit.from_numpy(dataset(cfg)).to(device)


class MNIST1D(torch.utils.data.Dataset):
    """torch Dataset over the train (or test) part of a DataSplit or a `data` config: items are (x, y)."""

    def __init__(self, data: DataSplit | Mapping | None = None, train: bool = True,
                 device: str | torch.device = "cpu"):
        split = data if isinstance(data, DataSplit) else load(data, device)
        self.x, self.y = (split.x, split.y) if train else (split.x_test, split.y_test)
        self.t = split.t

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]


def export_npz(cfg_or_dict: Mapping | Any | None, path: str | os.PathLike) -> Path:
    """Write a dataset (a dict with the original keys, or the dataset of a `data` config) to .npz."""
    is_data = isinstance(cfg_or_dict, Mapping) and "x" in cfg_or_dict and "x_test" in cfg_or_dict
    d = cfg_or_dict if is_data else dataset(cfg_or_dict)
    out = save_npz(d, path)
    log.info("dataset exported to %s", out)
    return out
