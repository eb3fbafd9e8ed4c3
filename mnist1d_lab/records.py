"""Run records: atomic files per run, a result store keyed by config, and collection into tables.

A record is a folder with config.yaml (resolved config), curves.csv (one row per evaluation),
env.json (versions, git revision, device, seeds) and summary.json (status and metrics). summary.json
is written last, atomically: a folder without a parsable summary is an incomplete record.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from omegaconf import DictConfig, OmegaConf

from . import paths

if TYPE_CHECKING:  # pandas is imported where a table is built: a launcher's parent skips it until collect (0.4 s)
    import pandas as pd

log = logging.getLogger(__name__)

# Keys that do not change a run's result, so they are left out of its store key.
RESULT_NEUTRAL_KEYS = ("paths", "force", "progress", "num_threads", "stop_on_error", "device", "cuda_graphs",
                       "hydra", "data.cache", "data.cache_dir")
DONE_STATUSES = ("complete", "diverged")  # finished records; `failed` ones are retried
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~15x faster than OmegaConf.load


def to_plain(cfg: Mapping | DictConfig) -> dict:
    """A deep, resolved, plain-dict copy of a config."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(dict(cfg))


def run_key(cfg: Mapping | DictConfig) -> str:
    """A short hash of everything in the resolved config that can change the result."""
    body = to_plain(cfg)
    for key in RESULT_NEUTRAL_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = body.get(parent, {}) if parent else body
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(folder: Path, cfg: Mapping | DictConfig, summary: dict, curves_csv: str | None,
                 env: dict) -> None:
    """Write the four record files into `folder` (curves as CSV text), summary last."""
    folder = Path(folder)
    write_atomic(folder / paths.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg))))
    if curves_csv is not None:
        write_atomic(folder / paths.CURVES_FILE, curves_csv)
    write_atomic(folder / paths.ENV_FILE, json.dumps(env, indent=2, default=str))
    write_atomic(folder / paths.SUMMARY_FILE, json.dumps(summary, indent=2, default=str))


def read_summary(folder: Path) -> dict | None:
    """The record's summary, or None when missing or unreadable (a half-written or foreign folder)."""
    try:
        summary = json.loads((Path(folder) / paths.SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and "status" in summary else None


def is_done(folder: Path) -> bool:
    """True when the folder holds a finished record (complete or diverged) with all its files."""
    summary = read_summary(folder)
    return (summary is not None and summary["status"] in DONE_STATUSES
            and all((Path(folder) / f).is_file() for f in (paths.CONFIG_FILE, paths.CURVES_FILE, paths.ENV_FILE)))


def copy_record(src: Path, dst: Path) -> None:
    """Copy a record's files from src to dst (summary last, each atomically)."""
    for name in (paths.CONFIG_FILE, paths.CURVES_FILE, paths.ENV_FILE, paths.SUMMARY_FILE):
        if (Path(src) / name).is_file():
            write_atomic(Path(dst) / name, (Path(src) / name).read_text())


def finished(cfg: Mapping | DictConfig) -> Path | None:
    """The store folder holding cfg's finished record, or None (also None with cfg.force)."""
    if cfg.get("force"):
        return None
    store = paths.store_dir(cfg["paths"]["output_dir"]) / run_key(cfg)
    return store if is_done(store) else None


def reuse(store: Path, out_dir: Path) -> dict:
    """Copy a finished record from the store into out_dir; its summary, marked `skipped`."""
    copy_record(store, out_dir)
    return {**read_summary(out_dir), "skipped": True}


def file_into_store(folder: Path, store: Path) -> None:
    """Publish a finished record into the store as a whole folder (temp folder + rename)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=store.parent, prefix=f".{store.name}."))
    try:
        copy_record(folder, tmp)
        if store.exists():  # an older failed record, or force=true: move it aside, then swap in
            old = store.with_name(f".{store.name}.old.{os.getpid()}")
            os.replace(store, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, store)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_done(store):
            raise


@functools.cache
def _static_env() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("mnist1d_lab", "torch", "numpy", "scipy", "pandas", "hydra-core", "omegaconf", "matplotlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    repo = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "-uno"],
                                    capture_output=True, text=True, timeout=5).stdout.strip()) if rev else None
    except (OSError, subprocess.SubprocessError):
        rev, dirty = None, None
    return {"versions": versions, "git_revision": rev, "git_dirty": dirty, "python": platform.python_version(),
            "platform": platform.platform(), "hostname": platform.node()}


def environment(device: str, seeds: dict, threads: int) -> dict:
    """Package versions, git revision, device, thread count and seeds of this run."""
    return {**_static_env(), "device": device, "num_threads": threads, "seeds": seeds,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def flatten(d: Mapping, prefix: str = "") -> dict:
    """Nested mapping -> flat dict with dotted keys (lists kept as strings, e.g. data.padding)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(list(v)) if isinstance(v, list | tuple) else v
    return out


def record_folders(root: Path) -> list[Path]:
    """Every folder below root (root included) that holds a summary file."""
    return sorted(p.parent for p in Path(root).rglob(paths.SUMMARY_FILE))


def collect(root: Path) -> pd.DataFrame:
    """One row per distinct run below root: flattened config + metrics + status (+ `record_dir`).

    Copies of the same record (a run folder and its store entry) count once, by run key.
    """
    import pandas as pd

    rows = {}
    for folder in record_folders(root):
        summary = read_summary(folder)
        if summary is None:
            log.warning("skipping unreadable record %s", folder)
            continue
        try:
            cfg = yaml.load((folder / paths.CONFIG_FILE).read_text(), Loader=_YAML_LOADER) or {}
        except (OSError, ValueError, yaml.YAMLError):
            cfg = {}
        row = {**flatten(cfg), **summary, "record_dir": str(folder)}
        rows[summary.get("run_key", str(folder))] = row
    return pd.DataFrame(list(rows.values()))


def collect_curves(table: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Long table of every run's curves, with the given config columns of the run table repeated."""
    import pandas as pd

    frames = []
    for _, row in table.iterrows():
        f = Path(row["record_dir"]) / paths.CURVES_FILE
        if f.is_file():
            curves = pd.read_csv(f)
            for c in columns or []:
                curves[c] = row[c]
            frames.append(curves)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def save_table(table: pd.DataFrame, folder: Path) -> list[Path]:
    """Save a table as CSV and parquet (when pyarrow is available) into folder; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / paths.TABLE_FILE]
    write_atomic(out[0], table.to_csv(index=False))
    try:
        tmp = folder / f".{paths.TABLE_PARQUET}.tmp"
        table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(tmp, index=False)
        os.replace(tmp, folder / paths.TABLE_PARQUET)
        out.append(folder / paths.TABLE_PARQUET)
    except ImportError:
        log.info("pyarrow not installed: wrote CSV only")
    return out
