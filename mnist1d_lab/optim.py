"""SGD with momentum and Adam as torch's fused kernels, called without torch.optim.

Why not torch.optim: its first call in a process (the constructor's add_param_group, step, zero_grad)
imports torch._dynamo, 1.5-2.5 s of every process's start-up on this lab's CPU (as long as
`import torch` itself), for nothing a run here uses; and Adam.step / SGD.step spend ~90 us of Python per
step (state checks, grouping by device) around ~40 us of kernels, 10-15 % of an MLP step.

`FusedOptimizer` calls the kernels that torch.optim's `fused=True` path calls (`torch._fused_adam_`,
`torch._fused_sgd_`) with the same state layout (`state[p]["exp_avg"]`, `["exp_avg_sq"]`, `["step"]`
as a float32 tensor on the parameter's device; `["momentum_buffer"]`), so the numbers are torch.optim's
bit for bit (tests/test_optim.py). It keeps torch.optim's surface where this lab's code and hooks reach
in: `param_groups[0]` holds the hyperparameters, read at every step (a hook may change the learning
rate), `state` maps each parameter to its state, `step()`, `zero_grad()`. All state exists from the
start, so a CUDA graph can capture any step. Parameters on one CPU or CUDA device with one floating
dtype (what fused kernels support); anything else gets torch.optim (`make`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import ConfigError
from .protocol import OPTIMIZERS

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults (and the original's)


class FusedOptimizer:
    """`name` ("adam" or "sgd") over `params`: state and hyperparameters laid out as in torch.optim."""

    def __init__(self, params: Sequence[torch.Tensor], name: str, lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.0) -> None:
        params = list(params)
        _check(name)
        if not supports(params):
            raise ValueError("fused kernels need floating-point parameters on one CPU or CUDA device")
        self.name = name
        self.param_groups = [{"params": params, "lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                              "betas": ADAM_BETAS, "eps": ADAM_EPS}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for p in params:
            if name == "adam":  # float32 step on the device: what torch.optim.Adam(fused=True) keeps
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            else:
                self.state[p] = {"momentum_buffer": torch.zeros_like(p)} if momentum else {}
        self._first_step = True  # SGD: the first step sets each momentum buffer to its gradient

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every gradient."""
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (others are skipped, as in torch.optim)."""
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if self.name == "adam":
            states = [self.state[p] for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            torch._fused_adam_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                               [], steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                               weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
            return
        momentum = group["momentum"]
        buffers = [self.state[p]["momentum_buffer"] for p in params] if momentum else []
        torch._fused_sgd_(params, grads, buffers, weight_decay=group["weight_decay"], momentum=momentum,
                          lr=group["lr"], dampening=0.0, nesterov=False, maximize=False,
                          is_first_step=self._first_step and bool(momentum))
        self._first_step = False


Optimizer = FusedOptimizer | torch.optim.Optimizer


def _check(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ConfigError("train.optimizer", name, f"one of {list(OPTIMIZERS)}")


def supports(params: Sequence[torch.Tensor]) -> bool:
    """Whether fused kernels take these parameters: floating point, one dtype, one CPU or CUDA device
    (exactly one (device, dtype) pair, so an empty list is not supported either)."""
    return (len({(p.device, p.dtype) for p in params}) == 1 and params[0].dtype.is_floating_point
            and params[0].device.type in ("cpu", "cuda"))


def make(params: Sequence[torch.Tensor], name: str, lr: float, weight_decay: float = 0.0,
         momentum: float = 0.0) -> Optimizer:
    """A FusedOptimizer where the kernels support the parameters, else torch.optim's foreach version."""
    params = list(params)
    _check(name)
    if supports(params):
        return FusedOptimizer(params, name, lr, weight_decay, momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=weight_decay,
                                foreach=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
