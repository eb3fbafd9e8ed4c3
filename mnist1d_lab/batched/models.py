"""K models of one family as stacked, zero-padded parameters (logistic, MLP, CNN), and what they implement.

Member k of a `StackedModel` is exactly the plain model `mnist1d_lab.models.build_model(cfgs[k],
seeds[k])`: it is built that way, copied into the stacked tensors, and its weights are copied back out
into that model by `member_model(k)`.

Why zero padding is exact (members of different `width` / `channels`, padded to the largest, P):
  * A padded hidden unit j of member k has zero incoming weights and zero bias, so its pre-activation
    is exactly 0, and act(0) = 0 for every activation in `ACT_FNS` (relu, tanh, gelu, elu,
    silu). With a residual layer h + act(W h) it stays 0 as well. Its outgoing weights are zero too,
    so the member's logits are those of its own-width model (adding exact zeros changes no sum).
  * Gradients: d(outgoing weight of j) = h_j * delta = 0; the back-propagated signal into j is
    (outgoing weights of j) . delta = 0, so d(incoming weight of j) = d(bias of j) = act'(0) * 0 = 0.
  * Optimisers are elementwise: with g = 0 and p = 0, Adam keeps m = v = 0 and moves p by
    0 / (sqrt(0) + eps) = 0; L2 weight decay adds wd * p = 0; SGD momentum buffers stay 0. So padded
    entries stay exactly zero forever and the real entries follow their own model's trajectory.
  * Members never mix: every layer is block-diagonal over members (bmm, or one mm whose
    output columns belong to one member each), and the loss is the SUM of members' mean losses, so each
    member receives exactly its own gradient (a mean would scale it by 1/K).
  This holds up to floating-point summation order (bmm vs addmm): equal to ~1e-15 in float64; in
  float32 trajectories drift apart chaotically after ~100 Adam steps, as they do between thread counts.
  * Pooling (CNN `pool` max / avg / l2, after each conv's activation, as the plain model) acts per
    member and channel: a padded channel's window is all zeros, pooled to exactly 0, and its gradient
    is 0 (l2's square root at 0 is guarded by a ReLU whose backward passes nothing at 0, as in plain).
  No masks are needed in the forward pass; `padding_masks()` exists for tests and weight decay checks.
  MODEL_KEYS lists the model knobs and values StackedModel implements (activations with act(0) = 0
  only); `can_batch` refuses the rest, which a stack would otherwise silently ignore.

Layouts (K members, P = padded width or channels, L = input length, C = classes):
  logistic / first MLP layer: w (L, K, P), used as bmm with w.permute(1, 0, 2) on a per-member
      batch (K, B, L) or a shared batch (B, L) broadcast to (K, B, L) without a copy.
  MLP hidden layers: w (K, P, P) [in, out]; head w (K, C, P) [out, in], applied by StackedHead.
  CNN (as unfold + matmul, activations channels-last (K, B, L_i, P)): first conv w (k, K, P), one
      (B*L1, k) @ (k, K*P) mm on a shared input; later convs w (K, k, P_in, P) as bmm over patches
      (K, B*L_out, k*P_in); head w (K, C, L_out*P) with features in (l, c) order (StackedHead).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import models as plain
from . import ops
from .ops import StackedHead

FAMILIES = ("logistic", "mlp", "cnn")  # the families StackedModel stacks (aten's GRU has no stacked form)
WIDTH_KEY = {"mlp": "width", "cnn": "channels"}  # the one knob members may differ in (besides seed)
# A member's width when its config leaves it unset: the plain constructor's default (MLP 100, CNN 25).
WIDTH_DEFAULT = {name: inspect.signature(plain.MODELS[name]).parameters[key].default for name, key in WIDTH_KEY.items()}
# The activations StackedModel implements, all with act(0) = 0 (so zero padding is exact; softplus or
# sigmoid would make a padded unit's output nonzero).
ACT_FNS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu, "elu": F.elu, "silu": F.silu}
_ANY = None
# Per family, every model knob StackedModel implements and the values it implements (_ANY: whatever the
# plain model accepts). A knob not listed (a new one), or another value, is not stacked: can_batch says
# why, and the job trains one at a time instead of having the knob silently ignored.
MODEL_KEYS: dict[str, dict[str, tuple | None]] = {
    "logistic": {"name": _ANY},
    "mlp": {"name": _ANY, "width": _ANY, "depth": _ANY, "residual": _ANY, "activation": tuple(ACT_FNS)},
    "cnn": {"name": _ANY, "channels": _ANY, "depth": _ANY, "kernel_sizes": _ANY, "stride": _ANY, "padding": _ANY,
            "activation": tuple(ACT_FNS), "pool": plain.POOLS, "pool_size": _ANY},
}


def unsupported(cfg: Mapping) -> str | None:
    """Why StackedModel cannot stack a member of model config `cfg` (a knob or value outside MODEL_KEYS),
    or None if it can."""
    name = cfg.get("name")
    if name not in MODEL_KEYS:
        return f"model {name!r} is not batched (batchable: {list(FAMILIES)}); run it one at a time"
    allowed = MODEL_KEYS[name]
    for key, value in cfg.items():
        if key not in allowed:
            return f"model.{key} is not implemented by the stacked {name} (stacked knobs: {sorted(allowed)})"
        if allowed[key] is not _ANY and value not in allowed[key]:
            return f"model.{key}={value!r} is not implemented by the stacked {name} (one of {list(allowed[key])})"
    return None


def member_width(cfg: Mapping) -> int:
    """A member's width (MLP units / CNN channels) with the model's default if unset; 0 for logistic."""
    name = cfg["name"]
    if name not in WIDTH_KEY:
        return 0
    return int(cfg.get(WIDTH_KEY[name]) or WIDTH_DEFAULT[name])


class StackedModel(nn.Module):
    """K members of one family (logistic, mlp, cnn) as stacked, zero-padded parameters."""

    hand_backward = True  # hand_grads on CPU (ops.py); False: every step through autograd (tests, A/B)

    def __init__(self, cfgs: Sequence[Mapping], seeds: Sequence[int], input_len: int = 40,
                 num_classes: int = 10, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.name = cfgs[0]["name"]
        if self.name not in FAMILIES:
            raise ValueError(f"model {self.name!r} cannot be stacked; batchable: {FAMILIES}")
        self.cfgs, self.seeds = [dict(c) for c in cfgs], list(seeds)
        self.K, self.L, self.C = len(cfgs), input_len, num_classes
        self.widths = [member_width(c) for c in cfgs]
        self.P = max(self.widths) if self.name != "logistic" else num_classes
        small = [plain.build_model(c, s, input_len, num_classes) for c, s in zip(cfgs, seeds, strict=True)]
        self.act = ACT_FNS[small[0].act.__class__.__name__.lower()] if hasattr(small[0], "act") else None
        self.pool, self.pool_size = getattr(small[0], "pool", "none"), getattr(small[0], "pool_size", 2)  # CNNs pool
        kw = {"dtype": dtype, "device": device}
        K, P, L, C = self.K, self.P, self.L, self.C

        def zeros(*shape):
            return nn.Parameter(torch.zeros(*shape, **kw))

        if self.name in ("logistic", "mlp"):
            self.w0, self.b0 = zeros(L, K, P), zeros(K, P)
        if self.name == "mlp":
            self.residual = bool(small[0].residual)
            depth = len(small[0].hidden)
            self.ws = nn.ParameterList(zeros(K, P, P) for _ in range(depth - 1))
            self.bs = nn.ParameterList(zeros(K, P) for _ in range(depth - 1))
            self.wo, self.bo = zeros(K, C, P), zeros(K, C)
        if self.name == "cnn":
            convs = small[0].convs
            self.conv_args = [(c.stride[0], c.padding[0]) for c in convs]
            self.cw = nn.ParameterList(zeros(c.kernel_size[0], K, P) if i == 0 else zeros(K, c.kernel_size[0], P, P)
                                       for i, c in enumerate(convs))
            self.cb = nn.ParameterList(zeros(K, P) for _ in convs)
            self.l_out = small[0].out.in_features // self.widths[0]
            self.wo, self.bo = zeros(K, C, self.l_out * P), zeros(K, C)
        with torch.no_grad():
            for k, m in enumerate(small):
                self._copy(k, m, into_stack=True)
        self._members = small  # not submodules: member_model(k) refreshes one from the stack and returns it

    def _pairs(self, k: int, m: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(view into the stacked parameter, the small model's tensor in the same layout) for member k."""
        w, P, C = self.widths[k], self.P, self.C
        if self.name == "logistic":
            return [(self.w0[:, k], m.linear.weight.T), (self.b0[k], m.linear.bias)]
        if self.name == "mlp":
            out = [(self.w0[:, k, :w], m.hidden[0].weight.T), (self.b0[k, :w], m.hidden[0].bias)]
            for i, lin in enumerate(m.hidden[1:]):
                out += [(self.ws[i][k, :w, :w], lin.weight.T), (self.bs[i][k, :w], lin.bias)]
            return out + [(self.wo[k, :, :w], m.out.weight), (self.bo[k], m.out.bias)]
        out = []
        for i, conv in enumerate(m.convs):  # torch weight (c_out, c_in, k) -> ours (k, c_in, c_out)
            cw = self.cw[i][:, k, :w] if i == 0 else self.cw[i][k, :, :w, :w]
            wt = conv.weight[:, 0].T if i == 0 else conv.weight.permute(2, 1, 0)
            out += [(cw, wt), (self.cb[i][k, :w], conv.bias)]
        head = self.wo[k].view(C, self.l_out, P)[:, :, :w]  # our features are (l, c); torch flattens (c, l)
        return out + [(head, m.out.weight.view(C, w, self.l_out).transpose(1, 2)), (self.bo[k], m.out.bias)]

    def _copy(self, k: int, m: nn.Module, into_stack: bool) -> None:
        for stacked, small in self._pairs(k, m):
            (stacked if into_stack else small).copy_(small if into_stack else stacked)

    @torch.no_grad()
    def member_model(self, k: int) -> nn.Module:
        """Member k as an ordinary model of its own width holding the stack's current weights: the module
        built for it with the stack (same module on every call, same dtype and device as the stack)."""
        m, p0 = self._members[k], next(self.parameters())
        q = next(m.parameters())
        if (q.dtype, q.device) != (p0.dtype, p0.device):
            m = self._members[k] = m.to(dtype=p0.dtype, device=p0.device)
        self._copy(k, m, into_stack=False)
        return m

    def member_view(self, name: str, t: torch.Tensor, k: int) -> torch.Tensor:
        """Member k's block of `t`, a tensor shaped like parameter `name` (e.g. its Adam moment)."""
        return t[:, k] if name in ("w0", "cw.0") else t[k]

    @torch.no_grad()
    def padding_masks(self) -> dict[str, torch.Tensor]:
        """Per parameter name, a 0/1 tensor marking the entries that belong to a real member unit."""
        saved = [p.detach().clone() for p in self.parameters()]
        for p in self.parameters():
            p.zero_()
        for k in range(self.K):  # copy all-ones members into the zeroed stack (member_model refreshes
            m = self.member_model(k)  # its module from the stack on every call, so overwriting it is safe)
            for q in m.parameters():
                q.fill_(1)
            self._copy(k, m, into_stack=True)
        masks = {n: p.detach().clone() for n, p in self.named_parameters()}
        for p, s in zip(self.parameters(), saved, strict=True):
            p.copy_(s)
        return masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) shared or (K, B, L) per-member inputs -> (K, B, C) logits."""
        if self.name == "logistic":
            return self.features(x)
        return StackedHead.apply(self.features(x), self.wo, self.bo)

    def can_hand_step(self, x: torch.Tensor) -> bool:
        """Whether hand_grads applies: CPU (on CUDA the autograd update is replayed as a graph), not
        logistic, no pooling (ops.py has no pooling layer: a pooled CNN's step goes through autograd)."""
        return self.hand_backward and x.is_cpu and self.name != "logistic" and self.pool == "none"

    def hand_grads(self, x: torch.Tensor, y: torch.Tensor, loss: str, weight: torch.Tensor) -> torch.Tensor:
        """One training step's gradients without autograd where ops.py can: sets every parameter's
        .grad to d/dp sum_k weight_k * mean_B loss_k and returns the (K,) mean losses (no graph).

        Head and loss always by hand; the hidden layers of ReLU MLPs and CNNs too; other activations'
        layers by autograd (features, then backward of dL/dfeatures)."""
        with torch.no_grad():
            h, body_backward = self._hand_body(x)
            losses, state = ops.head_loss_forward(h, self.wo, self.bo, y, loss)
            dh, self.wo.grad, self.bo.grad = ops.head_loss_backward(
                h, self.wo, y, loss, state, (weight / y.shape[1]).unsqueeze(1))
            body_backward(dh)
        return losses.mean(-1)

    def _hand_body(self, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
        """(features of x, a function that sets the body's .grad from dL/dfeatures), for hand_grads."""
        if self.act is not torch.relu:
            with torch.enable_grad():
                h = self.features(x)
            return h.detach(), h.backward
        if self.name == "mlp":
            wb = [t for pair in zip(self.ws, self.bs, strict=True) for t in pair]
            h, saved = ops.relu_mlp_forward(x, self.residual, self.w0, self.b0, wb)
            params = [self.w0, self.b0, *wb]
            backward = functools.partial(ops.relu_mlp_backward, x, self.residual, self.w0, wb, saved)
        else:
            h, saved = ops.relu_cnn_forward(x, self.conv_args, self.cw, self.cb)
            params = [*self.cw, *self.cb]
            backward = functools.partial(ops.relu_cnn_backward, x, self.conv_args, self.cw, saved)

        def set_grads(dh: torch.Tensor) -> None:
            for p, g in zip(params, backward(dh), strict=True):
                p.grad = g

        return h, set_grads

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the output layer sees, (K, B, F) (for logistic: the logits). Evaluation and the autograd
        path use it; the CPU training step of ReLU MLPs and CNNs does the same maths in ops.py
        (hand_grads): a change here (masks applied in forward, say) must go there too, or set
        hand_backward = False for that model."""
        K = self.K
        shared = x.dim() == 2
        if self.name == "cnn":
            return self._features_cnn(x, shared)
        # (K, B, P), contiguous. A shared batch is broadcast, not copied: this bmm is as fast as one
        # (B, L) @ (L, K*P) mm, and its contiguous output saves a (K, B, P) transpose copy in backward
        # (8 % of the K=32 MLP step).
        h = torch.baddbmm(self.b0.unsqueeze(1), x.expand(K, -1, -1) if shared else x, self.w0.permute(1, 0, 2))
        if self.name == "logistic":
            return h
        h = self.act(h)
        for w, b in zip(self.ws, self.bs, strict=True):
            z = self.act(torch.baddbmm(b.unsqueeze(1), h, w))
            h = h + z if self.residual else z
        return h

    def _features_cnn(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        # Convolutions as patches + matmul, channels last: h (K, B, L_i, P). oneDNN's grouped conv
        # (groups=K) was no faster than K separate convs; patches + bmm is ~2x faster (2-core CPU).
        K, P = self.K, self.P
        (stride, pad), k0 = self.conv_args[0], self.cw[0].shape[0]
        patches = F.pad(x, (pad, pad)).unfold(-1, k0, stride)  # (B, L1, k0) or (K, B, L1, k0)
        if shared:  # every member's first conv is ONE (B*L1, k0) @ (k0, K*P) mm
            B, L1 = patches.shape[:2]
            h = torch.addmm(self.cb[0].view(-1), patches.reshape(B * L1, k0), self.cw[0].view(k0, K * P))
            h = h.view(B, L1, K, P).permute(2, 0, 1, 3)
        else:
            B, L1 = patches.shape[1:3]
            h = torch.baddbmm(self.cb[0].unsqueeze(1), patches.reshape(K, B * L1, k0), self.cw[0].permute(1, 0, 2))
            h = h.view(K, B, L1, P)
        h = self._pool(self.act(h))
        for (stride, pad), w, b in zip(self.conv_args[1:], self.cw[1:], self.cb[1:], strict=True):
            ks = w.shape[1]
            patches = plain.Im2col.apply(h, ks, stride, pad)  # (K, B, L_out, ks, P)
            L_out = patches.shape[2]
            h = torch.baddbmm(b.unsqueeze(1), patches.view(K, B * L_out, ks * P), w.view(K, ks * P, P))
            h = self._pool(self.act(h.view(K, B, L_out, P)))
        return h.reshape(K, B, -1)  # features (l, c)

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        """(K, B, L, P) channels last -> (K, B, L // pool_size, P): the plain model's own pool1d on the
        (K*B, P, L) view, so members pool exactly as their plain models do."""
        if self.pool == "none":
            return h
        K, B, L, P = h.shape
        pooled = plain.pool1d(h.reshape(K * B, L, P).transpose(1, 2), self.pool, self.pool_size)
        return pooled.transpose(1, 2).reshape(K, B, -1, P)


def stacked_num_params(name: str, width: int, depth: int, input_len: int = 40, num_classes: int = 10,
                       l_out: int = 5, kernels: Sequence[int] = (5, 3, 3)) -> int:
    """Parameters of one padded member (what a stack costs per member at padded width)."""
    if name == "logistic":
        return (input_len + 1) * num_classes
    if name == "mlp":
        return (input_len + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * num_classes
    cin = [1] + [width] * (len(kernels) - 1)
    return sum(c * width * k + width for c, k in zip(cin, kernels, strict=True)) + (width * l_out + 1) * num_classes
