"""The experiment contract: run keys that never change, records with artifacts, stages and predictions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, compose_cfg, lab_env, run_lab, sweep_dirs

from mnist1d_lab import experiments, records, train
from mnist1d_lab.data import load

# Keys of configs as composed before the experiment contract existed: every result already in a user's
# store must stay found (a new knob at its neutral default, or save_model, never changes a key).
PINNED_KEYS = {
    (): "5ab1b57ca9a48269",
    ("model=mlp",): "d94f2e3ed932f4b9",
    ("experiment=benchmark", "model=gru"): "6c8ade5ca68273c2",
    ("experiment=double_descent", "model=cnn", "model.channels=10"): "32ec679faafe9af5",
}


@pytest.mark.parametrize("overrides", list(PINNED_KEYS))
def test_run_keys_are_pinned(overrides):
    assert records.run_key(compose_cfg(*overrides)) == PINNED_KEYS[overrides]


def test_result_neutral_knobs_keep_the_key():
    base = records.run_key(compose_cfg())
    assert records.run_key(compose_cfg("save_model=true")) == base
    assert records.run_key(compose_cfg("++data.roll=0")) == base
    assert records.run_key(compose_cfg("++data.roll=3")) != base


def test_registry_modules_have_run_and_docstring():
    for name in experiments.EXPERIMENTS:
        module = experiments.get(name)
        assert callable(module.run), name
        assert "Command:" in (module.__doc__ or "") or "python -m mnist1d_lab" in (module.__doc__ or ""), name


def test_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(Exception, match="one of"):
        experiments.get("nosuch")


def test_confusion_matrix_counts():
    true, pred = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    m = records.confusion_matrix(true, pred, 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    text = records.confusion_csv(m)
    assert text.splitlines()[0] == "true,pred_0,pred_1,pred_2" and text.splitlines()[3] == "2,1,0,2"


# --- the minimal example experiment (tests/lab_example) end to end, through the real entry point ---

EXAMPLE = Path(__file__).parent / "lab_example"
EXAMPLE_ARGS = ["experiment=example", f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"]


def example_env(tmp: Path, **extra: str) -> dict:
    return {**lab_env(tmp), "PYTHONPATH": str(EXAMPLE.parent), "OMP_NUM_THREADS": "1", **extra}


def run_example(tmp: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    proc = subprocess.run([sys.executable, "-m", "mnist1d_lab", *flags, *EXAMPLE_ARGS, *overrides], cwd=tmp,
                          env=example_env(tmp, **env), capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "batched": ["hydra/launcher=batched"]}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_example_experiment_under_every_launcher(tmp_path, launcher):
    run_example(tmp_path, "-m", "seed=0,1", *LAUNCHERS[launcher])
    first = sweep_dirs(tmp_path)[-1]
    for job in ("0", "1"):
        values = records.load_artifact(first / job, "values.npz")
        assert sorted(values) == ["stage_01", "stage_02", "stage_03", "stage_04"]
        assert records.read_summary(first / job)["status"] == "complete"
    stages = pd.read_csv(first / "stages.csv")
    assert len(stages) == 8 and set(stages["seed"]) == {0, 1} and stages["run_key"].nunique() == 2
    assert (first / "results.csv").is_file()

    proc = run_example(tmp_path, "-m", "seed=0,1", *LAUNCHERS[launcher])  # everything is in the store now
    second = sweep_dirs(tmp_path)[-1]
    assert second != first and "stage stage_01: computed" not in proc.stderr + proc.stdout
    for job in ("0", "1"):
        assert records.read_summary(second / job)["status"] == "complete"
        assert (second / job / "artifacts" / "values.npz").read_bytes() == \
            (first / job / "artifacts" / "values.npz").read_bytes()


def test_killed_multistage_run_resumes_after_its_last_stage(tmp_path):
    full = tmp_path / "uninterrupted"
    full.mkdir()
    run_example(full, "seed=3", "example.stages=5")
    proc = run_example(tmp_path, "seed=3", "example.stages=5", check=False, LAB_EXAMPLE_KILL_AFTER="2")
    assert proc.returncode == -signal.SIGKILL
    assert not list((tmp_path / "outputs" / "store").glob("*/summary.json"))  # nothing filed yet
    proc = run_example(tmp_path, "seed=3", "example.stages=5")
    log = proc.stdout + proc.stderr
    assert "stage stage_01: restored" in log and "stage stage_02: restored" in log
    assert "stage stage_01: computed" not in log and "stage stage_02: computed" not in log
    assert "stage stage_03: computed" in log and "stage stage_05: computed" in log
    resumed, = (tmp_path / "outputs" / "store").iterdir()
    reference, = (full / "outputs" / "store").iterdir()
    assert resumed.name == reference.name
    for name in ("stages.csv", "artifacts/values.npz"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (tmp_path / "outputs" / "partial" / resumed.name).exists()  # checkpoints go once filed


def test_save_model_is_not_in_the_key_but_reruns_without_weights(tmp_path):
    args = ["model=mlp", "model.width=8", *TINY]
    run_lab(tmp_path, *args)
    proc = run_lab(tmp_path, *args, "save_model=true")
    assert "complete: test accuracy" in proc.stdout + proc.stderr  # the store had no weights: the job ran again
    store, = (tmp_path / "outputs" / "store").iterdir()
    model = records.load_model(store)
    pred = records.load_artifact(store, "test_pred.npy")
    data = load(compose_cfg(*args).data)
    assert np.array_equal(train.predict(model, data.x_test.to(next(model.parameters()).dtype)), pred)
    assert records.confusion(store).sum() == len(pred)
    proc = run_lab(tmp_path, *args, "save_model=true")
    assert "skipped, already done" in proc.stdout + proc.stderr


def test_importing_the_library_changes_no_process_wide_state():
    """Process-wide settings (malloc thresholds, exit handlers, matplotlib style) come from entry points."""
    code = """import atexit, pkgutil, importlib, matplotlib
import concurrent.futures, matplotlib.pyplot, pandas, scipy.ndimage, torch, tqdm  # their own exit handlers
before, style = atexit._ncallbacks(), dict(matplotlib.rcParams)
import mnist1d_lab
for m in pkgutil.walk_packages(mnist1d_lab.__path__, "mnist1d_lab."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
from mnist1d_lab import cpu
assert cpu._keep_freed_memory.cache_info().currsize == 0, "mallopt at import"
assert atexit._ncallbacks() == before, "exit handler registered at import"
assert dict(matplotlib.rcParams) == style, "matplotlib style changed at import"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_learned_activation_is_keyed_by_file_content(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    a.write_bytes(b"same"), b.write_bytes(b"same"), c.write_bytes(b"other")
    key = {p: records.run_key(compose_cfg("model=mlp", "model.activation=learned", f"+model.activation_path={p}"))
           for p in (a, b, c)}
    assert key[a] == key[b] != key[c]


def test_an_experiments_neutral_keys_stay_out_of_its_key():
    base = compose_cfg("experiment=classwise")
    assert records.run_key(base) == records.run_key(compose_cfg("experiment=classwise", "human.quiz_dir=/elsewhere"))
    assert records.run_key(base) != records.run_key(compose_cfg("experiment=classwise", "seed=5"))
