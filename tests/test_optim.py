"""optim.FusedOptimizer: torch.optim's fused numbers bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from mnist1d_lab import optim
from mnist1d_lab.errors import ConfigError
from mnist1d_lab.models import build_model


def _train(model, opt, steps: int = 20, lr_at: dict | None = None):
    gen, p0 = torch.Generator().manual_seed(0), next(model.parameters())
    x = torch.randn(200, 40, generator=gen, dtype=p0.dtype).to(p0.device)
    y = torch.randint(0, 10, (200,), generator=gen).to(p0.device)
    for i in range(steps):
        if lr_at and i in lr_at:  # as a hook would: hyperparameters are read from param_groups every step
            opt.param_groups[0]["lr"] = lr_at[i]
        rows = slice(i % 2 * 100, i % 2 * 100 + 100)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        opt.step()
    return model


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("name,momentum", [("adam", 0.0), ("sgd", 0.9), ("sgd", 0.0)])
@pytest.mark.parametrize("model,wd,dtype", [("mlp", 0.0, torch.float32), ("cnn", 1e-3, torch.float32),
                                            ("mlp", 1e-2, torch.float64)])
def test_fused_optimizer_equals_torch_optim_fused_bit_for_bit(name, momentum, model, wd, dtype, device):
    lr, lr_at = (1e-2, {7: 3e-3}) if name == "adam" else (5e-2, {7: 1e-2})
    ours, ref = (build_model({"name": model}, 0).to(device, dtype) for _ in range(2))
    opt = optim.FusedOptimizer(ours.parameters(), name, lr, wd, momentum)
    ref_opt = (torch.optim.Adam(ref.parameters(), lr=lr, weight_decay=wd, fused=True) if name == "adam" else
               torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum, weight_decay=wd, fused=True))
    _train(ours, opt, lr_at=lr_at), _train(ref, ref_opt, lr_at=lr_at)
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
        ref_state = {key: value for key, value in ref_opt.state[q].items() if value is not None}
        assert opt.state[p].keys() == ref_state.keys()
        for key, value in ref_state.items():
            assert torch.equal(opt.state[p][key], value), key


def test_make_falls_back_to_torch_optim_where_fused_kernels_do_not_apply():
    same = build_model({"name": "mlp"}, 0).parameters()
    assert isinstance(optim.make(same, "sgd", 0.1), optim.FusedOptimizer)
    mixed = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    assert isinstance(optim.make(mixed, "adam", 0.1), torch.optim.Adam)
    with pytest.raises(ValueError):
        optim.FusedOptimizer(mixed, "adam", 0.1)
    with pytest.raises(ConfigError, match="train.optimizer"):
        optim.make(mixed, "lbfgs", 0.1)


def test_training_never_imports_torch_dynamo():
    """torch.optim's first call imports torch._dynamo (1.5-2.5 s of start-up); the lab's loops avoid it."""
    code = textwrap.dedent("""
        import sys
        from types import SimpleNamespace
        import torch
        from mnist1d_lab import batched, models, train
        g = torch.Generator().manual_seed(0)
        d = SimpleNamespace(x=torch.randn(200, 40, generator=g), y=torch.randint(0, 10, (200,), generator=g),
                            x_test=torch.randn(50, 40, generator=g), y_test=torch.randint(0, 10, (50,), generator=g))
        for opt in ("adam", "sgd"):
            cfg = {"steps": 4, "eval_every": 2, "optimizer": opt}
            train.train(models.build_model({"name": "cnn"}, 0), d, cfg, 0, progress=False)
            batched.train_batched([{"name": "mlp", "width": w} for w in (3, 8)], [0, 1], d, cfg, progress=False)
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
