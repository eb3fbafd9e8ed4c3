"""Models: exact parameter counts (original and sweep formulas), shapes, seeding, bad knobs."""

from __future__ import annotations

import pytest
import torch

from mnist1d_lab.errors import ConfigError
from mnist1d_lab.models import build_model, count_parameters

PAPER = {"logistic": 410, "mlp": 15210, "cnn": 5210, "gru": 5134}


@pytest.mark.parametrize("name,count", sorted(PAPER.items()))
def test_paper_parameter_counts(name: str, count: int) -> None:
    assert count_parameters(build_model({"name": name}, seed=0)) == count


@pytest.mark.parametrize("h", [2, 16, 47, 300])
def test_double_descent_mlp_count(h: int) -> None:
    model = build_model({"name": "mlp", "width": h, "depth": 2, "residual": False}, seed=0)
    assert count_parameters(model) == h * h + 52 * h + 10


@pytest.mark.parametrize("c", [2, 10, 25, 100])
def test_cnn_count(c: int) -> None:
    assert count_parameters(build_model({"name": "cnn", "channels": c}, seed=0)) == 6 * c * c + 58 * c + 10


@pytest.mark.parametrize("name", sorted(PAPER))
def test_output_shape(name: str) -> None:
    assert build_model({"name": name}, seed=0)(torch.randn(7, 40)).shape == (7, 10)


def test_residual_mlp_differs_from_plain() -> None:
    x = torch.randn(5, 40)
    res, plain = (build_model({"name": "mlp", "residual": r}, seed=3) for r in (True, False))
    assert not torch.allclose(res(x), plain(x))  # same weights, different forward


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", sorted(PAPER))
def test_seeding(name: str) -> None:
    a, b, c = (build_model({"name": name}, seed=s) for s in (1, 1, 2))
    assert torch.equal(_flat(a), _flat(b))
    assert not torch.equal(_flat(a), _flat(c))


def test_build_model_keeps_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model({"name": "cnn"}, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("cfg,key", [
    ({"name": "transformer"}, "model.name"),
    ({"name": "mlp", "width": 0}, "model.width"),
    ({"name": "mlp", "width": 2.5}, "model.width"),
    ({"name": "mlp", "depth": True}, "model.depth"),
    ({"name": "mlp", "activation": "swishy"}, "model.activation"),
    ({"name": "cnn", "channels": -1}, "model.channels"),
    ({"name": "cnn", "kernel_sizes": [5, 3, 30]}, "model.depth"),  # length 10 -> -8
    ({"name": "cnn", "depth": 2, "kernel_sizes": [5, 3, 3]}, "model.kernel_sizes"),
    ({"name": "gru", "hidden_size": 0}, "model.hidden_size"),
])
def test_bad_knobs(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(cfg, seed=0)
    assert err.value.key == key and key in str(err.value)
