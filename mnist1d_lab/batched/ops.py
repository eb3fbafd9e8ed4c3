"""The training step of K stacked members by hand: forward and backward without autograd's engine.

`models.StackedModel.hand_grads` uses these on CPU: for the output layer and loss of every
stack, and for all layers of ReLU MLPs and ReLU CNNs (the paper's models). A stacked step of small
models on a CPU spends much of its time around the matrix products (docs/batched.md),
and autograd's graph of the same maths spends some of it in avoidable places:

* the loss works on (K, B, C) logits, whose reductions over the C = 10 classes run as short inner loops
  (a logsumexp over 16 x 100 x 10 logits took 80-135 us, an exp of the same 28 us). `head_loss_*` form
  the logits with the classes as the *outer* axis, (K, C, B): max and sum over classes are elementwise
  operations over B-long rows, and the gradient (softmax - onehot) comes out in the layout the head's
  products want, so no transpose is copied;
* each residual layer's input gradient is a bmm plus a separate add (here one `baddbmm`);
* every node passes through the engine (Function objects, saved-variable checks, gradient
  accumulation): ~0.4 ms of a 16-member MLP step of ~3.5 ms, measured with the same hand-written maths
  run inside and outside autograd.Function.

The gradients equal autograd's up to summation order (tests compare them in float64). Other
activations' layers, and CUDA (where the update is replayed as a CUDA graph), stay with autograd.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import models as plain
from ..errors import ConfigError
from ..protocol import LOSSES


def member_losses(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K, B, C) logits, (K, B) labels -> (K, B) per-example losses (protocol.loss_fn before its mean).

    Evaluation and the autograd path use it; head_loss_forward is the same maths by hand.
    """
    if name == "cross_entropy":
        return torch.logsumexp(logits, -1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if name == "mse":
        onehot = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        return (logits - onehot).square().sum(-1)
    raise ConfigError("train.loss", name, f"one of {list(LOSSES)}")


class StackedHead(torch.autograd.Function):
    """The output layer of K members: h (K, B, F) @ w (K, C, F)^T + b (K, C) -> logits (K, B, C).

    Every product is laid out with the C = 10 classes as the short *row* count, never as the column
    count: MKL's batched gemm with 10 output columns ran at ~6 GFLOP/s on a 2-core CPU (32 x (100x100 @ 100x10)
    took 1.09 ms, as long as 32 x (100x100 @ 100x100)), the same product as (10 x 100) @ (100 x 100)
    0.24 ms. So logits = (w @ h^T)^T, dw = g^T @ h, dh = g @ w (contiguous, as the ReLU backward after
    it wants; autograd's own backward of that forward hands it a transposed gradient, which made the
    ReLU backward 3x slower). A K=32 MLP forward + backward on 1 thread, old and new interleaved in one
    process: 9.9-12.9 ms -> 9.1-10.3 ms; bench_batched's 32 MLPs 3.2 s -> 2.5 and 3.0 s (docs/batched.md).
    The backward is made of differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2)).transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        h, w = ctx.saved_tensors
        dh = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(g.transpose(1, 2).contiguous(), h) if ctx.needs_input_grad[1] else None
        return dh, dw, g.sum(1) if ctx.needs_input_grad[2] else None


def head_loss_forward(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor, loss: str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Output layer and loss of K members: h (K, B, F), w (K, C, F), b (K, C), labels y (K, B) ->
    ((K, B) per-example losses, saved state for head_loss_backward), equal to
    member_losses(loss, StackedHead.apply(h, w, b), y).

    Logits zt = w @ h^T + b, (K, C, B). cross_entropy: with m the max over classes and e = exp(zt - m),
    loss = log(sum_c e) - (zt_y - m); saved: softmax e / sum_c e. mse: loss = sum_c (zt - onehot)^2;
    saved: zt - onehot.
    """
    zt = torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2))
    idx = y.unsqueeze(1)  # (K, 1, B)
    if loss == "cross_entropy":
        zt.sub_(zt.amax(1, keepdim=True))
        picked = zt.gather(1, idx)  # (K, 1, B), shifted like zt
        e = zt.exp_()
        total = e.sum(1, keepdim=True)
        return (total.log() - picked).squeeze(1), e.div_(total)
    if loss == "mse":
        zt.scatter_add_(1, idx, torch.ones_like(idx, dtype=zt.dtype).neg_())  # zt - onehot
        return zt.square().sum(1), zt
    raise ConfigError("train.loss", loss, f"one of {list(LOSSES)}")


