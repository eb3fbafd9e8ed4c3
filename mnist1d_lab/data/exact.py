"""The exact generator: the original mnist1d.make_dataset, replayed draw for draw but vectorised.

Random draws come from a private np.random.RandomState(seed) (the same stream as the original's
np.random.seed) in the original's order, class by class and example by example:
    rand (pad), rand (scale), choice(max_translation) (shift), randn(L) (corr noise), randn(L) (iid noise),
    rand (shear); then permutation(N) for the examples and, if shuffle_seq, permutation(final_seq_length).
The expensive parts of the original (an interp1d and a gaussian_filter per example) are done once for
the whole batch: the dilated templates take one of only 10 x (high - low + 1) shapes, so they are a
lookup table built with np.interp itself; the filter runs along axis 1 of the (N, L) noise; the final
subsampling is np.interp's formula with precomputed indices. The result is bit-identical to the
original run with the same numpy and scipy (tests allow 1e-12).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .config import DEFAULTS, GENERATOR_KNOBS, knobs, validate

EPS = 1e-8        # added to the templates so that their zero end points count as signal, as in the original
CORR_SIGMA = 2.0  # std (in samples) of the Gaussian filter that correlates the noise


def gaussian_filter1d(x: np.ndarray, sigma: float, axis: int = -1) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d, imported on first use: importing scipy.ndimage takes 0.2-0.3 s of
    every process's start-up, and a run that reads its dataset from the cache never filters anything."""
    from scipy.ndimage import gaussian_filter1d as scipy_filter

    return scipy_filter(x, sigma, axis=axis)


# Ten hand-drawn 12-point strokes, digits 0..9 (the original's data).
_TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


class ObjectView:
    """Attribute access to a knob dict, as the original's ObjectView: `args.seed is args.__dict__['seed']`."""

    def __init__(self, d: dict):
        self.__dict__ = d

    def __repr__(self) -> str:
        return f"ObjectView({self.__dict__!r})"


def get_dataset_args(as_dict: bool = False) -> dict | ObjectView:
    """The paper's knobs with the original names (drop-in for mnist1d.data.get_dataset_args)."""
    d = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items() if k in GENERATOR_KNOBS}
    d["url"] = "https://github.com/greydanus/mnist1d/raw/master/mnist1d_data.pkl"  # kept for compatibility only
    return d if as_dict else ObjectView(d)


def get_templates() -> dict[str, np.ndarray]:
    """The ten templates, standardised per digit, starting and ending at 0, divided by 6 (x, t, y)."""
    x = _TEMPLATES.copy()
    x -= x.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    n = x.shape[1]
    return {"x": x / 6.0, "t": np.linspace(-5, 5, n) / 6.0, "y": np.arange(10)}


def interp_rows(y: np.ndarray, n_out: int) -> np.ndarray:
    """np.interp of every row of `y` (on linspace(0, 1, n_in)) at linspace(0, 1, n_out), bit for bit."""
    n_in = y.shape[-1]
    if n_in == 1:
        return np.repeat(y[..., :1], n_out, axis=-1)
    xp, xq = np.linspace(0, 1, n_in), np.linspace(0, 1, n_out)
    j = np.searchsorted(xp, xq, side="right") - 1      # xp[j] <= xq < xp[j + 1]
    hit = (j >= n_in - 1) | (xp[np.minimum(j, n_in - 1)] == xq)  # np.interp returns y[j] itself here
    j0 = np.minimum(j, n_in - 2)
    # same operations, in the same order, as numpy's C loop: slope * (x - xp[j]) + y[j]
    slope = (y[..., j0 + 1] - y[..., j0]) / (xp[j0 + 1] - xp[j0])
    out = slope * (xq - xp[j0]) + y[..., j0]
    return np.where(hit, y[..., np.minimum(j, n_in - 1)], out)


def dilated_table(templates_x: np.ndarray, padding: list[int], length: int) -> np.ndarray:
    """(10, high - low + 1, length): template + EPS, padded with p zeros, interpolated to `length` points."""
    low, high = padding
    m = templates_x.shape[1]
    table = np.empty((len(templates_x), high - low + 1, length))
    new = np.linspace(0, 1, length)
    for i, p in enumerate(range(low, high + 1)):
        old = np.linspace(0, 1, m + p)
        for c, tx in enumerate(templates_x):
            table[c, i] = np.interp(new, old, np.concatenate([tx + EPS, np.zeros(p)]))
    return table


