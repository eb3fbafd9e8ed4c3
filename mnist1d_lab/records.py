"""Run records: atomic files per run, a result store keyed by config, and collection into tables.

A record is a folder with config.yaml (resolved config), env.json (versions, git revision, device,
threads, seeds), summary.json (status and metrics) and, when the run has them, curves.csv (one row per
evaluation), stages.csv (several result rows per run), test_confusion.csv (final test confusion
matrix) and artifacts/ (test_pred.npy, model.pt, an experiment's own files). summary.json is written
last, atomically, and lists the record's files: a folder without a parsable summary, or missing one of
its listed files, is an incomplete record.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

import yaml
from omegaconf import DictConfig, OmegaConf

from . import paths

if TYPE_CHECKING:  # pandas is imported where a table is built: a launcher's parent skips it until collect (0.4 s)
    import pandas as pd

log = logging.getLogger(__name__)

# Keys that do not change a run's result, so they are left out of its store key.
RESULT_NEUTRAL_KEYS = ("paths", "force", "progress", "num_threads", "stop_on_error", "device", "cuda_graphs",
                       "hydra", "data.cache", "data.cache_dir", "save_model", "dry_run")
RECORD_FILES = (paths.CONFIG_FILE, paths.CURVES_FILE, paths.ENV_FILE, paths.STAGES_FILE, paths.CONFUSION_FILE)
DONE_STATUSES = ("complete", "diverged")  # finished records; `failed` ones are retried
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~15x faster than OmegaConf.load


def to_plain(cfg: Mapping | DictConfig) -> dict:
    """A deep, resolved, plain-dict copy of a config."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(dict(cfg))


# Knobs added after records were written: left out of the key while they hold the value that reproduces
# the older behaviour, so every result already in a user's store stays found.
NEUTRAL_DEFAULTS = {"data.roll": 0, "model.pool": "none", "model.pool_size": 2, "train.eval_train_rows": None}


@functools.cache
def _float_knobs() -> dict[str, frozenset[str]]:
    """Keys whose default is a float, per node (`train`, `data`), read from their default YAML files."""
    from importlib import resources

    conf = resources.files("mnist1d_lab.conf")
    out = {}
    for node, file in (("train", "train/paper.yaml"), ("data", "data/mnist1d.yaml")):
        defaults = yaml.load((conf / file).read_text(), Loader=_YAML_LOADER) or {}
        out[node] = frozenset(k for k, v in defaults.items() if isinstance(v, float))
    return out


def _cast_floats(body: dict) -> None:
    """An integer given for a knob whose default is a float becomes that float (`train.lr=1` is 1.0), as
    the dataset cache key does: equal values, one key. Well-typed configs are left as they are."""
    for node, keys in _float_knobs().items():
        sub = body.get(node)
        if isinstance(sub, dict):
            for k in keys & sub.keys():
                if isinstance(sub[k], int) and not isinstance(sub[k], bool):
                    sub[k] = float(sub[k])


def run_key(cfg: Mapping | DictConfig) -> str:
    """A short hash of everything in the resolved config that can change the result (integers given
    for float knobs cast to float first). Left out: RESULT_NEUTRAL_KEYS, knobs at their NEUTRAL_DEFAULTS,
    and the dotted keys an experiment lists in its config's `neutral_keys` (e.g. the folder of the human
    quizzes, which only its summary reads)."""
    body = to_plain(cfg)
    _cast_floats(body)
    model = body.get("model") if isinstance(body.get("model"), dict) else {}
    if model.get("activation_path"):  # a learned activation: its file by content, not by path
        try:
            model["activation_path"] = "sha256:" + hashlib.sha256(
                Path(str(model["activation_path"])).expanduser().read_bytes()).hexdigest()
        except OSError:
            pass  # validation reports the missing file
    extra = body.pop("neutral_keys", None) or []  # an experiment's own result-neutral keys (e.g. classwise: human)
    for key in (*RESULT_NEUTRAL_KEYS, *NEUTRAL_DEFAULTS, *extra):
        parent, _, leaf = key.rpartition(".")
        node = body.get(parent, {}) if parent else body
        if isinstance(node, dict) and leaf in node and (key not in NEUTRAL_DEFAULTS
                                                         or node[leaf] == NEUTRAL_DEFAULTS[key]):
            node.pop(leaf)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def _umask() -> int:
    """The process's umask, read once (os.umask can only be read by setting it: not thread-safe later)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def follow_umask(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a file (0666) or folder (0777) made by tempfile.mkstemp / mkdtemp (0600 / 0700) the mode an
    ordinary open() or mkdir would have given it under the user's umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def write_file_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], object], sync: bool = False) -> Path:
    """Call write(file) on a temporary file in path's folder (synced to disk first with `sync`), give it
    the umask's mode and rename it over path: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        follow_umask(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write data to path atomically (write_file_atomic)."""
    write_file_atomic(path, lambda f: f.write(data))