def head_loss_backward(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, loss: str, saved: torch.Tensor,
                       g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dw, db) for upstream gradients g of the per-example losses, (K, B) or broadcastable (K, 1).

    dzt = (softmax - onehot) * g (cross_entropy) or 2 (zt - onehot) * g (mse), (K, C, B); then
    dh = dzt^T @ w, dw = dzt @ h, db = sum over B: the classes stay the short row count (StackedHead).
    Consumes `saved` (written in place).
    """
    if loss == "cross_entropy":
        saved.scatter_add_(1, y.unsqueeze(1), torch.ones_like(y.unsqueeze(1), dtype=saved.dtype).neg_())
        dz = saved.mul_(g.unsqueeze(1))
    else:
        dz = saved.mul_((2 * g).unsqueeze(1))
    return torch.bmm(dz.transpose(1, 2), w), torch.bmm(dz, h), dz.sum(2)


def relu_mlp_forward(x: torch.Tensor, residual: bool, w0: torch.Tensor, b0: torch.Tensor,
                     wb: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Hidden layers of K ReLU MLPs in StackedModel's layouts (w0 (L, K, P), hidden w (K, P, P) [in, out],
    biases (K, P); wb = [w1, b1, w2, b2, ...]): x (B, L) shared or (K, B, L) -> (h (K, B, P), saved).

    h0 = relu(x w0 + b0); r_i = relu(h_{i-1} w_i + b_i); h_i = h_{i-1} + r_i (residual) or r_i.
    saved = [h0, r_1, h_1, r_2, h_2, ...] (h_i is r_i when not residual).
    """
    K = w0.shape[1]
    h = torch.baddbmm(b0.unsqueeze(1), x.expand(K, -1, -1) if x.dim() == 2 else x, w0.permute(1, 0, 2)).relu_()
    saved = [h]
    for w, b in zip(wb[::2], wb[1::2], strict=True):
        r = torch.baddbmm(b.unsqueeze(1), h, w).relu_()
        h = h + r if residual else r
        saved += [r, h]
    return h, saved


