"""The experiment registry: experiment_name -> module with `run(cfg, device, progress)` and, for
sweeps, `summarize(table, out_dir) -> list[Path]` (tables and figures from the collected runs)."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError

EXPERIMENTS = {
    "train": "mnist1d_lab.experiments.train",
    "benchmark": "mnist1d_lab.experiments.benchmark",
    "double_descent": "mnist1d_lab.experiments.double_descent",
}


def get(name: str) -> ModuleType:
    """The experiment module registered under name."""
    if name not in EXPERIMENTS:
        raise ConfigError("experiment_name", name, f"one of {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