def write_atomic(path: Path, text: str) -> None:
    """Write text to path atomically (write_bytes_atomic)."""
    write_bytes_atomic(path, text.encode())


def write_texts(folder: Path, files: Mapping[str, str]) -> list[Path]:
    """Write each text to folder/<name> atomically (a summary's tables and notes); their paths, in order."""
    out = []
    for name, text in files.items():
        write_atomic(Path(folder) / name, text)
        out.append(Path(folder) / name)
    return out


def write_record(folder: Path, cfg: Mapping | DictConfig, summary: dict, curves_csv: str | None,
                 env: dict, tables: Mapping[str, str] | None = None) -> None:
    """Write a record into `folder`: config, curves (CSV text), env, further CSV `tables` by file name
    (stages.csv, test_confusion.csv), then the summary, last, with the list of the record's files
    (artifacts already written under artifacts/ included)."""
    folder = Path(folder)
    write_atomic(folder / paths.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg))))
    if curves_csv is not None:
        write_atomic(folder / paths.CURVES_FILE, curves_csv)
    for name, text in (tables or {}).items():
        write_atomic(folder / name, text)
    write_atomic(folder / paths.ENV_FILE, json.dumps(env, indent=2, default=str))
    summary = {**summary, "files": record_files(folder)}
    write_atomic(folder / paths.SUMMARY_FILE, json.dumps(summary, indent=2, default=str))


def record_files(folder: Path) -> list[str]:
    """The record's files in folder (relative paths; the summary aside): fixed names, then artifacts/."""
    folder = Path(folder)
    names = [n for n in RECORD_FILES if (folder / n).is_file()]
    art = folder / paths.ARTIFACTS_DIR
    if art.is_dir():
        names += sorted(p.relative_to(folder).as_posix() for p in art.rglob("*")
                        if p.is_file() and not p.name.startswith("."))
    return names


