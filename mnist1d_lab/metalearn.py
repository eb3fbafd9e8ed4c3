"""Gradient-based metalearning (paper Figures 5 and 6): a one-hidden-layer MLP whose whole inner training
loop is differentiable, so a meta-objective can be differentiated exactly through hundreds of inner steps.

The inner gradient is written out by hand (`loss_and_grads`: backprop of a 40-H-10 MLP with cross-entropy)
instead of asking autograd for it with `create_graph=True`. The hand-written gradient is itself made of
differentiable tensor operations, so one ordinary `backward` through the unroll gives the exact
hypergradient (second-order terms included), with a graph of plain matrix products and elementwise ops
and none of autograd's double-backward formulas. A test compares it with autograd's gradient.

Parameters carry a leading axis K (models trained side by side: two learning-rate trials, a landscape
of 61 fixed rates, several evaluation seeds): W1 (K, H, D), b1 (K, H), W2 (K, O, H), b2 (K, O).
An activation is a callable z -> (f(z), f'(z)), elementwise (`ACTIVATIONS`, or a learned one from
`learned_activation`).

The learning-rate experiment lives here (`sgd_unroll`, `lr_hypergrad`, `lr_landscape`); the learned
activation function's meta-training is in `learned_activation.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .protocol import batches

Params = list[Tensor]  # [W1 (K, H, D), b1 (K, H), W2 (K, O, H), b2 (K, O)]
Activation = Callable[[Tensor], tuple[Tensor, Tensor]]  # z -> (f(z), f'(z)), same shape as z

# Independent random streams of a metalearning run, derived from the run seed.
_STREAMS = {"inner_init": 11, "meta_init": 12, "hidden_noise": 13}


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named stream of a metalearning run (independent of the other streams)."""
    state = np.random.SeedSequence([int(seed), _STREAMS[stream]]).generate_state(2, np.uint64)[0] >> 1
    return torch.Generator().manual_seed(int(state))


def _relu(z: Tensor) -> tuple[Tensor, Tensor]:
    return z.clamp_min(0), (z > 0).to(z.dtype)


def _tanh(z: Tensor) -> tuple[Tensor, Tensor]:
    t = torch.tanh(z)
    return t, 1 - t * t


def _elu(z: Tensor) -> tuple[Tensor, Tensor]:
    neg = z.clamp_max(0)  # exp of the negative side only: no inf (and no NaN gradient) for large z
    return torch.where(z > 0, z, torch.expm1(neg)), torch.where(z > 0, torch.ones_like(z), torch.exp(neg))


