"""The Hydra entry point: `python -m mnist1d_lab [overrides]`, `-m` for sweeps, `dry_run=true` for the plan.

Exit codes: 0 done (skipped, complete or diverged runs); 1 a single run failed, or a sweep had a failed
job (after every other job ran and the sweep was collected); 2 bad input, found before any job ran
(one line `mnist1d_lab: error: key=value: what is allowed`, nothing written).

This module (with callbacks.py and the launcher plugin) is the only place that knows about Hydra:
everything below takes a config subtree and an explicit output folder.
"""

from __future__ import annotations

import os

# First, before anything imports torch: libgomp reads this once, when torch loads it. Waiting OpenMP threads
# then sleep instead of spinning for a sibling the OS has descheduled, which on a busy machine made runs on
# 2 threads 10-100x slower (cpu.py). joblib and submitit workers inherit it; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import difflib
import logging
import re
import shutil
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from . import cpu, paths
from .errors import ConfigError

log = logging.getLogger("mnist1d_lab")
CONFIG_PACKAGE = "mnist1d_lab.conf"
GROUPS = ("data", "model", "train", "experiment", "sweep", "scale")


def register_plugins() -> None:
    """Make sure Hydra knows our launcher and sweeper (hydra_plugins/mnist1d_lab_launcher).

    Hydra finds plugins by walking the `hydra_plugins` namespace with pkgutil, which cannot see into an
    editable install (setuptools' path hook). After Hydra's own scan, whatever it missed is imported and
    registered here; what it found is left alone (importing it again would make a second class object).
    """
    import importlib

    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # runs Hydra's scan once
    for module, name in (("batched_launcher", "BatchedLauncher"), ("lab_sweeper", "LabSweeper")):
        path = f"hydra_plugins.mnist1d_lab_launcher.{module}"
        if f"{path}.{name}" not in plugins.class_name_to_class:
            plugins.register(getattr(importlib.import_module(path), name))


def _options(group: str, search_dirs: list[Path] = ()) -> list[str]:
    """Config files of a group: the lab's own, and those in `hydra.searchpath` folders (file://)."""
    folders = [resources.files(CONFIG_PACKAGE) / group, *(Path(d) / group for d in search_dirs)]
    return sorted({p.name[:-5] for f in folders if f.is_dir() for p in f.iterdir() if p.name.endswith(".yaml")})


def _search_dirs(argv: list[str]) -> list[Path]:
    """The file:// folders of a `hydra.searchpath=[...]` override (e.g. a user's own experiments)."""
    dirs = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "hydra.searchpath":
            dirs += [Path(v.strip().strip("'\"")[len("file://"):]) for v in value.strip("[]").split(",")
                     if v.strip().strip("'\"").startswith("file://")]
    return dirs


def check_group_choices(argv: list[str]) -> None:
    """Fail fast, in one line, on `model=foo` style overrides naming a config file that does not exist."""
    search_dirs = _search_dirs(argv)
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or "(" in value or value in ("", "null"):
            continue
        valid = _options(key, search_dirs)
        for choice in value.split(","):
            if choice not in valid:
                raise ConfigError(key, choice, f"one of {valid}")


def _parallel_workers(hc) -> int:
    """How many jobs run at once under the configured launcher. It does not change a job's thread count
    (the config alone does: runner.default_threads), only the reason env.json gives for it."""
    launcher = hc.launcher
    n = launcher.get("n_jobs") or launcher.get("tasks_per_node") or 1
    return int(n) if int(n) > 0 else cpu.usable_cores()  # joblib's n_jobs=-1: every core


def _discard(out_dir: Path) -> None:
    """Remove a job folder that holds no record (bad input): no half-results are left behind."""
    if out_dir.is_dir() and not (out_dir / paths.SUMMARY_FILE).exists():
        shutil.rmtree(out_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name="config")
def main(cfg: DictConfig) -> dict:
    """Run one job (a Hydra multirun calls this once per job).

    A single run exits 2 on bad input (nothing written) and 1 when it failed (after its record says
    `failed`). A sweep's job never exits: its failure is recorded, and the sweep's exit code tells (cli)."""
    from . import runner  # torch: imported where a job runs; a launcher's parent (joblib's) never needs it

    cpu.configure_process()  # here too: joblib / submitit workers call main() without cli()
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    in_sweep = hc.mode == RunMode.MULTIRUN
    try:
        summary = runner.execute(cfg, out_dir, workers=_parallel_workers(hc), in_sweep=in_sweep)
    except ConfigError as exc:
        print(f"mnist1d_lab: error: {exc}", file=sys.stderr)
        _discard(out_dir)
        sys.exit(2)
    if summary.get("status") == "failed":
        log.error("FAILED: %s (record: %s)", summary.get("error"), out_dir)
        if not in_sweep:
            print(f"mnist1d_lab: error: the run failed: {summary.get('error')} (record: {out_dir})", file=sys.stderr)
            sys.exit(1)
    else:
        status = "skipped, already done" if summary.get("skipped") else summary["status"]
        if "final_test_acc" in summary:
            log.info("%s: test accuracy %.2f %% (final), %.2f %% (best on test, step %s); %s parameters; %.1f s",
                     status, 100 * summary["final_test_acc"], 100 * summary["best_test_acc"],
                     summary["best_test_step"], summary.get("num_params"), summary.get("wall_time_s", 0.0))
        else:
            log.info("%s in %.1f s", status, summary.get("wall_time_s", 0.0))
        log.info("run folder: %s", out_dir)
    return summary


