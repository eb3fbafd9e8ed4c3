"""The fast generator: the same distribution as the exact one, with numpy's modern Generator, vectorised.

For big-data studies (1,000,000 examples in a few seconds). It is NOT the original's random stream.
Everything after the random (padding p, shift k) choice is linear in Gaussian noise, so an example is
    out = scale * (signal[c, p, k] @ S) - shear * (ramp @ S) + z @ B[mask(c, p, k)],   z ~ N(0, I_F)
where S (L, F) is the linear subsampling, and B is the square root of the output-space covariance of
the noise: corr_noise_scale^2 (G D S)^T (G D S) + iid_noise_scale^2 S^T S, with G the Gaussian filter
('reflect', sigma 2) as a matrix and D = diag(mask), the mask being the exact zeros of the signal
(where the original puts correlated noise). This is the original's distribution exactly (in float32),
but needs F normals per example instead of 2 L. Steps:
  1. per class, multinomial counts of examples over the (p, k) cells (= i.i.d. p and k, then shuffled);
  2. rows sorted by mask group; groups split into NUM_BLOCKS fixed blocks, each with its own child of
     SeedSequence(seed), run on threads: the output depends on the knobs only, not on the thread count;
  3. one shuffle of the examples, then the original's normalisation (global mean and std, train + test).
The mask is taken before scaling (the same unless a scale factor is exactly 0). If the (class, p, k)
table would be huge (extreme knobs), a per-example path in fixed chunks is used instead.
With shuffle_seq, the spatial permutation is drawn from default_rng([seed, 1]) (the exact generator
uses the original's draw instead).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .exact import CORR_SIGMA, dilated_table, gaussian_filter1d, get_templates, interp_rows, roll_rows

NUM_BLOCKS = 16        # blocks of mask groups (one child seed each): part of the generator's definition
CHUNK = 1 << 15        # per-example path: examples per chunk (one child seed each)
TABLE_LIMIT = 1 << 25  # floats: above this the (class, p, k) table is not built (per-example path)


def _openblas_libs() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries loaded in this process (Linux), for setting their thread count."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line}
        return [ctypes.CDLL(p) for p in sorted(paths) if os.path.isfile(p)]
    except OSError:
        return []


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run BLAS single-threaded inside (restored after): our own threads already use the cores, and
    OpenBLAS's threads on these small matrices only spin against them (3x slower on a busy 2-core box)."""
    undo = []
    for lib in _openblas_libs():
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                old = get()
                put(1)
                undo.append((put, old))
                break
    try:
        yield
    finally:
        for put, old in undo:
            put(old)


def _sqrtm(cov: np.ndarray) -> np.ndarray:
    """B with B^T B = cov for a batch of PSD matrices (z @ B then has covariance cov)."""
    try:  # Cholesky: cov = L L^T, so B = L^T (batched LAPACK, fast)
        return np.swapaxes(np.linalg.cholesky(cov), -1, -2)
    except np.linalg.LinAlgError:  # singular (e.g. zero iid noise): symmetric square root instead
        w, v = np.linalg.eigh(cov)
        return (v * np.sqrt(np.clip(w, 0, None))[..., None, :]) @ np.swapaxes(v, -1, -2)


def _shift_probs(max_translation: int, length: int) -> np.ndarray:
    """P(effective shift = k), k < min(max_translation, L): shifts >= L act as 0 (the original's quirk)."""
    probs = np.full(min(max_translation, length), 1 / max_translation)
    probs[0] += (max_translation - len(probs)) / max_translation
    return probs