def read_summary(folder: Path) -> dict | None:
    """The record's summary, or None when missing or unreadable (a half-written or foreign folder)."""
    try:
        summary = json.loads((Path(folder) / paths.SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and "status" in summary else None


def _listed_files(summary: dict) -> list[str]:
    """The files a summary lists (records written before summaries listed them: config, curves, env)."""
    return summary.get("files") or [paths.CONFIG_FILE, paths.CURVES_FILE, paths.ENV_FILE]


def is_done(folder: Path) -> bool:
    """True when the folder holds a finished record (complete or diverged) with all its files."""
    summary = read_summary(folder)
    return (summary is not None and summary["status"] in DONE_STATUSES
            and all((Path(folder) / f).is_file() for f in [paths.CONFIG_FILE, paths.ENV_FILE, *_listed_files(summary)]))


def copy_record(src: Path, dst: Path) -> None:
    """Copy a record's files (artifacts included) from src to dst, each atomically, the summary last."""
    src, dst = Path(src), Path(dst)
    summary = read_summary(src)
    names = _listed_files(summary) if summary is not None else list(RECORD_FILES)
    for name in names:
        if (src / name).is_file():
            tmp = dst / f"{name}.{os.getpid()}.tmp"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, tmp)
            os.replace(tmp, dst / name)
    if (src / paths.SUMMARY_FILE).is_file():
        write_atomic(dst / paths.SUMMARY_FILE, (src / paths.SUMMARY_FILE).read_text())


def finished(cfg: Mapping | DictConfig) -> Path | None:
    """The store folder holding cfg's finished record, or None (also None with cfg.force, and with
    save_model=true when the stored record has no weights: the job then runs again)."""
    if cfg.get("force"):
        return None
    store = paths.store_dir(cfg["paths"]["output_dir"]) / run_key(cfg)
    if not is_done(store):
        return None
    if cfg.get("save_model") and not artifact_path(store, paths.MODEL_ARTIFACT).is_file():
        return None
    return store


def artifact_path(record_dir: str | os.PathLike, name: str) -> Path:
    """Where artifact `name` of the record in record_dir lives (e.g. a collected table's `record_dir`)."""
    return Path(record_dir) / paths.ARTIFACTS_DIR / name


def load_artifact(record_dir: str | os.PathLike, name: str):
    """Read artifact `name` of a record (format by suffix: context.decode)."""
    from .context import decode

    return decode(artifact_path(record_dir, name))


def load_model(record_dir: str | os.PathLike, device: str = "cpu"):
    """The model of a run saved with save_model=true, built from its config and loaded with its weights."""
    from .models import build_model

    folder = Path(record_dir)
    weights = artifact_path(folder, paths.MODEL_ARTIFACT)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no saved weights (run with save_model=true)")
    cfg = yaml.load((folder / paths.CONFIG_FILE).read_text(), Loader=_YAML_LOADER)
    model = build_model(cfg["model"], int(cfg["seed"]))
    model.load_state_dict(load_artifact(folder, paths.MODEL_ARTIFACT))
    return model.to(device).eval()


def confusion(record_dir: str | os.PathLike, rows=None):
    """(10, 10) int array of a record's final test predictions, true class by predicted class; with
    `rows` (test-row indices, e.g. the human quiz's), only those rows (from test_pred.npy)."""
    import numpy as np

    folder = Path(record_dir)
    if rows is None:
        return np.loadtxt(folder / paths.CONFUSION_FILE, delimiter=",", skiprows=1, dtype=np.int64)[:, 1:]
    pred = load_artifact(folder, paths.TEST_PRED_ARTIFACT)
    true = load_artifact(folder, paths.TEST_TRUE_ARTIFACT)
    rows = np.asarray(rows)
    return confusion_matrix(true[rows], pred[rows])


def confusion_matrix(true, pred, num_classes: int = 10):
    """(C, C) counts: row = true class, column = predicted class."""
    import numpy as np

    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return m


def confusion_csv(m) -> str:
    """A confusion matrix as CSV text: a `true` column, then one column per predicted class."""
    lines = ["true," + ",".join(f"pred_{j}" for j in range(m.shape[1]))]
    lines += [f"{i}," + ",".join(str(int(v)) for v in row) for i, row in enumerate(m)]
    return "\n".join(lines) + "\n"


def reuse(store: Path, out_dir: Path) -> dict:
    """Copy a finished record from the store into out_dir; its summary, marked `skipped`."""
    copy_record(store, out_dir)
    return {**read_summary(out_dir), "skipped": True}


def file_into_store(folder: Path, store: Path) -> None:
    """Publish a finished record into the store as a whole folder (temp folder + rename)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=store.parent, prefix=f".{store.name}."))
    try:
        follow_umask(tmp, folder=True)
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
    """Package versions, git revision, device, seeds of this run, and its torch threads: how many, why (a
    cpu.Threads carries its reason) and OpenMP's wait policy (PASSIVE from the entry points, cpu.py)."""
    return {**_static_env(), "device": device, "num_threads": int(threads),
            "threads_reason": getattr(threads, "reason", None), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "seeds": seeds, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


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


def _natural(path: Path) -> list:
    """Sort key: digit runs compare as numbers, so job folders come in job order (0, 1, 2, ..., 10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def record_folders(root: Path) -> list[Path]:
    """Every folder below root (root included) that holds a summary file, in natural order (job order)."""
    return sorted((p.parent for p in Path(root).rglob(paths.SUMMARY_FILE)), key=_natural)


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


def collect_stages(table: pd.DataFrame) -> pd.DataFrame:
    """Every run's stages.csv, concatenated, each row with its run's key columns: run_key, the config
    columns that vary between the runs of `table` (the sweep's independent variables) and seed."""
    import pandas as pd

    cfg_cols = [c for c in table.columns if "." in c or c == "seed"]
    cfg_cols = [c for c in cfg_cols if not c.startswith(("paths.", "hydra."))]
    varying = [c for c in cfg_cols if table[c].astype(str).nunique(dropna=False) > 1 or c == "seed"]
    frames = []
    for _, row in table.iterrows():
        f = Path(row["record_dir"]) / paths.STAGES_FILE
        if f.is_file():
            stages = pd.read_csv(f)
            keys = pd.DataFrame({c: [row[c]] * len(stages) for c in ["run_key", *varying] if c in row})
            frames.append(pd.concat([keys, stages.drop(columns=[c for c in keys if c in stages])], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
