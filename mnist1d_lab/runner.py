"""Run one configured job: validate, skip if the store has it, train, write the record. No Hydra here."""

from __future__ import annotations

import difflib
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import ModuleType

import torch
import yaml
from omegaconf import DictConfig

from . import cpu, experiments, paths, records
from .clock import hms
from .context import RunContext
from .errors import ConfigError
from .models import model_kwargs

log = logging.getLogger(__name__)
SEED_MAX = 2**63 - 1  # torch's generators take seeds in [0, 2**63-1]


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


def default_threads(cfg: DictConfig, workers: int = 1) -> cpu.Threads:
    """Torch threads of a plain run, from the config alone (never the cores, so a config gives the same
    float32 numbers on any machine): `num_threads`, or 1 when null (the paper's models gain nothing from a
    second thread). `workers`, the jobs a launcher runs at once, changes only the reason it gives."""
    if cfg.num_threads is not None:
        return cpu.Threads(cfg.num_threads, f"num_threads={cfg.num_threads}")
    jobs = f" (one of {workers} jobs at once)" if workers > 1 else ""
    return cpu.Threads(1, f"num_threads=null: one thread per plain run{jobs}")


def _expected_n_train(data_cfg: DictConfig) -> int | None:
    """Training rows a generated dataset will have (the original keeps num_samples // 10 per class)."""
    if data_cfg.get("source", "generate") != "generate":
        return None
    return int((data_cfg.num_samples // 10) * 10 * data_cfg.train_split)


def check_keys(node: Mapping, allowed: Iterable[str], prefix: str) -> None:
    """ConfigError for the first key of `node` not in `allowed`: one line naming it, the nearest allowed
    key (difflib) and every allowed one. For experiments' own `validate(cfg)`; the runner applies it to
    an experiment's CONFIG_NODE (see mnist1d_lab/experiments/__init__.py)."""
    allowed = sorted(allowed)
    for key in node:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            raise ConfigError(f"{prefix}.{key}", node[key], f"no such key in {prefix}" + (
                f" (did you mean {prefix}.{near[0]}?)" if near else "") + f"; knobs: {allowed}")


def experiment_keys(module: ModuleType, name: str) -> tuple[str, list[str]] | None:
    """(node, allowed keys) of an experiment that declares its own config node (CONFIG_NODE), the keys
    read from its YAML file (CONFIG_FILE, default conf/experiment/<name>.yaml); None when it declares none."""
    node = getattr(module, "CONFIG_NODE", None)
    if node is None:
        return None
    path = getattr(module, "CONFIG_FILE", None) or resources.files("mnist1d_lab.conf") / "experiment" / f"{name}.yaml"
    text = (Path(path) if isinstance(path, str | os.PathLike) else path).read_text()  # a file or a resource
    defaults = yaml.safe_load(text)
    return node, list((defaults or {}).get(node) or {})


def validate(cfg: DictConfig) -> None:
    """Check everything that can be checked before any work; raises ConfigError."""
    from .data import validate as validate_data
    from .train import validate_train

    module = experiments.get(cfg.experiment_name)
    model_kwargs(cfg.model)
    validate_data(cfg.data)
    n_train = _expected_n_train(cfg.data)
    # a frozen dataset's size is known only after loading: train() checks the size-bound knobs then
    validate_train(cfg.train, n_train=n_train if n_train is not None else sys.maxsize)
    resolve_device(cfg.device)
    if cfg.num_threads is not None and (not isinstance(cfg.num_threads, int) or cfg.num_threads < 1):
        raise ConfigError("num_threads", cfg.num_threads, "null or a positive integer")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError("seed", cfg.seed, "an integer in [0, 2**63-1]")
    own = experiment_keys(module, cfg.experiment_name)
    if own is not None:  # the experiment's own node: known keys, then its own checks
        node, allowed = own
        if node not in cfg:
            raise ConfigError(node, None, f"the node experiment_name={cfg.experiment_name} reads (its YAML file)")
        check_keys(cfg[node], allowed, node)
        if callable(getattr(module, "validate", None)):
            module.validate(cfg[node])


def setup_torch(cfg: DictConfig, workers: int = 1) -> cpu.Threads:
    """Set a plain run's torch threads (default_threads) and flush denormals; returns the threads."""
    threads = default_threads(cfg, workers)
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


def execute(cfg: DictConfig, out_dir: Path, workers: int = 1, in_sweep: bool = False) -> dict:
    """Run one job end to end and return its summary (status: complete, diverged, failed or skipped).

    Raises ConfigError for bad input (before any work where possible). Other exceptions are recorded
    as `failed` and swallowed; with cfg.stop_on_error the record is written and then RuntimeError raised.
    `in_sweep`: one job of a sweep (validated before launch by the lab's sweeper): a ConfigError is
    recorded as `failed` too, so it never stops the jobs beside it.
    """
    out_dir = Path(out_dir)
    try:
        validate(cfg)
    except ConfigError as exc:
        if not in_sweep:
            raise
        log.error("run failed: %s", exc)
        return finish(cfg, out_dir, None, f"ConfigError: {exc}", 0.0, str(cfg.get("device")), 0)
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
    result, error = _attempt(lambda: experiment.run(cfg, ctx), "run", record_config_errors=in_sweep)
    summary = finish(cfg, out_dir, result, error, time.perf_counter() - start, device, threads)
    _stop_if_asked(cfg, error)
    return summary


def _attempt(fn, what: str, record_config_errors: bool = False) -> tuple:
    """(fn(), None), or (None, error text) when fn raised (logged with its traceback). Bad input
    (ConfigError) is not a failed run: it propagates, unless record_config_errors (a sweep's job)."""
    try:
        return fn(), None
    except ConfigError as exc:
        if not record_config_errors:
            raise
        log.error("%s failed: %s", what, exc)
        return None, f"ConfigError: {exc}"
    except Exception as exc:  # a failed run is recorded, and the sweep carries on
        error = f"{type(exc).__name__}: {exc}"
        log.error("%s failed: %s\n%s", what, error, traceback.format_exc())
        return None, error


def _stop_if_asked(cfg: DictConfig, error: str | None) -> None:
    """With stop_on_error=true, a failed run (already recorded) stops the sweep."""
    if error and cfg.stop_on_error:
        raise RuntimeError(f"stopping the sweep (stop_on_error=true): {error}")


def dry_run_report(jobs: Sequence[Sequence[str]], cfgs: Sequence[DictConfig], launcher: str | None = None,
                   show: int = 5) -> str:
    """What `dry_run=true` prints: how many jobs, how many already in the store, the batched launcher's
    groups, an estimated training time, the first jobs' overrides (of jobs the caller validated). Trains
    and writes nothing."""
    todo = [i for i, cfg in enumerate(cfgs) if records.finished(cfg) is None]
    lines = [f"dry run: {len(cfgs)} job(s), {len(cfgs) - len(todo)} already in the store, {len(todo)} to run"
             + (f" (hydra/launcher={launcher})" if launcher else "")]
    if launcher == "batched" and todo:
        from .batched.schedule import group_key

        groups: dict[str, list[int]] = {}
        for i in todo:
            groups.setdefault(group_key(cfgs[i]) or f"alone {i}", []).append(i)
        stacked = [m for k, m in groups.items() if not k.startswith("alone ") and len(m) > 1]
        sizes = "".join(f", {len(m)} x {cfgs[m[0]].model.name}" for m in stacked)
        lines.append(f"  batched: {len(stacked)} group(s) of jobs that differ only in seed, width or nested train size{sizes}; "
                     f"{len(todo) - sum(map(len, stacked))} job(s) run one at a time")
    lines.append("  " + _estimate([cfgs[i] for i in todo]))
    for i in todo[:show]:
        shown = [o for o in jobs[i] if o.lstrip("+").partition("=")[0] != "dry_run"]
        lines.append(f"  #{i} {' '.join(shown) or '(no overrides)'}")
    if len(todo) > show:
        lines.append(f"  ... and {len(todo) - show} more")
    lines.append("nothing was trained or written (dry_run=true)")
    return "\n".join(lines)


def _estimate(cfgs: Sequence[DictConfig], calibrate: int = 200) -> str:
    """Estimated training time of cfgs, a line saying how: the planner's cost (single_cost) of each job,
    in seconds per cost unit measured on comparable finished runs in the store (same model family, a
    cost within 10x of the jobs' median: a tiny run's wall time is mostly fixed overhead), the median
    of up to `calibrate` recent ones; `unknown` without such runs."""
    from omegaconf import OmegaConf

    from .batched.schedule import single_cost

    if not cfgs:
        return "estimated time: nothing to train"
    costs = [(single_cost(c), c.model.name) for c in cfgs]
    known = [(c, name) for c, name in costs if c is not None]
    unknown = len(costs) - len(known)
    extra = f"; {unknown} job(s) without an estimate (the planner does not model them)" if unknown else ""
    if not known:
        return f"estimated time: unknown{extra}"
    typical = {name: sorted(c for c, n in known if n == name)[sum(n == name for _, n in known) // 2]
               for name in {n for _, n in known}}
    rates: dict[str, list[float]] = {name: [] for name in typical}
    store = paths.store_dir(cfgs[0].paths.output_dir)
    folders = sorted(store.glob("*/summary.json"), key=lambda p: -p.stat().st_mtime)[:calibrate] if store.is_dir() else []
    for path in folders:
        summary = records.read_summary(path.parent)
        if summary is None or summary.get("status") != "complete" or not summary.get("wall_time_s"):
            continue
        try:
            cfg = OmegaConf.create(yaml.safe_load((path.parent / paths.CONFIG_FILE).read_text()))
            cost, name = single_cost(cfg), cfg.model.name
        except Exception:  # noqa: BLE001  a record the planner cannot read: not used to calibrate
            continue
        if cost and name in typical and typical[name] / 10 <= cost <= typical[name] * 10:
            rates[name].append(summary["wall_time_s"] / cost)
    missing = sorted(name for name, r in rates.items() if not r)
    if missing:
        return (f"estimated time: unknown (no comparable finished {'/'.join(missing)} run in the store to "
                f"calibrate the planner's cost){extra}")
    total = sum(c * sorted(rates[name])[len(rates[name]) // 2] for c, name in known)
    runs = sum(map(len, rates.values()))
    return (f"estimated time: about {hms(total)} of training for {len(known)} job(s), one after another "
            f"(planner's cost x seconds per unit, the median of {runs} comparable run(s) in the store){extra}")
