"""Shared pytest fixtures (used by other test modules too; keep names generic).

- `oracle_data`:  the original package's default dataset (mnist1d.make_dataset, 4000 train / 1000 test,
                  seed 42) as a DataSplit-like namespace of torch tensors; built once per session (~1.5 s).
- `small_data`:   the same generator with num_samples=1000 (800 train / 200 test), built once per session.
- `random_data`:  600 train / 200 test random rows (x ~ N(0,1), y uniform over 10), instant, per session.
- `make_split(x, y, x_test, y_test)`: helper turning arrays into that namespace.
All expose x (n, 40) float32, y (n,) int64, x_test, y_test, like mnist1d_lab.data.DataSplit.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch


def make_split(x, y, x_test, y_test) -> SimpleNamespace:
    """A DataSplit-like namespace: float32 inputs, int64 labels."""
    f = lambda a: torch.as_tensor(np.asarray(a)).float()  # noqa: E731
    i = lambda a: torch.as_tensor(np.asarray(a)).long()  # noqa: E731
    return SimpleNamespace(x=f(x), y=i(y), x_test=f(x_test), y_test=i(y_test))


def _oracle(num_samples: int) -> SimpleNamespace:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    d = make_dataset(args)
    return make_split(d["x"], d["y"], d["x_test"], d["y_test"])


@pytest.fixture(scope="session")
def oracle_data() -> SimpleNamespace:
    """The original package's default dataset (4000/1000)."""
    return _oracle(5000)


@pytest.fixture(scope="session")
def small_data() -> SimpleNamespace:
    """The original generator at num_samples=1000 (800 train / 200 test)."""
    return _oracle(1000)


@pytest.fixture(scope="session")
def random_data() -> SimpleNamespace:
    """Random data, 600 train / 200 test, 40 features, 10 classes."""
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(x=torch.randn(600, 40, generator=g), y=torch.randint(0, 10, (600,), generator=g),
                           x_test=torch.randn(200, 40, generator=g), y_test=torch.randint(0, 10, (200,), generator=g))


@pytest.fixture
def graph_replays(monkeypatch) -> list:
    """A list that grows by one at every CUDA graph replay: GPU tests check that the graph really ran."""
    replays: list = []
    real = torch.cuda.CUDAGraph.replay

    def replay(self):
        replays.append(self)
        return real(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", replay)
    return replays