MULTIRUN_FLAGS = ("-m", "--multirun")


def _arguments(argv: list[str]) -> tuple[list[str], bool]:
    """(argv for Hydra, dry run?): `-m` moved before the overrides (argparse takes no override after a
    flag), `dry_run=<bool>` turned into `++dry_run=<bool>` (a key the config need not have)."""
    flags = [a for a in argv if a in MULTIRUN_FLAGS]
    rest, dry = [], False
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg in MULTIRUN_FLAGS:
            continue
        if sep and key.lstrip("+") == "dry_run":
            if value.lower() not in ("true", "false"):
                raise ConfigError("dry_run", value, "true or false")
            dry = value.lower() == "true"
            arg = f"++dry_run={value.lower()}"
        rest.append(arg)
    return flags + rest, dry


def check_output_dir(argv: list[str]) -> None:
    """Fail fast, in one line, when the outputs folder (paths.output_dir, $MNIST1D_LAB_OUTPUTS) cannot be
    created or written. It only checks: nothing is created."""
    out = next((a.partition("=")[2] for a in argv if a.lstrip("+").startswith("paths.output_dir=")), None)
    key = "paths.output_dir"
    if out is None:
        out, key = os.environ.get(paths.OUTPUTS_ENV) or "outputs", paths.OUTPUTS_ENV
    if "${" in out or "(" in out or "," in out:  # an interpolation or a sweep: Hydra resolves it first
        return
    folder = Path(out).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, out, f"a folder that can be created and written ({existing} is not writable)")


def _hydra_error(exc: BaseException, argv: list[str]) -> str:
    """One line for an error Hydra raised before any job ran (a key not in the config, a config group
    choice that does not exist, an unwritable folder): the key, and what is allowed."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = exc.__cause__
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and getattr(cause, "full_key", None):
        key = cause.full_key
        value = next((a.partition("=")[2] for a in argv if a.lstrip("+~").partition("=")[0] == key), None)
        parent = getattr(cause, "parent_node", None)
        known = sorted(str(k) for k in parent) if parent is not None and hasattr(parent, "keys") else []
        near = difflib.get_close_matches(key.rpartition(".")[2], known, n=1)
        prefix = key.rpartition(".")[0]
        hint = f" (did you mean {prefix + '.' if prefix else ''}{near[0]}?)" if near else ""
        return str(ConfigError(key, value, f"no such key{hint}; keys: {known}"))
    options = getattr(exc, "options", None)
    if options is not None:  # MissingConfigException: a config group choice that does not exist
        group = re.search(r"in '([^']+)'", str(exc))
        group = group[1] if group else "config"
        choice = next((a.partition("=")[2] for a in argv if a.lstrip("+~").startswith(group + "=")), None)
        return str(ConfigError(group, choice, f"one of {sorted(options)}"))
    if isinstance(exc, OSError) and exc.filename:
        return str(ConfigError("paths.output_dir", str(exc.filename), f"a folder that can be written ({exc.strerror})"))
    return " ".join(str(exc).splitlines()[0].split()) if str(exc) else type(exc).__name__


def cli() -> None:
    """Console entry: check group names and the outputs folder, then hand over to Hydra; Hydra's errors
    before any job become one line (exit 2); a sweep with a failed job exits 1 once it is collected."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from . import callbacks

    try:
        argv, dry = _arguments(sys.argv[1:])
        check_group_choices(argv)
        check_output_dir(argv)
    except ConfigError as exc:
        print(f"mnist1d_lab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = argv
    cpu.configure_process()  # malloc keeps freed memory; no final garbage collections at exit (cpu.py)
    register_plugins()
    if dry and not any(a in MULTIRUN_FLAGS for a in argv) and dry_run_single(argv):
        return
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them: explained here
    try:
        main()
    except (HydraException, OmegaConfBaseException, OSError) as exc:
        if user_full_error:
            raise
        print(f"mnist1d_lab: error: {_hydra_error(exc, argv)}", file=sys.stderr)
        sys.exit(2)
    failed = callbacks.last_sweep_failures()
    if failed:
        print(f"mnist1d_lab: error: {failed}", file=sys.stderr)
        sys.exit(1)


def dry_run_single(argv: list[str]) -> bool:
    """`dry_run=true` on a single run: compose, validate, look the run up in the store and print what
    would run; nothing is trained or written. False when the config is a sweep after all (an experiment
    file that sets hydra.mode: MULTIRUN): the lab's sweeper then does the dry run."""
    from hydra import compose, initialize_config_module

    from . import runner

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception:  # noqa: BLE001  Hydra's own run reports it, in one line (cli)
        return False
    if cfg.hydra.mode == RunMode.MULTIRUN:
        return False
    with open_dict(cfg):
        cfg.pop("hydra")
    try:
        runner.validate(cfg)
        print(runner.dry_run_report([overrides], [cfg]))
    except ConfigError as exc:
        print(f"mnist1d_lab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return True


if __name__ == "__main__":
    cli()