def relu_mlp_backward(x: torch.Tensor, residual: bool, w0: torch.Tensor, wb: Sequence[torch.Tensor],
                      saved: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
    """Gradients [dw0, db0, dw1, db1, ...] of relu_mlp_forward's parameters for g = dL/dh (K, B, P).

    Layer i: da_i = g * [r_i > 0] (threshold_backward, as autograd's ReLU, from the saved output);
    dw_i = h_{i-1}^T da_i; db_i = sum_B da_i; dL/dh_{i-1} = da_i w_i^T (+ g if residual, one baddbmm).
    """
    grads: list = [None] * len(wb)
    for i in reversed(range(len(wb) // 2)):
        r, h_in, w = saved[2 * i + 1], saved[2 * i], wb[2 * i]  # saved[2i] is h_{i-1} (h0 for i = 0)
        da = torch.ops.aten.threshold_backward(g, r, 0)
        grads[2 * i], grads[2 * i + 1] = torch.bmm(h_in.transpose(1, 2), da), da.sum(1)
        g = torch.baddbmm(g, da, w.transpose(1, 2)) if residual else torch.bmm(da, w.transpose(1, 2))
    da0 = torch.ops.aten.threshold_backward(g, saved[0], 0)
    xe = x.expand(w0.shape[1], -1, -1) if x.dim() == 2 else x
    dw0 = torch.bmm(xe.transpose(1, 2), da0).permute(1, 0, 2).contiguous()  # (K, L, P) -> w0's (L, K, P)
    return [dw0, da0.sum(1), *grads]


def relu_cnn_forward(x: torch.Tensor, conv_args: Sequence[tuple[int, int]], cw: Sequence[torch.Tensor],
                     cb: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list]:
    """Convolutions of K ReLU CNNs in StackedModel's layouts (channels last; first conv w (k0, K, P), later
    w (K, k, P_in, P), biases (K, P)): x (B, L) shared or (K, B, L) -> (features (K, B, L_last * P), saved).

    As StackedModel._features_cnn: conv = im2col patches @ w + b, then ReLU. saved = per conv
    (patches as a matrix, ReLU output), the first conv's patches (B*L1, k0) or (K, B*L1, k0).
    """
    (stride, pad), k0 = conv_args[0], cw[0].shape[0]
    K, P = cw[0].shape[1:]
    patches = F.pad(x, (pad, pad)).unfold(-1, k0, stride)  # (B, L1, k0) or (K, B, L1, k0)
    B, L1 = patches.shape[-3:-1]
    if x.dim() == 2:  # every member's first conv is one (B*L1, k0) @ (k0, K*P) mm
        pm = patches.reshape(B * L1, k0)
        h = torch.addmm(cb[0].view(-1), pm, cw[0].view(k0, K * P)).relu_().view(B, L1, K, P).permute(2, 0, 1, 3)
    else:
        pm = patches.reshape(K, B * L1, k0)
        h = torch.baddbmm(cb[0].unsqueeze(1), pm, cw[0].permute(1, 0, 2)).relu_().view(K, B, L1, P)
    saved = [(pm, h)]
    for (stride, pad), w, b in zip(conv_args[1:], cw[1:], cb[1:], strict=True):
        ks = w.shape[1]
        pm = plain.im2col(h, ks, stride, pad)  # (K, B, L_out, ks, P)
        L_out = pm.shape[2]
        pm = pm.view(K, B * L_out, ks * P)
        h = torch.baddbmm(b.unsqueeze(1), pm, w.view(K, ks * P, P)).relu_().view(K, B, L_out, P)
        saved.append((pm, h))
    return h.reshape(K, B, -1), saved


def relu_cnn_backward(x: torch.Tensor, conv_args: Sequence[tuple[int, int]], cw: Sequence[torch.Tensor],
                      saved: list, g: torch.Tensor) -> list[torch.Tensor]:
    """Gradients [dw0, ..., dw_last, db0, ..., db_last] of relu_cnn_forward's parameters for g = dL/dfeatures.

    Conv i: da = g * [h_i > 0]; dw_i = patches^T da; db_i = sum da; dL/dpatches = da w_i^T, folded back
    onto the input positions by col2im (the first conv's input is data: no gradient).
    """
    K, P = cw[0].shape[1:]
    dws, dbs = [None] * len(cw), [None] * len(cw)
    g = g.view(saved[-1][1].shape)  # (K, B, L_last, P)
    for i in reversed(range(1, len(cw))):
        (pm, h), (stride, pad), w = saved[i], conv_args[i], cw[i]
        ks = w.shape[1]
        da = torch.ops.aten.threshold_backward(g, h, 0).reshape(K, -1, P)  # (K, B*L_out, P)
        dws[i], dbs[i] = torch.bmm(pm.transpose(1, 2), da).view(w.shape), da.sum(1)
        dpatches = torch.bmm(da, w.view(K, ks * P, P).transpose(1, 2)).view(*h.shape[:3], ks, P)
        g = plain.col2im(dpatches, saved[i - 1][1].shape[2], ks, stride, pad)  # (K, B, L_in, P)
    pm, h = saved[0]
    da = torch.ops.aten.threshold_backward(g, h, 0)  # (K, B, L1, P)
    if x.dim() == 2:  # patches (B*L1, k0): dw0 = pm^T @ da as (B*L1, K*P)
        dws[0] = torch.mm(pm.t(), da.permute(1, 2, 0, 3).reshape(pm.shape[0], K * P)).view(cw[0].shape)
    else:
        dws[0] = torch.bmm(pm.transpose(1, 2), da.reshape(K, -1, P)).permute(1, 0, 2).contiguous()
    dbs[0] = da.sum((1, 2))
    return dws + dbs
