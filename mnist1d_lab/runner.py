"""Run one configured job: validate, skip if the store has it, train, write the record. No Hydra here."""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig

from . import cpu, experiments, paths, records
from .context import RunContext
from .errors import ConfigError
from .models import model_kwargs

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """`auto` -> cuda when available, else cpu; otherwise check the name."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError("device", name, "auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and not torch.cuda.is_available()):
        raise ConfigError("device", name, "auto, cpu, or cuda[:N] on a machine with CUDA")
    return str(dev)


def default_threads(workers: int = 1) -> int:
    """CPU cores (this process may use) divided by the number of parallel workers, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _expected_n_train(data_cfg: DictConfig) -> int | None:
    """Training rows a generated dataset will have (the original keeps num_samples // 10 per class)."""
    if data_cfg.get("source", "generate") != "generate":
        return None
    return int((data_cfg.num_samples // 10) * 10 * data_cfg.train_split)


def validate(cfg: DictConfig) -> None:
    """Check everything that can be checked before any work; raises ConfigError."""
    from .data import validate as validate_data
    from .train import validate_train

    experiments.get(cfg.experiment_name)
    model_kwargs(cfg.model)
    validate_data(cfg.data)
    n_train = _expected_n_train(cfg.data)
    if n_train is not None:  # a frozen dataset's size is known only after loading: train() checks then
        validate_train(cfg.train, n_train=n_train)
    resolve_device(cfg.device)
    if cfg.num_threads is not None and (not isinstance(cfg.num_threads, int) or cfg.num_threads < 1):
        raise ConfigError("num_threads", cfg.num_threads, "null or a positive integer")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError("seed", cfg.seed, "an integer")


def setup_torch(cfg: DictConfig, workers: int = 1) -> int:
    """Set the thread count deliberately (no oversubscription) and flush denormals; returns threads."""
    threads = cfg.num_threads or default_threads(workers)
    torch.set_num_threads(threads)
    cpu.tune()  # flushed denormals (cpu.py)
    return threads


def finish(cfg: DictConfig, out_dir: Path, result, error: str | None, wall: float, device: str,
           threads: int) -> dict:
    """Write a run's record into out_dir and, when finished, into the store; returns its summary.

    From the result (protocol.TrainResult) it writes curves.csv, stages.csv, the test predictions
    (artifacts test_pred.npy, test_true.npy and test_confusion.csv) and, with save_model=true, the
    weights (artifact model.pt); the experiment's own artifacts are already in out_dir/artifacts/.
    """
    summary = dict(result.summary) if result is not None else {}
    diverged = summary.get("diverged") or not math.isfinite(summary.get("final_train_loss", 0.0))
    status = "failed" if error else "diverged" if diverged else "complete"
    summary.update(status=status, error=error, run_key=records.run_key(cfg), experiment_name=cfg.experiment_name,
                   wall_time_s=round(wall, 3))
    seeds = {"seed": cfg.seed, "data.seed": cfg.data.seed, "label_noise_seed": summary.get("label_noise_seed")}
    env = records.environment(device, seeds, threads)
    tables = _write_result_artifacts(cfg, Path(out_dir), result) if result is not None else {}
    records.write_record(out_dir, cfg, summary, result.curves_csv() if result is not None else None, env, tables)
    if status in records.DONE_STATUSES:
        records.file_into_store(out_dir, paths.store_dir(cfg.paths.output_dir) / summary["run_key"])
        RunContext(Path(out_dir), checkpoint_dir=paths.partial_dir(cfg.paths.output_dir, summary["run_key"])
                   ).discard_checkpoints()
    return summary


def _write_result_artifacts(cfg: DictConfig, out_dir: Path, result) -> dict[str, str]:
    """Write the result's test predictions and (save_model=true) weights as artifacts; returns the CSV
    tables of the record (stages.csv, test_confusion.csv) as text by file name."""
    ctx = RunContext(out_dir)
    tables = {}
    if result.test_pred is not None and result.test_true is not None:
        ctx.save_artifact(paths.TEST_PRED_ARTIFACT, result.test_pred)
        ctx.save_artifact(paths.TEST_TRUE_ARTIFACT, result.test_true)
        num_classes = max(10, int(max(result.test_true.max(initial=0), result.test_pred.max(initial=0))) + 1)
        tables[paths.CONFUSION_FILE] = records.confusion_csv(
            records.confusion_matrix(result.test_true, result.test_pred, num_classes))
    if cfg.get("save_model") and result.model is not None:
        ctx.save_artifact(paths.MODEL_ARTIFACT, {k: v.detach().cpu() for k, v in result.model.state_dict().items()})
    if result.stages:
        import csv
        import io

        columns = list(dict.fromkeys(k for row in result.stages for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.stages)
        tables[paths.STAGES_FILE] = buf.getvalue()
    return tables


def lookup(cfg: DictConfig, out_dir: Path) -> dict | None:
    """If the store holds cfg's finished record (and not force): copy it to out_dir, log the skip and
    return its summary marked `skipped`; else None."""
    store = records.finished(cfg)
    if store is None:
        return None
    summary = records.reuse(store, out_dir)
    log.info("skipped: complete record %s in the store", summary["run_key"])
    return summary


def execute(cfg: DictConfig, out_dir: Path, workers: int = 1) -> dict:
    """Run one job end to end and return its summary (status: complete, diverged, failed or skipped).

    Raises ConfigError for bad input (before any work where possible). Other exceptions are recorded
    as `failed` and swallowed; with cfg.stop_on_error the record is written and then RuntimeError raised.
    """
    validate(cfg)
    out_dir = Path(out_dir)
    found = lookup(cfg, out_dir)
    if found is not None:
        return found
    device, threads = resolve_device(cfg.device), setup_torch(cfg, workers)
    start = time.perf_counter()
    experiment = experiments.get(cfg.experiment_name)
    ctx = RunContext(out_dir, device=device, progress=bool(cfg.progress),
                     checkpoint_dir=paths.partial_dir(cfg.paths.output_dir, records.run_key(cfg)))
    if cfg.get("force"):
        ctx.discard_checkpoints()  # force=true recomputes every stage too
    result, error = _attempt(lambda: experiment.run(cfg, ctx), "run")
    summary = finish(cfg, out_dir, result, error, time.perf_counter() - start, device, threads)
    _stop_if_asked(cfg, error)
    return summary


def _attempt(fn, what: str) -> tuple:
    """(fn(), None), or (None, error text) when fn raised (logged with its traceback). Bad input
    (ConfigError) is not a failed run: it propagates."""
    try:
        return fn(), None
    except ConfigError:
        raise
    except Exception as exc:  # a failed run is recorded, and the sweep carries on
        error = f"{type(exc).__name__}: {exc}"
        log.error("%s failed: %s\n%s", what, error, traceback.format_exc())
        return None, error


def _stop_if_asked(cfg: DictConfig, error: str | None) -> None:
    """With stop_on_error=true, a failed run (already recorded) stops the sweep."""
    if error and cfg.stop_on_error:
        raise RuntimeError(f"stopping the sweep (stop_on_error=true): {error}")

