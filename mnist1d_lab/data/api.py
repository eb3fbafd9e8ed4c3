"""Entry points: the original package's API (make_dataset, get_dataset), and the lab's own: generate
(numpy, original keys), load (tensors on a device), the MNIST1D torch Dataset, and .npz export.

Knobs come from a dict, a DictConfig or any attribute object (config.knobs). The sequence variants
are applied after generation, in this order: shuffle_seq (inside the generator), reverse, roll.
"""

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

from ..errors import ConfigError
from .config import DEFAULTS, knobs, split_rows, validate
from .exact import make_dataset as make_exact
from .exact import seq_permutation
from .fast import make_fast
from .store import ARRAYS, cached, load_frozen, save_npz, to_pickle

log = logging.getLogger(__name__)
_said_built_locally = False  # get_dataset(download=True) says once per process that it builds instead


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


def variants(d: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    """Apply `reverse`, then `roll` (np.roll along the sequence) to x and x_test; t stays as it is."""
    length = d["x"].shape[1]
    if abs(a["roll"]) >= length:  # only a frozen dataset gets here: its length comes from the file
        raise ConfigError("data.roll", a["roll"], f"an integer with |roll| < {length} (the sequence length)")
    out = dict(d)
    for k in ("x", "x_test"):
        x = out[k][:, ::-1] if a["reverse"] else out[k]
        out[k] = np.ascontiguousarray(np.roll(x, a["roll"], axis=1) if a["roll"] else x)
    return out


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
        d = make_exact(a)
    else:
        d = make_fast(a)
    return variants(d, a) if a["reverse"] or a["roll"] else d


def _generation_knobs(args: Mapping | Any | None) -> dict[str, Any]:
    """The validated knob dict of a make_dataset / get_dataset call: unknown keys are ignored, as by the
    original, and so are source, path, cache and cache_dir (these functions always generate)."""
    a = {k: v for k, v in knobs(args).items() if k in DEFAULTS}
    a.update(source="generate", path=None)
    validate(a)
    return a


def make_dataset(args: Mapping | Any | None = None, template: dict | None = None) -> dict[str, Any]:
    """Drop-in for mnist1d.data.make_dataset (same arguments, same dict), plus the lab's knobs generator,
    reverse and roll when `args` has them. Global RNG state is never touched."""
    a = _generation_knobs(args)
    if template is not None and a["generator"] != "exact":
        raise ConfigError("template", "<templates dict>", "None with generator=fast (it uses get_templates())")
    d = make_exact(a, template) if a["generator"] == "exact" else make_fast(a)
    return variants(d, a) if a["reverse"] or a["roll"] else d


def _say_built_locally() -> None:
    global _said_built_locally
    if not _said_built_locally:
        _said_built_locally = True
        log.warning("get_dataset(download=True) never downloads: it builds the dataset from args with the exact "
                    "generator (for the default args: the published mnist1d_data.pkl's labels exactly, x within "
                    "1e-15). To use the published file, pass its location as path.")


def _stale_check(d: dict[str, Any], a: dict[str, Any], path: Path) -> None:
    """Log a warning when the arrays read from `path` visibly disagree with the knobs (shapes only)."""
    (train, test), length = split_rows(a), a["final_seq_length"]
    got, want = (np.shape(d["x"]), np.shape(d["x_test"])), ((train, length), (test, length))
    if got != want:
        log.warning("%s holds x %s and x_test %s, but args (num_samples=%s, train_split=%s, final_seq_length=%s) "
                    "give %s and %s: it was built with other args. Returned as read, as the original get_dataset "
                    "does; pass regenerate=True to rebuild it.", path, got[0], got[1], a["num_samples"],
                    a["train_split"], length, want[0], want[1])


def get_dataset(args: Mapping | Any | None, path: str | os.PathLike | None = None, verbose: bool = True,
                download: bool = True, regenerate: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Drop-in for mnist1d.data.get_dataset: the pickle at `path` when it exists (and not `regenerate`),
    else make_dataset(args, **kwargs), written to `path` in the original's pickle format.

    Never uses the network: `download=True` builds the data locally (said once per process). A file built
    with other args is returned as the original does, with a warning when its shapes disagree with args.
    A file at `path` that is not an MNIST-1D pickle raises ConfigError (the original overwrote it).
    path=None: the lab's dataset cache (<cache_dir>/mnist1d_<key>.npz, keyed by every knob), not
    ./mnist1d_data.pkl; pass path="./mnist1d_data.pkl" for the original's file.
    """
    a = _generation_knobs(args)

    def build(knob_dict: dict[str, Any]) -> dict[str, Any]:
        if download and not regenerate:  # where the original would fetch the published file
            _say_built_locally()
        return make_dataset(knob_dict, **kwargs)

    if path is None:
        if kwargs or not a["cache"]:  # custom templates are not part of the cache key
            return build(a)
        return cached(a, build, refresh=regenerate)
    path = Path(path)
    if path.exists() and not regenerate:
        try:
            d = load_frozen(path)
        except Exception as e:  # not a pickle, a folder, a pickle of something else
            raise ConfigError("path", str(path), f"an MNIST-1D pickle (a dict with {list(ARRAYS)}), or "
                              f"regenerate=True to overwrite it; reading it failed ({type(e).__name__})") from e
        _stale_check(d, a, path)
        if verbose:
            log.info("dataset loaded from %s", path)
        return d
    d = build(a)
    to_pickle(d, path)
    if verbose:
        log.info("dataset built and saved to %s", path)
    return d


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
