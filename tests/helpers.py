"""Helpers for tests: composing the lab's config as the entry point does, and driving the real entry point
in a subprocess, inside a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TINY = ["data.num_samples=500", "train.steps=20", "train.eval_every=10", "progress=false", "num_threads=1"]


def compose_cfg(*overrides: str, hydra_config: bool = False):
    """The lab's config composed with `overrides`, our launcher and sweeper registered as the entry point
    does; with hydra_config, the `hydra` node too (the sweeper's grids and scales)."""
    from hydra import compose, initialize_config_module

    from mnist1d_lab.__main__ import register_plugins

    register_plugins()
    with initialize_config_module(config_module="mnist1d_lab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)


def lab_env(tmp: Path) -> dict:
    """Environment with outputs and the dataset cache inside tmp."""
    return {**os.environ, "MNIST1D_LAB_OUTPUTS": str(tmp / "outputs"), "MNIST1D_LAB_CACHE": str(tmp / "cache"),
            "HYDRA_FULL_ERROR": "0"}


def run_lab(tmp: Path, *args: str, module: str = "mnist1d_lab", timeout: int = 300, cwd: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """`python -m <module> args...` from a neutral working folder; asserts success when check."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or tmp, env=lab_env(tmp),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


# `python -m mnist1d_lab ARGS` in this process, then report which of the named modules it imported
_IMPORTS_AFTER_RUN = """import runpy, sys
modules, sys.argv = sys.argv[1].split(","), ["mnist1d_lab", *sys.argv[2:]]
try:
    runpy.run_module("mnist1d_lab", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print("imported:", ",".join(m for m in modules if m in sys.modules))
"""


def lab_imports(tmp: Path, modules: list[str], *args: str) -> set[str]:
    """Which of `modules` the process running `python -m mnist1d_lab args` imported (asserts success)."""
    proc = subprocess.run([sys.executable, "-c", _IMPORTS_AFTER_RUN, ",".join(modules), *args], cwd=tmp,
                          env=lab_env(tmp), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("imported:")][-1]
    return {m for m in line.partition(":")[2].strip().split(",") if m}


def summaries(root: Path) -> list[dict]:
    """Every summary.json below root, parsed."""
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("summary.json"))]


def sweep_dirs(tmp: Path) -> list[Path]:
    """The multirun folders created under tmp/outputs."""
    base = tmp / "outputs" / "multirun"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
