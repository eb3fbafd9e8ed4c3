"""Files: the on-disk cache of generated datasets, original-format pickles, and .npz export.

Cache files are `<cache_dir>/mnist1d_<key>.npz`, key = hash of every knob + GENERATOR_VERSION. Each
file stores its key and a SHA-256 of its arrays; a file whose key, shapes or checksum do not match
(corrupt, truncated, foreign) is logged and regenerated, never used. Writes are atomic: a temp file
in the same folder, then os.replace, so parallel jobs never see a half-written file; a lock file beside
it (`.mnist1d_<key>.npz.lock`, the `filelock` library) makes jobs that need the same new dataset wait
for the one generating it instead of each generating it too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import cache_dir
from ..records import follow_umask
from .config import cache_key, split_rows

log = logging.getLogger(__name__)
ARRAYS = ("x", "y", "x_test", "y_test", "t")  # plus templates_x / templates_t / templates_y
LOCK_TIMEOUT_S = 600  # a job waits this long for another one generating the same dataset, then generates it too


def _flat(d: dict[str, Any]) -> dict[str, np.ndarray]:
    """Dataset dict -> flat dict of arrays (templates split into three)."""
    out = {k: np.ascontiguousarray(d[k]) for k in ARRAYS}
    for k, v in d.get("templates", {}).items():
        out[f"templates_{k}"] = np.asarray(v)
    return out


def _unflat(f: dict[str, np.ndarray]) -> dict[str, Any]:
    d = {k: f[k] for k in ARRAYS}
    d["templates"] = {k[len("templates_"):]: f[k] for k in f if k.startswith("templates_")}
    return d


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays, in sorted name order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _write_atomic(path: str | os.PathLike, write) -> Path:
    """Call write(file) on a temp file in path's folder, sync it, give it the umask's mode and rename it
    over path: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to `path` atomically (temp file in the same folder + os.replace)."""
    return _write_atomic(path, lambda f: np.savez(f, **arrays))


def cache_path(a: dict[str, Any]) -> Path:
    """Cache file of the knob dict `a`."""
    return cache_dir(a.get("cache_dir")) / f"mnist1d_{cache_key(a)}.npz"


def _expected_shapes(a: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    (split, test), f = split_rows(a), a["final_seq_length"]
    return {"x": (split, f), "y": (split,), "x_test": (test, f), "y_test": (test,), "t": (f,)}


def read_cache(path: Path, a: dict[str, Any]) -> dict[str, Any] | None:
    """The cached dataset if `path` holds exactly this key, shapes and checksum; else None (logged)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            f = {k: z[k] for k in z.files}
        meta_key, meta_sum = str(f.pop("cache_key")), str(f.pop("checksum"))
        if meta_key != cache_key(a):
            raise ValueError(f"stored key {meta_key} != {cache_key(a)}")
        for k, shape in _expected_shapes(a).items():
            if f[k].shape != shape:
                raise ValueError(f"{k} has shape {f[k].shape}, expected {shape}")
        if checksum(f) != meta_sum:
            raise ValueError("checksum mismatch")
    except Exception as e:  # any unreadable or inconsistent file is regenerated, never used
        log.warning("dataset cache %s is invalid (%s: %s); regenerating", path, type(e).__name__, e)
        return None
    return _unflat(f)


def cached(a: dict[str, Any], make: Callable[[dict[str, Any]], dict[str, Any]],
           refresh: bool = False) -> dict[str, Any]:
    """make(a), through the on-disk cache; `refresh` rebuilds and rewrites the cache file."""
    path = cache_path(a)
    d = None if refresh else read_cache(path, a)
    if d is not None:
        log.info("dataset loaded from cache %s", path)
        return d
    from filelock import FileLock, Timeout  # here, not at import: it registers exit handlers (asyncio)

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.with_name(f".{path.name}.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:  # parallel jobs needing the same new dataset: one generates it, the others wait and read
            d = None if refresh else read_cache(path, a)
            if d is not None:
                log.info("dataset loaded from cache %s (generated by another job)", path)
                return d
            return _make_and_write(a, make, path)
    except Timeout:
        log.warning("dataset cache %s: still locked after %d s; generating it here too", path, LOCK_TIMEOUT_S)
        return _make_and_write(a, make, path)


def _make_and_write(a: dict[str, Any], make: Callable[[dict[str, Any]], dict[str, Any]], path: Path) -> dict[str, Any]:
    d = make(a)
    f = _flat(d)
    write_npz(path, {**f, "cache_key": np.array(cache_key(a)), "checksum": np.array(checksum(f))})
    log.info("dataset cached at %s", path)
    return d


def load_frozen(path: str | os.PathLike) -> dict[str, Any]:
    """A dataset pickle in the original format (dict with x, y, x_test, y_test, t, templates)."""
    d = from_pickle(path)  # the 2020 pickle references numpy.core.numeric._frombuffer (deprecated on numpy 2)
    missing = [k for k in ARRAYS if not isinstance(d, dict) or k not in d]
    if missing:
        raise ValueError(f"{path}: not an MNIST-1D pickle, missing {missing}")
    return d


def to_pickle(thing: Any, path: str | os.PathLike) -> Path:
    """Pickle `thing` to `path` (protocol 3, as the original's to_pickle), atomically."""
    return _write_atomic(path, lambda f: pickle.dump(thing, f, protocol=3))


def from_pickle(path: str | os.PathLike) -> Any:
    """Unpickle `path` (the original's from_pickle). Only for files you trust: pickles can run code."""
    with open(path, "rb") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core references in 2020-era pickles
        return pickle.load(fh)  # noqa: S301 - the caller names this file explicitly


def save_npz(d: dict[str, Any], path: str | os.PathLike) -> Path:
    """Export a dataset dict to .npz (x, y, x_test, y_test, t, templates_x/t/y), atomically."""
    return write_npz(path, _flat(d))
