"""Masked training of K MLPs at once (lottery and random tickets): stacked parameters, one bmm per layer.

Member k is the `models.MLP` whose state dict is `states[k]`, trained with its mask `masks[k]`; the
members share the data and the batches and never mix (every product is per member, and the loss is the
SUM of the members' mean losses, so each member gets exactly its own gradient). K = 1 is the plain
masked training of one model. A test compares K stacked members with one `models.MLP` at a time in
float64.

Masked entries stay exactly zero: the parameters are masked once at the start, every gradient is
masked before the Adam step (so Adam's moments of a masked entry stay 0 and its update is
lr * 0 / (0 + eps) = 0), and the parameters are masked again after the step (a guard costing two
elementwise products per step). The original instead overwrote the parameters with the masked ones
before every forward pass and let Adam's state of pruned entries move.

Layouts (K members, L inputs, H hidden units, C classes): hidden weights (K, in, out) for baddbmm,
hidden biases (K, 1, out); the head keeps nn.Linear's (K, C, H) and (K, C) for `stacked_ops.StackedHead`
(products with C = 10 as the short row count). No per-step host sync: evaluations stay on the device
until the run ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import cpu, optim, protocol
from .batched.models import ACT_FNS
from .batched.ops import StackedHead

EVAL_ROWS = 1024  # rows per evaluation chunk (bounded memory for K members x thousands of rows)


def _is_head(name: str) -> bool:
    return name.startswith("out.")


def stack(states: Sequence[Mapping[str, torch.Tensor]], dtype: torch.dtype, device: str | torch.device
          ) -> list[torch.Tensor]:
    """K state dicts (or masks) of one MLP shape -> stacked tensors in the layouts above."""
    out = []
    for name in states[0]:
        t = torch.stack([s[name].detach() for s in states]).to(device, dtype)  # (K, *shape)
        if not _is_head(name):
            t = t.transpose(1, 2) if t.dim() == 3 else t.unsqueeze(1)  # (K, in, out) / (K, 1, out)
        out.append(t.contiguous())
    return out


def unstack(tensors: Sequence[torch.Tensor], names: Sequence[str]) -> list[dict[str, torch.Tensor]]:
    """Stacked tensors -> K state dicts on the CPU (the inverse of `stack`)."""
    K = tensors[0].shape[0]
    plain = []
    for name, t in zip(names, tensors, strict=True):
        t = t.detach().cpu()
        plain.append(t if _is_head(name) else (t.transpose(1, 2) if name.endswith("weight") else t.squeeze(1)))
    return [{n: p[k].clone() for n, p in zip(names, plain, strict=True)} for k in range(K)]


def forward(params: Sequence[torch.Tensor], x: torch.Tensor, residual: bool = True, act: str = "relu"
            ) -> torch.Tensor:
    """Logits (K, B, C) of the K members on a shared batch x (B, L), as models.MLP computes them."""
    f = ACT_FNS[act]
    K = params[0].shape[0]
    h = x.unsqueeze(0).expand(K, -1, -1)  # (K, B, L), a view
    hidden = params[:-2]
    for i in range(0, len(hidden), 2):
        z = f(torch.baddbmm(hidden[i + 1], h, hidden[i]))  # (K, B, out)
        h = h + z if residual and i > 0 else z
    return StackedHead.apply(h, params[-2], params[-1])


@torch.no_grad()
def evaluate(params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, residual: bool, act: str
             ) -> torch.Tensor:
    """(K, 2) on the device: [mean cross-entropy, accuracy] of every member on all rows of x, y."""
    total = torch.zeros(params[0].shape[0], 2, dtype=params[0].dtype, device=params[0].device)
    for xs, ys in zip(x.split(EVAL_ROWS), y.split(EVAL_ROWS), strict=True):
        logits = forward(params, xs, residual, act)  # (K, b, C)
        target = ys.unsqueeze(0).expand(len(logits), -1)
        total[:, 0] += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(-1)
        total[:, 1] += (logits.argmax(-1) == target).to(total.dtype).sum(-1)
    return total / len(x)


@dataclass
class MaskedRun:
    """What `train_masked` returns: curves, final train metrics, snapshots (all on the CPU)."""

    steps: list[int]                 # evaluation points (updates done)
    test: np.ndarray                 # (E, K, 2): test loss, test accuracy at each evaluation
    train: np.ndarray                # (K, 2): final train loss, train accuracy
    snapshots: dict[int, list[dict[str, torch.Tensor]]] = field(default_factory=dict)  # step -> K state dicts

    def rows(self, k: int) -> list[dict]:
        """Member k's curve as rows {step, test_loss, test_acc}."""
        return [{"step": s, "test_loss": float(self.test[i, k, 0]), "test_acc": float(self.test[i, k, 1])}
                for i, s in enumerate(self.steps)]

    def summary(self, k: int) -> dict:
        """Member k's final and best (test-selected) accuracy, final losses."""
        acc = self.test[:, k, 1]
        best = int(np.argmax(acc))
        return {"final_test_acc": float(acc[-1]), "best_test_acc": float(acc[best]),
                "best_test_step": self.steps[best], "final_test_loss": float(self.test[-1, k, 0]),
                "final_train_loss": float(self.train[k, 0]), "final_train_acc": float(self.train[k, 1])}


def train_masked(states: Sequence[Mapping[str, torch.Tensor]], masks: Sequence[Mapping[str, torch.Tensor]],
                 data: protocol.DataLike, *, lr: float, batch_size: int, steps: int, eval_every: int,
                 snapshot_steps: Sequence[int] = (), residual: bool = True, activation: str = "relu",
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> MaskedRun:
    """Train K masked MLPs (Adam, cross-entropy, the original's sequential batches) from `states`.

    Evaluates the test set after 0, eval_every, ... and `steps` updates; the training set once at
    the end. `snapshot_steps`: keep the (masked) parameters after these many updates (0 = the start).
    """
    cpu.tune()
    names = list(states[0])
    params = [t.requires_grad_() for t in stack(states, dtype, device)]
    keep = stack(masks, dtype, device)  # 1.0 kept, 0.0 pruned
    with torch.no_grad():
        torch._foreach_mul_(params, keep)
    opt = optim.make(params, "adam", lr)
    x, y = data.x.to(device, dtype), data.y.to(device)
    x_test, y_test = data.x_test.to(device, dtype), data.y_test.to(device)
    K, evals = len(states), set(protocol.eval_steps(steps, eval_every))
    batches = protocol.batches(len(x), batch_size, "sequential")
    curve: list[torch.Tensor] = []
    snaps: dict[int, list[torch.Tensor]] = {}
    for step in range(steps + 1):
        if step in snapshot_steps:
            snaps[step] = [p.detach().clone() for p in params]
        if step in evals:
            curve.append(evaluate(params, x_test, y_test, residual, activation))
        if step == steps:
            break
        sel = next(batches)
        xb, yb = x[sel], y[sel]
        logits = forward(params, xb, residual, activation)  # (K, B, C)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(K)) * K  # sum of members' means
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            torch._foreach_mul_([p.grad for p in params], keep)
            opt.step()
            torch._foreach_mul_(params, keep)
    train = evaluate(params, x, y, residual, activation)
    return MaskedRun(steps=sorted(evals), test=torch.stack(curve).cpu().double().numpy(),
                     train=train.cpu().double().numpy(),
                     snapshots={s: unstack(p, names) for s, p in snaps.items()})
