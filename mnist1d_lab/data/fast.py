"""The fast generator: the same distribution as the exact one, with numpy's modern Generator, vectorised.

For big-data studies (1,000,000 examples in a few seconds). It is NOT the original's random stream:
examples are made in fixed-size chunks, each with its own child of SeedSequence(seed), so the output
depends only on the knobs (not on the thread count). Per chunk everything is a table lookup or a
small matrix product, in float32:
    base = dilated[class, p]            (the same (class, p) table as the exact generator)
    x = roll(base * scale, k); x[x == 0] = (corr_noise_scale * z1) @ G  (G = the Gaussian filter, 'reflect')
    out = (x + iid_noise_scale * z2) @ S - shear * (ramp @ S)           (S = linear subsampling L -> F)
Labels are balanced (num_samples // 10 per class) and shuffled; normalisation is the original's
(one global mean and std over train + test). With shuffle_seq, the spatial permutation is drawn from
default_rng([seed, 1]) (the exact generator uses the original's draw instead).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .exact import CORR_SIGMA, dilated_table, get_templates, interp_rows, roll_rows

CHUNK = 1 << 15       # examples per chunk (and per child seed): part of the generator's definition
EIG_CUTOFF = 1e-8     # corr noise: keep covariance components above this fraction of the largest
TABLE_LIMIT = 1 << 25  # floats: above this the (class, p, shift) table is not precomputed


@functools.lru_cache(maxsize=8)
def _noise_maps(length: int, final: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factors A (r, L), B (F, F) with z @ A ~ filtered white noise, z @ B ~ (white noise) @ S; and S (L, F)."""
    g = gaussian_filter1d(np.eye(length), CORR_SIGMA, axis=1)  # row i = filter of e_i: filter(v) = v @ g
    w, v = np.linalg.eigh(g.T @ g)
    keep = w > EIG_CUTOFF * w.max()  # the filter kills high frequencies: ~49 of 72 components remain
    a = np.sqrt(w[keep])[:, None] * v[:, keep].T
    s = interp_rows(np.eye(length), final)  # linear subsampling as a matrix: subsample(v) = v @ s
    w2, v2 = np.linalg.eigh(s.T @ s)
    b = (v2 * np.sqrt(np.clip(w2, 0, None))) @ v2.T  # symmetric square root of the covariance
    return a.astype(np.float32), b.astype(np.float32), s.astype(np.float32)


def _shifted_rows(table: np.ndarray, max_translation: int) -> tuple[np.ndarray, int]:
    """(10 * P * K, L) rows: every (class, p, shift) signal, and K; shifts >= L leave it in place (quirk)."""
    n_cls, n_pad, length = table.shape
    k = min(max_translation, length)
    rows = np.repeat(table.reshape(-1, length), k, axis=0)
    return roll_rows(rows, np.tile(np.arange(k), n_cls * n_pad)), k


def _chunk(seed_seq: np.random.SeedSequence, cls: np.ndarray, a: dict, table: np.ndarray,
           shifted: np.ndarray | None, n_shift: int, maps: tuple) -> np.ndarray:
    """(n, F) float32 examples of the given classes."""
    rng = np.random.default_rng(seed_seq)
    (n_cls, n_pad, length), n = table.shape, len(cls)
    corr_map, iid_map, sub = maps
    p_idx = rng.integers(0, n_pad, n)
    scale = 1 + np.float32(a["scale_coeff"]) * (rng.random(n, dtype=np.float32) - np.float32(0.5))
    k = rng.integers(0, a["max_translation"], n)
    k = np.where(k < length, k, 0)  # the original's quirk: shifts >= L leave the signal in place
    shear = np.float32(a["shear_scale"]) * (rng.random(n, dtype=np.float32) - np.float32(0.5))
    if shifted is not None:
        x = shifted[(cls * n_pad + p_idx) * n_shift + k]  # (n, L)
    else:
        x = roll_rows(table.reshape(n_cls * n_pad, length)[cls * n_pad + p_idx], k)
    x *= scale[:, None]
    # correlated noise replaces the exact zeros (the padding), as in the original
    corr = rng.standard_normal((n, len(corr_map)), dtype=np.float32) @ (np.float32(a["corr_noise_scale"]) * corr_map)
    corr *= x == 0
    x += corr
    out = x @ sub
    out += rng.standard_normal((n, len(iid_map)), dtype=np.float32) @ (np.float32(a["iid_noise_scale"]) * iid_map)
    out -= shear[:, None] * (np.linspace(-0.5, 0.5, length, dtype=np.float32) @ sub)
    return out


def make_fast(a: dict[str, Any], workers: int | None = None) -> dict[str, Any]:
    """The fast dataset for the knob dict `a` (original key names; x float32)."""
    templates = get_templates()
    low, high = a["padding"]
    length, final = a["template_len"] + high, a["final_seq_length"]
    per_class = a["num_samples"] // 10
    n = per_class * 10
    table = dilated_table(templates["x"], a["padding"], length).astype(np.float32)
    maps = _noise_maps(length, final)
    big = table.size * min(a["max_translation"], length) > TABLE_LIMIT
    shifted, n_shift = (None, 0) if big else _shifted_rows(table, a["max_translation"])

    root = np.random.SeedSequence(a["seed"])
    shuffle_seed, *chunk_seeds = root.spawn(1 + -(-n // CHUNK))
    cls = np.repeat(np.arange(10), per_class)
    x = np.empty((n, final), dtype=np.float32)

    def work(i: int) -> None:
        sl = slice(i * CHUNK, min(n, (i + 1) * CHUNK))
        x[sl] = _chunk(chunk_seeds[i], cls[sl], a, table, shifted, n_shift, maps)

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL in the heavy parts
        list(pool.map(work, range(len(chunk_seeds))))

    perm = np.random.default_rng(shuffle_seed).permutation(n)
    xs, ys = x[perm], cls[perm]
    if a["shuffle_seq"]:
        xs = xs[:, np.random.default_rng([a["seed"], 1]).permutation(final)]
    mean, std = xs.mean(dtype=np.float64), xs.std(dtype=np.float64)
    xs -= np.float32(mean)
    xs /= np.float32(std)
    t = np.interp(np.linspace(0, 1, final), np.linspace(0, 1, length),
                  np.interp(np.linspace(0, 1, length), np.linspace(0, 1, len(templates["t"])), templates["t"]))
    split = int(n * a["train_split"])
    return {"x": xs[:split], "x_test": xs[split:], "y": ys[:split], "y_test": ys[split:],
            "t": t / std, "templates": templates}
