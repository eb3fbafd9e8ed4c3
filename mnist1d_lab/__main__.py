"""The Hydra entry point: `python -m mnist1d_lab [overrides]`, `-m` for sweeps.

This module (with callbacks.py and the launcher plugin) is the only place that knows about Hydra:
everything below takes a config subtree and an explicit output folder.
"""

from __future__ import annotations

import logging
import shutil
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

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
    """How many jobs run at once under the configured launcher (for the default thread count)."""
    from . import runner

    launcher = hc.launcher
    n = launcher.get("n_jobs") or launcher.get("tasks_per_node") or 1
    return int(n) if int(n) > 0 else runner.default_threads(1)


def _discard(out_dir: Path) -> None:
    """Remove a job folder that holds no record (bad input): no half-results are left behind."""
    if out_dir.is_dir() and not (out_dir / paths.SUMMARY_FILE).exists():
        shutil.rmtree(out_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name="config")
def main(cfg: DictConfig) -> dict:
    """Run one job (a Hydra multirun calls this once per job)."""
    from . import runner  # torch: imported where a job runs; a launcher's parent (joblib's) never needs it

    cpu.configure_process()  # here too: joblib / submitit workers call main() without cli()
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        summary = runner.execute(cfg, out_dir, workers=_parallel_workers(hc))
    except ConfigError as exc:
        print(f"mnist1d_lab: error: {exc}", file=sys.stderr)
        _discard(out_dir)
        sys.exit(2)
    if summary.get("status") == "failed":
        log.error("FAILED: %s (record: %s)", summary.get("error"), out_dir)
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


def cli() -> None:
    """Console entry: check group names first, then hand over to Hydra."""
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as exc:
        print(f"mnist1d_lab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    cpu.configure_process()  # malloc keeps freed memory; no final garbage collections at exit (cpu.py)
    register_plugins()
    main()


if __name__ == "__main__":
    cli()