def _silu(z: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(z)
    return z * s, s * (1 + z * (1 - s))


def _softplus(z: Tensor) -> tuple[Tensor, Tensor]:
    return F.softplus(z), torch.sigmoid(z)


def _sigmoid(z: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(z)
    return s, s * (1 - s)


# Fixed activations with their derivatives (swish = silu). The names match models.ACTIVATIONS.
ACTIVATIONS: dict[str, Activation] = {"relu": _relu, "tanh": _tanh, "elu": _elu, "silu": _silu,
                                      "softplus": _softplus, "sigmoid": _sigmoid}


def activation(name: str, key: str = "metalearn.activation") -> Activation:
    """The fixed activation `name` as z -> (f(z), f'(z))."""
    if name not in ACTIVATIONS:
        raise ConfigError(key, name, f"one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def linear_init(fan_in: int, fan_out: int, gen: torch.Generator, k: int = 1,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """K draws of torch.nn.Linear's default init (weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
    from an explicit generator: weight (K, fan_out, fan_in), bias (K, fan_out)."""
    bound = 1.0 / fan_in ** 0.5
    w = (torch.rand(k, fan_out, fan_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    b = (torch.rand(k, fan_out, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    return w.to(dtype), b.to(dtype)


def init_mlp(seeds: Sequence[int], hidden: int, input_len: int = 40, num_classes: int = 10,
             dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Params:
    """One 40-H-10 MLP per seed (stream "inner_init"), stacked on a leading axis K = len(seeds)."""
    parts = []
    for seed in seeds:
        gen = stream_generator(seed, "inner_init")
        parts.append([*linear_init(input_len, hidden, gen, dtype=dtype), *linear_init(hidden, num_classes, gen, dtype=dtype)])
    return [torch.cat(ts).to(device) for ts in zip(*parts, strict=True)]


def forward(params: Params, x: Tensor, act: Activation, noise: Tensor | None = None) -> Tensor:
    """Logits (K, B, O) for inputs x (B, D) or (K, B, D); `noise` (K, 1, H) is added after the activation."""
    W1, b1, W2, b2 = params
    a, _ = act(torch.matmul(x, W1.transpose(1, 2)) + b1.unsqueeze(1))
    if noise is not None:
        a = a + noise
    return torch.matmul(a, W2.transpose(1, 2)) + b2.unsqueeze(1)


def loss_and_grads(params: Params, x: Tensor, y: Tensor, act: Activation,
                   noise: Tensor | None = None) -> tuple[Tensor, Params]:
    """Mean cross-entropy of each of the K models on the batch (x (B, D), y (B,)) and its gradient with
    respect to every parameter, by hand: the same numbers as autograd, as differentiable tensor ops."""
    W1, b1, W2, b2 = params
    z = torch.matmul(x, W1.transpose(1, 2)) + b1.unsqueeze(1)  # (K, B, H)
    a, da_dz = act(z)
    if noise is not None:
        a = a + noise  # (K, 1, H): one draw per hidden unit, shared over the batch
    logits = torch.matmul(a, W2.transpose(1, 2)) + b2.unsqueeze(1)  # (K, B, O)
    logp = torch.log_softmax(logits, -1)
    onehot = F.one_hot(y, logits.shape[-1]).to(logits.dtype)  # (B, O)
    loss = -(logp * onehot).sum(-1).mean(-1)  # (K,)
    d = (logp.exp() - onehot) / len(y)  # dloss/dlogits (K, B, O)
    dz = torch.matmul(d, W2) * da_dz  # (K, B, H)
    grads = [dz.transpose(1, 2) @ x, dz.sum(1), d.transpose(1, 2) @ a, d.sum(1)]  # x (B, D) broadcasts over K
    return loss, grads


def accuracy(params: Params, x: Tensor, y: Tensor, act: Activation, chunk: int = 1000) -> Tensor:
    """Accuracy (a fraction, as the lab's curves) of each of the K models, no hidden noise, in chunks of rows."""
    with torch.no_grad():
        hits = sum((forward(params, x[i:i + chunk], act).argmax(-1) == y[i:i + chunk]).sum(-1)
                   for i in range(0, len(y), chunk))
    return hits.to(torch.float64) / len(y)


def sgd_unroll(params: Params, lr: Tensor, x: Tensor, y: Tensor, steps: int, batch_size: int,
               act: Activation) -> tuple[Tensor, Params]:
    """Plain SGD with per-model rates lr (K,), `steps` sequential batches (the original's fixed order);
    returns the inner losses (steps, K) and the final parameters. Differentiable in lr and params.
    Parameters with K = 1 are shared by all len(lr) models (broadcast)."""
    params = [p.expand(len(lr), *p.shape[1:]) for p in params]
    losses = []
    for _, rows in zip(range(steps), batches(len(x), batch_size, "sequential"), strict=False):
        loss, grads = loss_and_grads(params, x[rows], y[rows], act)
        params = [p - lr.view(-1, *([1] * (p.dim() - 1))) * g for p, g in zip(params, grads, strict=True)]
        losses.append(loss)
    return torch.stack(losses), params


def lr_hypergrad(params0: Params, lr: Tensor, x: Tensor, y: Tensor, steps: int, batch_size: int,
                 act: Activation) -> tuple[Tensor, Tensor]:
    """(meta-objective (K,), its exact derivative with respect to each rate (K,)): the meta-objective is
    the mean of the `steps` inner losses, differentiated by reverse mode through the whole unroll."""
    lr = lr.detach().requires_grad_(True)
    with torch.enable_grad():
        losses, _ = sgd_unroll(params0, lr, x, y, steps, batch_size, act)
        meta = losses.mean(0)
        (grad,) = torch.autograd.grad(meta.sum(), lr)  # the K trials are independent: one backward
    return meta.detach(), grad


def lr_landscape(params0: Params, rates: Tensor, x: Tensor, y: Tensor, steps: int, batch_size: int,
                 act: Activation) -> Tensor:
    """The meta-objective at each fixed rate (R,), by brute force: R inner runs side by side, no gradient."""
    with torch.no_grad():
        losses, _ = sgd_unroll(params0, rates, x, y, steps, batch_size, act)
    return losses.mean(0)


def knobs(node) -> dict:
    """An experiment's `metalearn` node as a plain dict, with `scales[scale]` merged over it.

    `scale` is `${oc.select:scale_name,full}` in the experiment files: the choice of `scale=smoke|quick`
    when conf/scale/*.yaml names itself (`scale_name`), `full` otherwise; `metalearn.scale=quick` works too.
    """
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    scales, scale = plain.pop("scales", None) or {}, plain.pop("scale", "full") or "full"
    if scale != "full" and scale not in scales:
        raise ConfigError("metalearn.scale", scale, f"full or one of {sorted(scales)}")
    return _merge(plain, scales.get(scale) or {}) | {"scale": scale}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def positive_int(k: dict, *names: str) -> None:
    """Raise ConfigError unless every named knob is a positive integer."""
    for name in names:
        v = k[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"metalearn.{name}", v, "a positive integer")


def figure_bytes(fig, fmt: str, dpi: int = 200) -> bytes:
    """A matplotlib figure rendered to PNG or PDF bytes under the lab's style (for ctx.save_artifact)."""
    import io

    from .plots import style

    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()