def _group_ids(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows of a bool matrix and each row's index among them (np.unique(axis=0) is slow)."""
    ids: dict[bytes, int] = {}
    group = np.array([ids.setdefault(row.tobytes(), len(ids)) for row in np.packbits(masks, axis=1)])
    first = np.unique(group, return_index=True)[1]
    return masks[first], group


def _by_cells(a: dict, table: np.ndarray, per_class: int, root: np.random.SeedSequence,
              workers: int, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, F) float32, y (n,)) via the (class, p, k) cells; the i-th made example goes to row perm[i]."""
    n_cls, n_pad, length = table.shape
    probs_k = _shift_probs(a["max_translation"], length)
    n_k = len(probs_k)
    rows = roll_rows(np.repeat(table.reshape(-1, length), n_k, axis=0),
                     np.tile(np.arange(n_k), n_cls * n_pad))  # (C*P*K, L), cell order (c, p, k)
    sub = interp_rows(np.eye(length), a["final_seq_length"])  # subsample(v) = v @ sub
    signal = (rows @ sub).astype(np.float32)
    ramp = (np.linspace(-0.5, 0.5, length) @ sub).astype(np.float32)
    masks, group = _group_ids(rows == 0)
    filt = gaussian_filter1d(np.eye(length), CORR_SIGMA, axis=1)  # filter(v) = v @ filt
    # (G, L, F): white noise -> filtered, masked, subsampled (one BLAS call for all groups)
    a_m = ((filt[None] * masks[:, None, :]).reshape(-1, length) @ sub).reshape(len(masks), length, -1)
    cov = (a["corr_noise_scale"] ** 2 * np.einsum("gij,gik->gjk", a_m, a_m)
           + a["iid_noise_scale"] ** 2 * (sub.T @ sub)[None])
    root_b = _sqrtm(cov).astype(np.float32)

    count_seed, *block_seeds = root.spawn(1 + NUM_BLOCKS)
    cell_p = np.outer(np.full(n_pad, 1 / n_pad), probs_k).ravel()
    counts = np.random.default_rng(count_seed).multinomial(per_class, cell_p, size=n_cls).ravel()
    order = np.argsort(group, kind="stable")
    idx = np.repeat(order, counts[order])  # example -> cell, sorted by mask group
    offsets = np.concatenate([[0], np.cumsum(np.bincount(group, weights=counts, minlength=len(masks)))]).astype(int)
    x = np.empty((len(idx), a["final_seq_length"]), dtype=np.float32)
    y = np.empty(len(idx), dtype=np.int64)
    blocks = np.array_split(np.arange(len(masks)), NUM_BLOCKS)

    def work(b: int) -> None:
        gs = blocks[b]
        if len(gs) == 0:
            return
        lo, hi = offsets[gs[0]], offsets[gs[-1] + 1]
        rng = np.random.default_rng(block_seeds[b])
        scale = 1 + np.float32(a["scale_coeff"]) * (rng.random(hi - lo, dtype=np.float32) - np.float32(0.5))
        shear = np.float32(a["shear_scale"]) * (rng.random(hi - lo, dtype=np.float32) - np.float32(0.5))
        z = rng.standard_normal((hi - lo, x.shape[1]), dtype=np.float32)
        out = signal[idx[lo:hi]]
        out *= scale[:, None]
        out -= shear[:, None] * ramp
        for g in gs:
            s0, s1 = offsets[g] - lo, offsets[g + 1] - lo
            out[s0:s1] += z[s0:s1] @ root_b[g]
        x[perm[lo:hi]] = out  # scatter into the shuffled order (done here, in parallel)
        y[perm[lo:hi]] = idx[lo:hi] // (n_pad * n_k)

    with single_blas_thread(), ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL in the heavy parts
        list(pool.map(work, range(NUM_BLOCKS)))
    return x, y


def _by_examples(a: dict, table: np.ndarray, per_class: int, root: np.random.SeedSequence,
                 workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in class order, example by example in chunks (for knobs with huge cell tables)."""
    n_cls, n_pad, length = table.shape
    n, final = per_class * n_cls, a["final_seq_length"]
    sub = interp_rows(np.eye(length), final).astype(np.float32)
    filt = gaussian_filter1d(np.eye(length), CORR_SIGMA, axis=1).astype(np.float32)
    ramp = np.linspace(-0.5, 0.5, length, dtype=np.float32) @ sub
    cls = np.repeat(np.arange(n_cls), per_class)
    x = np.empty((n, final), dtype=np.float32)
    seeds = root.spawn(-(-n // CHUNK))

    def work(i: int) -> None:
        rng, sl = np.random.default_rng(seeds[i]), slice(i * CHUNK, min(n, (i + 1) * CHUNK))
        m = len(cls[sl])
        p = rng.integers(0, n_pad, m)
        k = rng.integers(0, a["max_translation"], m)
        v = roll_rows(table.reshape(-1, length)[cls[sl] * n_pad + p], k).astype(np.float32)
        v *= 1 + np.float32(a["scale_coeff"]) * (rng.random((m, 1), dtype=np.float32) - np.float32(0.5))
        z = rng.standard_normal((2, m, length), dtype=np.float32)
        corr = (np.float32(a["corr_noise_scale"]) * z[0]) @ filt
        v = np.where(v != 0, v, corr) + np.float32(a["iid_noise_scale"]) * z[1]
        shear = np.float32(a["shear_scale"]) * (rng.random((m, 1), dtype=np.float32) - np.float32(0.5))
        x[sl] = v @ sub - shear * ramp

    with single_blas_thread(), ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(len(seeds))))
    return x, cls


def make_fast(a: dict[str, Any], workers: int | None = None) -> dict[str, Any]:
    """The fast dataset for the knob dict `a` (original key names; x float32)."""
    templates = get_templates()
    length, final = a["template_len"] + a["padding"][1], a["final_seq_length"]
    per_class = a["num_samples"] // 10
    table = dilated_table(templates["x"], a["padding"], length)
    workers = workers or min(2, os.cpu_count() or 1)
    shuffle_seed, root = np.random.SeedSequence(a["seed"]).spawn(2)
    perm = np.random.default_rng(shuffle_seed).permutation(per_class * 10)
    if table.size * min(a["max_translation"], length) <= TABLE_LIMIT:
        xs, ys = _by_cells(a, table, per_class, root, workers, perm)
    else:
        x, y = _by_examples(a, table, per_class, root, workers)
        xs, ys = x[perm], y[perm]
    if a["shuffle_seq"]:
        xs = xs[:, np.random.default_rng([a["seed"], 1]).permutation(final)]
    # global mean and (population) std, accumulated per row in float32 and across rows in float64
    size = xs.size
    mean = xs.sum(1).sum(dtype=np.float64) / size
    std = np.sqrt(max(np.einsum("ij,ij->i", xs, xs).sum(dtype=np.float64) / size - mean**2, 0.0))
    xs -= np.float32(mean)
    xs /= np.float32(std)
    t = np.interp(np.linspace(0, 1, final), np.linspace(0, 1, length),
                  np.interp(np.linspace(0, 1, length), np.linspace(0, 1, len(templates["t"])), templates["t"]))
    split = int(len(ys) * a["train_split"])
    return {"x": xs[:split], "x_test": xs[split:], "y": ys[:split], "y_test": ys[split:],
            "t": t / std, "templates": templates}
