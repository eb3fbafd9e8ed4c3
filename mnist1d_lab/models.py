"""Model families of the paper: logistic, MLP, CNN and GRU, with width/depth/activation knobs.

Defaults reproduce the original `notebooks/models.py` exactly (parameter counts 410, 15,210, 5,210,
5,134). Every model maps (B, L) float inputs to (B, 10) logits. Initialisation is PyTorch's default,
drawn under `seed` inside a forked (saved and restored) global RNG, so building a model leaves the
caller's RNG state as it was (`build_model`).
"""

from __future__ import annotations

import difflib
import inspect
import threading
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


def _learned(path: str | None) -> nn.Module:
    """The metalearned activation stored at `path` (artifact activation.pt of experiment=metalearn_activation)."""
    from .learned_activation import LearnedActivation

    return LearnedActivation.load(path)


# name -> constructor; `learned` takes model.activation_path (the others take nothing)
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU, "silu": nn.SiLU,
               "softplus": nn.Softplus, "sigmoid": nn.Sigmoid, "learned": _learned}


def _activation(name: str, path: str | None = None) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError("model.activation", name, f"one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](path) if name == "learned" else ACTIVATIONS[name]()


class Logistic(nn.Module):
    """Multinomial logistic regression: one linear layer."""

    def __init__(self, input_len: int = 40, num_classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(input_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MLP(nn.Module):
    """`depth` hidden layers of `width` units; with `residual`, layers 2.. compute h + act(W h).

    The paper's MLP is depth=2, residual=True (40-100-100-10, 15,210 parameters); the double-descent
    MLP is depth=2, residual=False (40-h-h-10, h^2 + 52h + 10 parameters).
    """

    def __init__(self, width: int = 100, depth: int = 2, residual: bool = True, activation: str = "relu",
                 activation_path: str | None = None, input_len: int = 40, num_classes: int = 10):
        super().__init__()
        self.residual = residual
        sizes = [input_len] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.act = _activation(activation, activation_path)  # activation_path: only for activation=learned
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.hidden[0](x))
        for layer in self.hidden[1:]:
            h = h + self.act(layer(h)) if self.residual else self.act(layer(h))
        return self.out(h)


def conv_out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a 1-D convolution."""
    return (length + 2 * padding - kernel) // stride + 1


POOLS = ("none", "max", "avg", "l2")  # model.pool: after each conv's activation, kernel = stride = pool_size


def pool1d(h: torch.Tensor, pool: str, size: int) -> torch.Tensor:
    """(B, C, L) -> (B, C, L // size): the original pooling notebook's max, average or L2 pooling, the
    same numbers as F.max_pool1d, F.avg_pool1d and F.lp_pool1d(h, 2, size) (l2: the square root of each
    window's sum of squares), forward and gradient (tests compare them bit for bit and to 1e-12).

    avg and l2 are WindowPool: on a CPU F.avg_pool1d took 1.8 ms and F.lp_pool1d 3.1 ms for 1,024 x 20 x 40
    activations, WindowPool 0.2 and 0.5 ms (any layout: the training paths pool channels-last views).
    """
    if pool == "max":
        return F.max_pool1d(h, size)
    if pool in ("avg", "l2"):
        return WindowPool.apply(h, pool, size)
    return h


def pool_grad(h: torch.Tensor, out: torch.Tensor, g: torch.Tensor, pool: str, size: int) -> torch.Tensor:
    """The gradient of out = pool1d(h, pool, size) (avg or l2) for upstream g, laid out like h (a
    channels-last view gets a channels-last gradient), as aten's pooling computes it: avg g / size to each
    position; l2 g * h / out, 0 for an all-zero window (aten's lp_pool1d gives 0 there too). Positions past
    the last whole window get 0."""
    grad = torch.zeros_like(h)
    span = h.shape[-1] // size * size
    if pool == "avg":
        share = g / size
    else:
        nonzero = out.sign()  # out >= 0
        share = g * nonzero / (out + (1 - nonzero))  # g / out, 0 where the window is all zeros
    for j in range(size):
        slot = grad[..., j:span:size]
        if pool == "avg":
            slot.copy_(share)
        else:
            torch.mul(h[..., j:span:size], share, out=slot)
    return grad


def _max_then_relu(h: torch.Tensor, size: int) -> torch.Tensor:
    """F.max_pool1d(relu(h), size) without a gradient, the same numbers: the window maximum of strided
    slices, then ReLU on the pooled values only (ReLU is monotone): 13 % off a max-pooled CNN's evaluation."""
    span = h.shape[-1] // size * size
    out = h[..., 0:span:size]
    for j in range(1, size):
        out = torch.maximum(out, h[..., j:span:size])
    return out.relu_() if size > 1 else out.relu()


class WindowPool(torch.autograd.Function):
    """avg or l2 pooling over windows of `size` positions (the last axis) as sums of strided slices.

    avg: the window's sum / size (aten's order of operations). l2: aten's formula (mean of squares x
    size) ** 0.5, the square root taken away from zeros: torch's CPU sqrt runs ~10x slower on inputs mixed
    with zeros (ReLU'd windows), so a zero sum is rooted as 1 and zeroed after. Backward: pool_grad.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, pool: str, size: int) -> torch.Tensor:
        span = h.shape[-1] // size * size
        parts = [h[..., j:span:size] for j in range(size)]
        if pool == "l2":
            parts = [part * part for part in parts]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        if pool == "avg":
            out = total / size
        else:
            total = total / size * size  # lp_pool1d's rounding (the identity when size is a power of 2)
            nonzero = total.sign()  # 1 or 0: sums of squares are >= 0
            out = (total + (1 - nonzero)).sqrt_().mul_(nonzero)
        ctx.pool, ctx.size = pool, size
        ctx.save_for_backward(h, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        h, out = ctx.saved_tensors
        return pool_grad(h, out, g, ctx.pool, ctx.size), None, None


class CNN(nn.Module):
    """`depth` Conv1d layers of `channels` channels (kernel 5 then 3s, stride 2, padding 1), then linear.

    With the defaults the lengths go 40 -> 19 -> 10 -> 5 and the head sees 5 * 25 = 125 features.
    `pool` (none | max | avg | l2) pools each conv's activations over windows of `pool_size` (conv ->
    act -> pool, as the original benchmark-pooling notebook's ConvPooling); `model=cnn_pool` is that model.
    """

    def __init__(self, channels: int = 25, depth: int = 3, kernel_sizes: list[int] | None = None,
                 stride: int = 2, padding: int = 1, activation: str = "relu", pool: str = "none",
                 pool_size: int = 2, activation_path: str | None = None, input_len: int = 40,
                 num_classes: int = 10):
        super().__init__()
        kernel_sizes = list(kernel_sizes or [5] + [3] * (depth - 1))
        if len(kernel_sizes) != depth:
            raise ConfigError("model.kernel_sizes", kernel_sizes, f"a list of length model.depth={depth}")
        if pool not in POOLS:
            raise ConfigError("model.pool", pool, f"one of {list(POOLS)}")
        self.pool, self.pool_size = pool, pool_size
        layers, length, c_in = [], input_len, 1
        for k in kernel_sizes:
            layers.append(nn.Conv1d(c_in, channels, k, stride=stride, padding=padding))
            length, c_in = conv_out_len(length, k, stride, padding), channels
            if pool != "none":
                length //= pool_size
        if length < 1:
            raise ConfigError("model.depth", depth, f"few enough layers to keep length >= 1 (input {input_len})")
        self.convs = nn.ModuleList(layers)
        self.act = _activation(activation, activation_path)  # activation_path: only for activation=learned
        self.out = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # evaluation on thousands of rows: oneDNN's conv is faster there
            h = x.unsqueeze(1)  # (B, 1, L)
            for conv in self.convs:
                h = conv(h)
                if self.pool == "max" and isinstance(self.act, nn.ReLU):
                    h = _max_then_relu(h, self.pool_size)
                else:
                    h = pool1d(self.act(h), self.pool, self.pool_size)
            return self.out(h.flatten(1))  # (B, C * L_out) -> (B, 10)
        # Training: each conv as im2col + ONE matmul, channels last, with the Conv1d modules' own
        # parameters. oneDNN runs these tiny 1-D convs at ~15 GFLOP/s; this step is ~1.3x faster and
        # equal to nn.Conv1d up to float rounding (~3e-8 in float32). docs/training.md has the numbers.
        h = x.unsqueeze(-1)  # (B, L, 1): channels last
        for conv in self.convs:
            k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            patches = Im2col.apply(h, k, stride, pad)  # (B, L_out, k, C_in)
            B, L_out = patches.shape[:2]
            w = conv.weight.permute(0, 2, 1).reshape(conv.out_channels, -1).t()  # (k * C_in, C_out)
            h = self.act(torch.addmm(conv.bias, patches.reshape(B * L_out, -1), w)).view(B, L_out, -1)
            if self.pool != "none":  # pool over positions: (B, L_out, C) -> (B, L_out // size, C)
                h = pool1d(h.transpose(1, 2), self.pool, self.pool_size).transpose(1, 2)
        return self.out(h.transpose(1, 2).flatten(1))  # original (B, C, L_out) flatten -> (B, 10)


def im2col(h: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """(..., L, C) channels last -> zero-padded sliding windows (..., L_out, k, C), contiguous: pad + one
    copy of the unfold view ((k, C) order copies 3x faster than (C, k))."""
    return F.pad(h, (0, 0, pad, pad)).unfold(-2, k, stride).transpose(-1, -2).contiguous()


def col2im(g: torch.Tensor, length: int, k: int, stride: int, pad: int) -> torch.Tensor:
    """Backward of im2col: windows' gradients g (..., L_out, k, C) -> (..., length, C), adding the k
    strided slices back (autograd's unfold_backward took ~0.9 ms of a ~4 ms CNN step here)."""
    L_out = g.shape[-3]
    span = stride * (L_out - 1) + 1
    grad = g.new_zeros(*g.shape[:-3], length + 2 * pad, g.shape[-1])
    for j in range(k):
        grad[..., j:j + span:stride, :] += g[..., j, :]
    return grad[..., pad:pad + length, :]


class Im2col(torch.autograd.Function):
    """im2col with col2im as its backward. Used by the CNN here and by the stacked CNN (batched_models)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
        ctx.args = (h.shape[-2], k, stride, pad)
        return im2col(h, k, stride, pad)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return col2im(g, *ctx.args), None, None, None


class GRU(nn.Module):
    """(Bi)directional GRU over the sequence (one input feature), all outputs flattened, then linear."""

    def __init__(self, hidden_size: int = 6, num_layers: int = 1, bidirectional: bool = True,
                 input_len: int = 40, num_classes: int = 10):
        super().__init__()
        self.gru = nn.GRU(1, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=bidirectional)
        directions = 2 if bidirectional else 1
        self.out = nn.Linear(input_len * hidden_size * directions, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x.unsqueeze(-1))  # (B, L, D * H), h0 = 0
        return self.out(h.flatten(1))


MODELS: dict[str, type[nn.Module]] = {"logistic": Logistic, "mlp": MLP, "cnn": CNN, "gru": GRU}

# Knobs that must be positive integers, per model (checked before any work).
_POSITIVE_INT = {"mlp": ("width", "depth"), "cnn": ("channels", "depth", "stride", "pool_size"),
                 "gru": ("hidden_size", "num_layers")}


def model_kwargs(cfg: Mapping) -> dict:
    """Validate a `model` config subtree and return the constructor's keyword arguments."""
    name = cfg.get("name")
    if name not in MODELS:
        raise ConfigError("model.name", name, f"one of {sorted(MODELS)}")
    kwargs = {k: v for k, v in dict(cfg).items() if k != "name"}
    knobs = model_knobs(name)
    for key in kwargs:
        if key not in knobs:
            near = difflib.get_close_matches(str(key), list(knobs), n=1)
            raise ConfigError(f"model.{key}", kwargs[key], f"not a knob of model.name={name}"
                              f"{f' (did you mean model.{near[0]}?)' if near else ''}; knobs: {sorted(knobs)}")
    if name == "cnn":  # pool keys live in conf/model/cnn_pool.yaml only: model=cnn's config (and run key) lacks them
        kwargs = {"pool": "none", "pool_size": 2, **kwargs}
        if kwargs["pool"] not in POOLS:
            raise ConfigError("model.pool", kwargs["pool"], f"one of {list(POOLS)}")
    for key in _POSITIVE_INT.get(name, ()):
        if key in kwargs and (isinstance(kwargs[key], bool) or not isinstance(kwargs[key], int) or kwargs[key] < 1):
            raise ConfigError(f"model.{key}", kwargs[key], "a positive integer")
    if "kernel_sizes" in kwargs and kwargs["kernel_sizes"] is not None:
        kwargs["kernel_sizes"] = list(kwargs["kernel_sizes"])
    _check_values(name, {**knobs, **kwargs})
    return kwargs


def model_knobs(name: str) -> dict:
    """The knobs of model family `name` with their defaults: its constructor's arguments (the sizes of
    input and output aside)."""
    params = inspect.signature(MODELS[name]).parameters
    return {k: p.default for k, p in params.items() if k not in ("input_len", "num_classes")}


def _check_values(name: str, knobs: dict, input_len: int = 40) -> None:
    """The checks a constructor would otherwise fail on mid-run, made before any work (ConfigError)."""
    if "activation" in knobs and knobs["activation"] not in ACTIVATIONS:
        raise ConfigError("model.activation", knobs["activation"], f"one of {sorted(ACTIVATIONS)}")
    if knobs.get("activation") == "learned":
        path = knobs.get("activation_path")
        if not path or not Path(str(path)).expanduser().is_file():
            raise ConfigError("model.activation_path", path, "the activation.pt file that experiment="
                              "metalearn_activation writes (an existing file)")
    for key in ("residual", "bidirectional"):
        if key in knobs and not isinstance(knobs[key], bool):
            raise ConfigError(f"model.{key}", knobs[key], "true or false")
    if name != "cnn":
        return
    pad, depth, kernels = knobs["padding"], knobs["depth"], knobs["kernel_sizes"]
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ConfigError("model.padding", pad, "an integer >= 0")
    if kernels is not None and (not isinstance(kernels, list | tuple) or len(kernels) != depth or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in kernels)):
        raise ConfigError("model.kernel_sizes", kernels, f"null or a list of model.depth={depth} positive integers")
    length = input_len
    for k in kernels or [5] + [3] * (depth - 1):
        length = conv_out_len(length, k, knobs["stride"], pad)
        if knobs.get("pool", "none") != "none":
            length //= knobs["pool_size"]
        if length < 1:
            raise ConfigError("model.depth", depth, f"layers that keep the length >= 1 (input {input_len}; "
                              f"kernel_sizes {kernels}, stride {knobs['stride']}, padding {pad})")


_BUILD_LOCK = threading.Lock()  # the global RNG is process-wide: one seeded build at a time


def build_model(cfg: Mapping, seed: int, input_len: int = 40, num_classes: int = 10) -> nn.Module:
    """Build the model named by `cfg.name` with PyTorch's default init drawn under `seed`.

    The global CPU RNG (the one init draws from: models are built on the CPU) is forked, seeded and
    restored, so the caller's RNG state is untouched and the same (cfg, seed) always gives the same
    weights, whatever ran before, and a lock keeps builds in other threads (batched parts trained side by
    side) from drawing in between. Only the CPU generator is seeded: torch.manual_seed would also queue
    a lazy seed for every accelerator backend, recording a stack trace each time (0.4 of 1.0 ms a build).
    """
    kwargs = model_kwargs(cfg)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return MODELS[cfg["name"]](**kwargs, input_len=input_len, num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
