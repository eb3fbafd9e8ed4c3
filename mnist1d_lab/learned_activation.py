"""A learned activation function (paper Figure 6): f(x) = base(x) + scale * g(x), with g an MLP
1-G (tanh)-1, meta-trained by exact gradients through an RMSprop inner loop.

As in the original notebook (the mnist1d repository's metalearn_activation_function notebook):
- the inner model is a 40-H-10 MLP whose hidden units get uniform noise U(-0.1, 0.1) after the
  activation, one draw per unit and step, shared over the batch; g gets the same trick on its own
  hidden units (which only shifts g by a constant per step, since its output layer is linear);
- the inner optimiser is an RMSprop variant: v <- mu v + (1 - mu) grad^2 (v0 = 1),
  theta <- theta - lr grad / (sqrt(v) + 1e-8);
- the meta-objective is the mean of the last `last` inner losses.
Unlike the notebook, the inner init and the noise are drawn from explicit generators (the same every outer
step, as the notebook's reseeding made them from its second outer step on).

Memory: backpropagating through 301 inner steps at once keeps every step's (B x H x G) tanh table, about
9 GB. `meta_gradient` keeps only the inner state at segment boundaries and replays one segment at a
time with its graph (exact, the inner loop is deterministic given its noise): peak memory is one
segment's graph, time is one extra forward pass.

`LearnedActivation` is the transferable module (models.py's `model.activation=learned`); `save` and
`load` move it through a small .pt file of g's weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .metalearn import Activation, Params, activation, linear_init, loss_and_grads, stream_generator

Phi = list[Tensor]  # g's weights: [w1 (G,), b1 (G,), w2 (G,), b2 ()]
FORMAT = "mnist1d_lab.learned_activation/1"  # the .pt file's format tag


@dataclass(frozen=True)
class InnerLoop:
    """The inner loop's protocol (the original's values by default)."""

    steps: int = 301        # inner updates
    batch_size: int = 100   # sequential batches, the original's fixed order
    lr: float = 0.01        # RMSprop step
    mu: float = 0.4         # v <- mu v + (1 - mu) grad^2
    eps: float = 1e-8
    noise: float = 0.1      # hidden noise U(-noise, noise) per unit and step, shared over the batch
    last: int = 200         # meta-objective: mean of the last `last` inner losses


def init_g(seed: int, hidden: int = 100, dtype: torch.dtype = torch.float32,
           device: str | torch.device = "cpu") -> Phi:
    """g's initial weights (torch.nn.Linear's default init, stream "meta_init" of seed)."""
    gen = stream_generator(seed, "meta_init")
    w1, b1 = linear_init(1, hidden, gen, dtype=dtype)
    w2, b2 = linear_init(hidden, 1, gen, dtype=dtype)
    return [t.reshape(s).to(device) for t, s in ((w1, (hidden,)), (b1, (hidden,)), (w2, (hidden,)), (b2, ()))]


def sigmoid_table(z: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """sigmoid(2 (z w1 + b1)) for every element of z and hidden unit: (z.numel(), G). tanh(u) = 2 sigmoid(2u) - 1
    is how g's tanh is computed: torch's CPU float32 tanh ran ~9x slower than its sigmoid here (8.5 vs
    1.0 ms for a 12,800 x 100 table)."""
    return torch.outer(z.reshape(-1), 2 * w1).add_(2 * b1).sigmoid_()  # outer + add: 4x a broadcast addcmul


class _G(torch.autograd.Function):
    """g without its output bias and its derivative, (g(z) - b2, g'(z)), with a hand-written backward.

    With u = z w1 + b1 (elements x G hidden units), tanh(u) = 2 s - 1 for s = sigmoid(2 u), and
    tanh'(u) = 4 q for q = s - s^2: g(z) - b2 = 2 s.w2 - sum(w2) and g'(z) = 4 q.(w1 w2). The table s is
    the only large tensor saved (autograd would keep three of that size per call); the backward rebuilds
    q and r = q s and reduces every gradient to products of those two tables with vectors: a handful of
    passes over the table, no (elements x G) temporary besides q and r. The backward is not itself
    differentiable (`once_differentiable`): the meta-gradient differentiates the unroll once.
    """

    @staticmethod
    def forward(ctx, z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
        s = sigmoid_table(z, w1, b1)  # (N, G)
        g = 2 * (s @ w2) - w2.sum()
        dg = 4 * (torch.addcmul(s, s, s, value=-1) @ (w1 * w2))
        ctx.save_for_backward(z, w1, w2, s)
        return g.view_as(z), dg.view_as(z)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_g: Tensor, grad_dg: Tensor):
        z, w1, w2, s = ctx.saved_tensors
        gg, gd, zf = grad_g.reshape(-1), grad_dg.reshape(-1), z.reshape(-1)
        c = w1 * w2
        q = torch.addcmul(s, s, s, value=-1)  # tanh'(u) / 4
        r = q * s
        # d(loss)/du_ij = 4 q_ij (gg_i w2_j + 2 gd_i c_j) - 16 r_ij gd_i c_j, then contracted with w1 (-> dz),
        # with ones (-> db1) and with z (-> dw1 through u)
        qa = q @ (w2 * w1), q @ (c * w1)  # matrix-vector products: 3x one (N, G) @ (G, 2) product on CPU
        qt = torch.stack([gg, gd, gg * zf, gd * zf]) @ q  # (4, G)
        rt = torch.stack([gd, gd * zf]) @ r  # (2, G)
        dz = 4 * gg * qa[0] + 8 * gd * qa[1] - 16 * gd * (r @ (c * w1))
        db1 = 4 * w2 * qt[0] + 8 * c * qt[1] - 16 * c * rt[0]
        dw1 = 4 * w2 * qt[2] + 8 * c * qt[3] - 16 * c * rt[1] + 4 * qt[1] * w2  # last: g' through c = w1 w2
        dw2 = 2 * (gg @ s) - gg.sum() + 4 * qt[1] * w1
        return dz.view_as(z), dw1, db1, dw2


def learned(phi: Phi, base: str = "elu", scale: float = 0.2, noise: Tensor | None = None) -> Activation:
    """f = base + scale * g as z -> (f(z), f'(z)); `noise` (K, G) is g's hidden noise for K models."""
    w1, b1, w2, b2 = phi
    base_fn = activation(base, "metalearn.base_activation")
    shift = b2 if noise is None else (b2 + noise @ w2).view(-1, 1, 1)  # noise after g's tanh: a constant

    def act(z: Tensor) -> tuple[Tensor, Tensor]:
        g, dg = _G.apply(z, w1, b1, w2)
        fb, dfb = base_fn(z)
        return fb + scale * (g + shift), dfb + scale * dg

    return act


def draw_noise(seeds: list[int], loop: InnerLoop, hidden: int, g_hidden: int,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """The hidden noise of every inner step for models of the given seeds (stream "hidden_noise"):
    classifier (steps, K, 1, H) and g (steps, K, G)."""
    c, g = [], []
    for seed in seeds:
        gen = stream_generator(seed, "hidden_noise")
        c.append((torch.rand(loop.steps, 1, hidden, generator=gen, dtype=torch.float64) * 2 - 1) * loop.noise)
        g.append((torch.rand(loop.steps, g_hidden, generator=gen, dtype=torch.float64) * 2 - 1) * loop.noise)
    return torch.stack(c, 1).to(device, dtype), torch.stack(g, 1).to(device, dtype)


def inner_segment(state: tuple[Params, Params], x: Tensor, y: Tensor, start: int, stop: int, loop: InnerLoop,
                  act_at: Callable[[int], Activation], noise_c: Tensor | None) -> tuple[tuple[Params, Params], Tensor]:
    """Inner steps start..stop-1 from state (params, v); returns the new state and the losses (stop-start, K).
    `act_at(step)` gives the step's activation; noise_c (steps, K, 1, H) or None (no hidden noise)."""
    params, v = state
    n, losses = len(x), []
    for s in range(start, stop):
        lo = (s * loop.batch_size) % n
        rows = slice(lo, min(lo + loop.batch_size, n))
        loss, grads = loss_and_grads(params, x[rows], y[rows], act_at(s), None if noise_c is None else noise_c[s])
        v = [loop.mu * vi + (1 - loop.mu) * g * g for vi, g in zip(v, grads, strict=True)]
        params = [p - loop.lr * g / (vi.sqrt() + loop.eps) for p, g, vi in zip(params, grads, v, strict=True)]
        losses.append(loss)
    return (params, v), torch.stack(losses)


def run_inner(params: Params, x: Tensor, y: Tensor, loop: InnerLoop, act_at: Callable[[int], Activation],
              noise_c: Tensor | None) -> tuple[Params, Tensor]:
    """The whole inner loop without gradients: (final params, losses (steps, K))."""
    with torch.no_grad():
        (params, _), losses = inner_segment((params, [torch.ones_like(p) for p in params]), x, y, 0, loop.steps,
                                            loop, act_at, noise_c)
    return params, losses


def meta_objective(losses: Tensor, loop: InnerLoop) -> Tensor:
    """Mean of the last `loop.last` inner losses (per model)."""
    return losses[-loop.last:].mean(0)


def meta_gradient(phi: Phi, params0: Params, x: Tensor, y: Tensor, loop: InnerLoop, noise_c: Tensor,
                  noise_g: Tensor, base: str = "elu", scale: float = 0.2,
                  segment: int = 25) -> tuple[Tensor, Phi, Tensor, Params]:
    """(meta-objective, its exact gradient with respect to phi, inner losses (steps,), final inner params)
    for one inner model (K = 1).

    Forward: the inner loop without a graph, keeping (params, v) every `segment` steps. Backward: segments
    from last to first, each replayed with its graph from its saved state and differentiated with the
    adjoints of its end state (reverse-mode checkpointing; the same gradient as one graph). With
    segment >= steps there is one segment and no graph-free forward pass: fastest, most memory.
    """
    weights = torch.zeros(loop.steps, dtype=x.dtype, device=x.device)
    weights[-loop.last:] = 1.0 / min(loop.last, loop.steps)  # d(meta-objective) / d(inner loss of each step)
    bounds = list(range(0, loop.steps, segment)) + [loop.steps]

    def act_at(phi_: Phi) -> Callable[[int], Activation]:
        return lambda s: learned(phi_, base, scale, noise_g[s])

    states = [(params0, [torch.ones_like(p) for p in params0])]
    with torch.no_grad():  # the start state of every segment but the first (the last one's end is not needed)
        for a, b in zip(bounds[:-2], bounds[1:-1], strict=True):
            states.append(inner_segment(states[-1], x, y, a, b, loop, act_at(phi), noise_c)[0])
    grad_phi = [torch.zeros_like(p) for p in phi]
    adjoint: list[Tensor] | None = None  # d(meta) / d(end state of the current segment), params then v
    losses, final = [], None
    for i in range(len(bounds) - 2, -1, -1):
        a, b = bounds[i], bounds[i + 1]
        leaves = [t.detach().requires_grad_(i > 0) for t in (*states[i][0], *states[i][1])]
        phi_ = [p.detach().requires_grad_(True) for p in phi]
        with torch.enable_grad():
            (params, v), seg_losses = inner_segment((leaves[:4], leaves[4:]), x, y, a, b, loop, act_at(phi_), noise_c)
            total = (seg_losses[:, 0] * weights[a:b]).sum()
            if adjoint is not None:
                total = total + sum((t * adj).sum() for t, adj in zip((*params, *v), adjoint, strict=True))
            inputs = phi_ + (leaves if i > 0 else [])
            grads = torch.autograd.grad(total, inputs, allow_unused=True)
        final = final if final is not None else [p.detach() for p in params]
        losses.insert(0, seg_losses.detach()[:, 0])
        grad_phi = [gp + (g if g is not None else 0) for gp, g in zip(grad_phi, grads[:4], strict=True)]
        adjoint = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads[4:], leaves, strict=False)]
    losses = torch.cat(losses)
    return meta_objective(losses[:, None], loop)[0], grad_phi, losses, final


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (a learned activation's run-key component: content, not path)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def state_dict(phi: Phi, base: str, scale: float) -> dict:
    """The transferable description of f = base + scale * g (what `save` writes)."""
    w1, b1, w2, b2 = (p.detach().cpu().to(torch.float32).clone() for p in phi)
    return {"format": FORMAT, "base": base, "scale": float(scale), "w1": w1, "b1": b1, "w2": w2, "b2": b2}


class LearnedActivation(nn.Module):
    """f(x) = base(x) + scale * (w2 . tanh(w1 x + b1) + b2), elementwise, with fixed (buffer) weights."""

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, base: str = "elu", scale: float = 0.2):
        super().__init__()
        self.base_name, self.scale = base, float(scale)
        self.base = activation(base, "model.activation_path")
        for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            self.register_buffer(name, torch.as_tensor(t, dtype=torch.float32).clone())

    def forward(self, x: Tensor) -> Tensor:
        g = (2 * (sigmoid_table(x, self.w1, self.b1) @ self.w2) - self.w2.sum()).view_as(x) + self.b2
        return self.base(x)[0] + self.scale * g

    @classmethod
    def load(cls, path: str | Path | None) -> LearnedActivation:
        """The activation saved at `path` by the metalearn_activation experiment (artifact activation.pt)."""
        if path is None or not Path(path).is_file():
            raise ConfigError("model.activation_path", path, "a learned activation file (activation.pt artifact "
                                                             "of experiment=metalearn_activation)")
        d = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError("model.activation_path", str(path), f"a file in format {FORMAT}")
        return cls(d["w1"], d["b1"], d["w2"], d["b2"], d["base"], d["scale"])