def _bounded_int(rs: np.random.RandomState, high: int):
    """A function returning rs.randint(0, high), consuming the stream exactly like it, but ~8x cheaper."""
    rng, bg = high - 1, getattr(rs, "_bit_generator", None)
    if bg is None or not 0 < rng < 0xFFFFFFFF:
        return lambda: rs.randint(0, high)  # rng = 0 draws nothing (the original's max_translation=1)
    mask = (1 << rng.bit_length()) - 1

    def draw() -> int:
        # numpy's legacy bounded ints: masked rejection sampling on 32-bit MT19937 outputs
        while True:
            v = int(bg.random_raw()) & mask
            if v <= rng:
                return v
    return draw


def replay_draws(rs: np.random.RandomState, n: int, max_translation: int, length: int):
    """The per-example draws, in the original's order: u (n, 3) = pad/scale/shear, k (n,), g (n, 2*length)."""
    shift = _bounded_int(rs, max_translation)  # == choice(max_translation): same path, same stream
    normal, uniform, m = rs.standard_normal, rs.random_sample, 2 * length
    # stream order of the uniforms is pad_0, scale_0, shear_0, pad_1, ... so the rand calls merge into 3s;
    # the two randn(length) calls (corr, then iid noise) equal one randn(2 * length) call
    us, ks, gs = [uniform(2)], [], []
    for i in range(n):
        ks.append(shift())
        gs.append(normal(m))
        us.append(uniform(3 if i + 1 < n else 1))
    return np.concatenate(us).reshape(n, 3), np.array(ks, dtype=np.int64), np.stack(gs)


def roll_rows(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Circular right shift of each row by k[i], with the original's quirk: k = 0 or k >= length leave it."""
    length = x.shape[1]
    k = np.where(k < length, k, 0)
    idx = (np.arange(length) - k[:, None]) % length
    return np.take_along_axis(x, idx, axis=1)


def make_dataset(args: Mapping | Any | None = None, template: dict | None = None) -> dict[str, Any]:
    """The original mnist1d.data.make_dataset's data for the generator knobs of `args`, without touching
    global RNG state (the public drop-in, with the lab's variants, is api.make_dataset)."""
    a = knobs(args)
    validate({k: v for k, v in a.items() if k in DEFAULTS})  # extra attributes are ignored, as by the original
    templates = get_templates() if template is None else template
    low, high = a["padding"]
    length = a["template_len"] + high  # samples after dilation (72 by default)
    n_cls = len(templates["y"])
    per_class = a["num_samples"] // n_cls
    n = per_class * n_cls

    rs = np.random.RandomState(a["seed"])
    u, k, g = replay_draws(rs, n, a["max_translation"], length)
    labels = np.repeat(np.asarray(templates["y"]), per_class)  # class by class, as drawn

    # pad + dilate: a lookup into the (class, p) table
    p_idx = (u[:, 0] * (high - low + 1)).astype(np.int64)  # p - low = int(u * (high - low + 1))
    cls = np.repeat(np.arange(n_cls), per_class)
    x = dilated_table(np.asarray(templates["x"]), a["padding"], length)[cls, p_idx]
    x *= (1 + a["scale_coeff"] * (u[:, 1] - 0.5))[:, None]                    # scale
    x = roll_rows(x, k)                                                       # translate
    corr = gaussian_filter1d(a["corr_noise_scale"] * g[:, :length], CORR_SIGMA, axis=1)
    x = np.where(x != 0, x, corr)                                             # corr noise fills exact zeros
    x = x + a["iid_noise_scale"] * g[:, length:]                              # iid noise
    coeff = a["shear_scale"] * (u[:, 2] - 0.5)
    x = x - coeff[:, None] * np.linspace(-0.5, 0.5, length)                   # shear
    x = interp_rows(x, a["final_seq_length"])                                 # subsample
    t = np.interp(np.linspace(0, 1, a["final_seq_length"]), np.linspace(0, 1, length),
                  np.interp(np.linspace(0, 1, length), np.linspace(0, 1, len(templates["t"])), templates["t"]))

    perm = rs.permutation(n)
    xs, ys = x[perm], labels[perm]
    if a["shuffle_seq"]:
        xs = xs[..., rs.permutation(a["final_seq_length"])]
    std = xs.std()
    t = t / std
    xs = (xs - xs.mean()) / std
    split = int(n * a["train_split"])
    return {"x": xs[:split], "x_test": xs[split:], "y": ys[:split], "y_test": ys[split:],
            "t": t, "templates": templates}


def seq_permutation(args: Mapping | Any | None = None) -> np.ndarray:
    """The spatial permutation the original draws for these knobs (shuffle_seq=True), without making data."""
    a = knobs(args)
    n = a["num_samples"] // 10 * 10
    rs = np.random.RandomState(a["seed"])
    replay_draws(rs, n, a["max_translation"], a["template_len"] + a["padding"][1])
    rs.permutation(n)
    return rs.permutation(a["final_seq_length"])
