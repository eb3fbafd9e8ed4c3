"""MNIST from files the user already has (nothing is downloaded): IDX files or an .npz.

Accepted `path`s:
- a folder holding the IDX files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte` and, optionally,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each may end in `.gz`; `-idx3-ubyte` may be
  written `.idx3-ubyte`), as distributed by LeCun et al.;
- an .npz with x_train, y_train, x_test, y_test (keras' mnist.npz; x_test/y_test optional).
`load_mnist` returns train and test rows together (70,000 for full MNIST), flattened to (n, 784) pixels.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .errors import ConfigError

# IDX type codes (third byte of the magic number) -> numpy big-endian dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAMES = {("train", "images"): ("train-images", "idx3"), ("train", "labels"): ("train-labels", "idx1"),
              ("test", "images"): ("t10k-images", "idx3"), ("test", "labels"): ("t10k-labels", "idx1")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (gzip-compressed when it ends in .gz) as an array of its shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConfigError("tsne.mnist_path", str(path), "an IDX file (magic 0x00 0x00 <type> <ndim>)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ConfigError("tsne.mnist_path", str(path), f"an IDX file whose data fills its shape {shape}")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, split: str, kind: str) -> Path | None:
    """The IDX file of one split and kind in folder (plain or .gz, `-idx3-ubyte` or `.idx3-ubyte`), or None."""
    stem, idx = _IDX_NAMES[(split, kind)]
    for name in (f"{stem}-{idx}-ubyte", f"{stem}.{idx}-ubyte"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _from_idx(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    parts = []
    for split in ("train", "test"):
        images, labels = _idx_file(folder, split, "images"), _idx_file(folder, split, "labels")
        if images is None and labels is None and split == "test":
            continue  # the test files are optional
        if images is None or labels is None:
            raise ConfigError("tsne.mnist_path", str(folder),
                              f"a folder with {_IDX_NAMES[(split, 'images')][0]}-idx3-ubyte[.gz] and "
                              f"{_IDX_NAMES[(split, 'labels')][0]}-idx1-ubyte[.gz]")
        parts.append((read_idx(images), read_idx(labels)))
    return parts


def _from_npz(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        if "x_train" not in z.files or "y_train" not in z.files:
            raise ConfigError("tsne.mnist_path", str(path), f"an .npz with x_train, y_train (x_test, y_test); "
                                                            f"it holds {sorted(z.files)}")
        parts = [(z["x_train"], z["y_train"])]
        if "x_test" in z.files and "y_test" in z.files:
            parts.append((z["x_test"], z["y_test"]))
    return parts


def load_mnist(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, pixels) float32 in [0, 1] for uint8 images, y (n,) int64): train rows, then test rows."""
    path = Path(str(path)).expanduser()
    if path.is_dir():
        parts = _from_idx(path)
    elif path.is_file() and path.suffix == ".npz":
        parts = _from_npz(path)
    else:
        raise ConfigError("tsne.mnist_path", str(path),
                          "a folder of MNIST IDX files (train-images-idx3-ubyte[.gz], ...) or an .npz with "
                          "x_train, y_train, x_test, y_test")
    xs, ys = [], []
    for x, y in parts:
        if len(x) != len(y):
            raise ConfigError("tsne.mnist_path", str(path), f"as many labels as images ({len(y)} != {len(x)})")
        scale = 255.0 if x.dtype == np.uint8 else 1.0
        xs.append(x.reshape(len(x), -1).astype(np.float32) / scale)
        ys.append(np.asarray(y).astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)
