"""Nothing lost, nothing misleading: every job of a sweep checked before any launches, failures recorded
and reported by the exit code, unknown keys and impossible values rejected in one line, run keys that
ignore int/float spelling, progress that describes this sweep, dry runs, file modes that follow the
umask, one dataset generation for parallel jobs, a private CI script, collected rows in job order."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, compose_cfg, lab_env, lab_imports, run_lab, summaries, sweep_dirs

from mnist1d_lab import records, runner
from mnist1d_lab.errors import ConfigError

EXAMPLE = Path(__file__).parent / "lab_example"
EXAMPLE_ARGS = ["experiment=example", f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "batched": ["hydra/launcher=batched"]}


def run_example(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m mnist1d_lab -m? experiment=example ...` (tests/lab_example), not checked."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    env = {**lab_env(tmp), "PYTHONPATH": str(EXAMPLE.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mnist1d_lab", *flags, *EXAMPLE_ARGS, *overrides], cwd=tmp,
                          env=env, capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Assert exit 2 and a single stderr line `mnist1d_lab: error: ...` holding every word; return it."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = [s for s in proc.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("mnist1d_lab: error: "), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def nothing_written(tmp: Path) -> bool:
    out = tmp / "outputs"
    return not list(out.rglob("summary.json")) and not (out / "store").exists() and not (out / "multirun").exists()


# 1. every job of a sweep is validated before any job launches

def test_a_bad_job_stops_the_sweep_before_any_job_runs(tmp_path):
    proc = run_lab(tmp_path, "-m", "model=mlp", "model.width=8,0", *TINY, "hydra/launcher=joblib",
                   "hydra.launcher.n_jobs=2", check=False)
    one_error_line(proc, "job #1", "model.width=0", "a positive integer")
    assert nothing_written(tmp_path)


def test_a_rerun_whose_jobs_are_all_done_validates_nothing_and_never_imports_torch(tmp_path):
    args = ["-m", "model=logistic", "seed=0,1", *TINY]
    run_lab(tmp_path, *args)
    assert lab_imports(tmp_path, ["torch"], *args) == set()  # finished jobs ran with their config: not re-checked


# 2 and the fault injection: a run that fails at run time exits non-zero; in a sweep only at the end

def test_a_failed_single_run_is_recorded_then_exits_1(tmp_path):
    proc = run_example(tmp_path, "example.fail_seed=0")
    assert proc.returncode == 1, proc.stderr
    (summary,) = summaries(tmp_path / "outputs" / "runs")
    assert summary["status"] == "failed" and "fails on purpose" in summary["error"]
    assert proc.stderr.strip().splitlines()[-1].startswith("mnist1d_lab: error: the run failed: RuntimeError")


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_job_failing_at_run_time_costs_no_other_job_its_record(tmp_path, launcher):
    proc = run_example(tmp_path, "-m", "seed=0,1,2", "example.fail_seed=1", *LAUNCHERS[launcher])
    assert proc.returncode == 1, proc.stderr
    assert "1 of 3 jobs failed (job 1)" in proc.stderr.strip().splitlines()[-1]
    (sweep,) = sweep_dirs(tmp_path)
    for job in ("0", "2"):
        assert records.is_done(sweep / job) and records.read_summary(sweep / job)["status"] == "complete"
        assert records.artifact_path(sweep / job, "values.npz").is_file()
    failed = records.read_summary(sweep / "1")
    assert failed["status"] == "failed" and "fails on purpose" in failed["error"]
    table = pd.read_csv(sweep / "results.csv")
    assert dict(zip(table["seed"], table["status"], strict=True)) == {0: "complete", 1: "failed", 2: "complete"}


def test_a_config_error_at_run_time_in_a_sweep_is_recorded(tmp_path, monkeypatch):
    from mnist1d_lab.experiments import train as train_exp

    def bad_input(*a, **k):
        raise ConfigError("train.batch_size", 5000, "at most the training set size 4000")

    monkeypatch.setattr(train_exp, "run", bad_input)
    cfg = compose_cfg(*TINY, f"paths.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'c'}")
    with pytest.raises(ConfigError):  # a single run: bad input, exit 2 at the entry point
        runner.execute(cfg, tmp_path / "single")
    summary = runner.execute(cfg, tmp_path / "job", in_sweep=True)  # a sweep's job: recorded, the sweep goes on
    assert summary["status"] == "failed" and "train.batch_size=5000" in summary["error"]
    assert records.read_summary(tmp_path / "job")["status"] == "failed"


# 3. impossible values: one line, exit 2, before any work

@pytest.mark.parametrize("arg,key", [
    ("seed=-1", "seed"), ("seed=1180591620717411303424", "seed"), ("model.padding=-1", "model.padding"),
    ("model.kernel_sizes=[0,3,3]", "model.kernel_sizes")])
def test_impossible_values_are_rejected_up_front(tmp_path, arg, key):
    one_error_line(run_lab(tmp_path, arg, *TINY, check=False), key)
    assert not list((tmp_path / "outputs").rglob("summary.json"))


def test_seed_range_and_model_values_unit():
    runner.validate(compose_cfg(f"seed={2**63 - 1}"))
    for bad in (["seed=-1"], [f"seed={2**63}"], ["model.depth=4", "model.kernel_sizes=[5,3,3]"],
                ["model=cnn_pool", "model.pool_size=40"], ["+model.pool=max"],  # length 40 -> 0 at the 3rd layer
                ["model=mlp", "model.residual=1"], ["model=gru", "model.bidirectional=2"]):
        with pytest.raises(ConfigError):
            runner.validate(compose_cfg(*bad))


# 4. unknown keys: train, model (per family), an experiment's own node

@pytest.mark.parametrize("args,words", [
    (["+train.stpes=10"], ["train.stpes", "did you mean train.steps?"]),
    (["model=mlp", "+model.widht=3"], ["model.widht", "did you mean model.width?"]),
    (["+model.foo=1"], ["model.foo", "model.name=cnn", "channels"]),
])
def test_unknown_keys_are_rejected_naming_the_nearest(tmp_path, args, words):
    one_error_line(run_lab(tmp_path, *args, *TINY, check=False), *words)
    assert nothing_written(tmp_path)


def test_an_experiments_own_node_rejects_unknown_keys(tmp_path):
    proc = run_example(tmp_path, "+example.stagez=2")
    one_error_line(proc, "example.stagez", "did you mean example.stages?")
    assert nothing_written(tmp_path)


def test_keys_of_a_model_family_are_its_constructors():
    runner.validate(compose_cfg("+model.pool=max", "model.stride=1"))  # a CNN knob outside conf/model/cnn.yaml
    with pytest.raises(ConfigError, match="model.channels"):
        runner.validate(compose_cfg("model=mlp", "+model.channels=3"))


# 5. Hydra's own errors before any job: one line, exit 2, the key and what is allowed

@pytest.mark.parametrize("args,words", [
    (["train.stpes=10"], ["train.stpes", "did you mean train.steps?", "eval_every"]),
    (["paths.output_dir=/proc/nope"], ["paths.output_dir", "/proc/nope"]),
    (["hydra/launcher=nosuch", "-m", "seed=0,1"], ["hydra/launcher='nosuch'", "joblib", "batched"]),
])
def test_hydra_errors_are_one_line(tmp_path, args, words):
    one_error_line(run_lab(tmp_path, *args, *TINY, check=False), *words)


# 6. run keys: an integer for a float knob is the same run

def test_run_key_casts_integers_given_for_float_knobs():
    assert records.run_key(compose_cfg("train.lr=1")) == records.run_key(compose_cfg("train.lr=1.0"))
    assert records.run_key(compose_cfg("data.shear_scale=1")) == records.run_key(compose_cfg("data.shear_scale=1.0"))
    assert records.run_key(compose_cfg("train.lr=1")) != records.run_key(compose_cfg())
    assert records.run_key(compose_cfg("++dry_run=true")) == records.run_key(compose_cfg())


# 7. progress describes this sweep, also when run again into the same folder

def test_progress_counts_only_this_run_of_a_sweep_folder(tmp_path):
    args = ["-m", "model=logistic", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY]
    run_lab(tmp_path, *args)
    proc = run_lab(tmp_path, *args)
    out = proc.stdout + proc.stderr
    assert "sweep: 2/2 runs done (2 skipped" in out and "3/2" not in out and "4/2" not in out


# 8. dry_run=true: the plan, nothing trained or written

def test_dry_run_of_a_large_sweep_writes_nothing(tmp_path):
    proc = run_lab(tmp_path, "experiment=double_descent", "model.width=range(1,200)", "dry_run=true")
    assert "dry run: 398 job(s), 0 already in the store, 398 to run (hydra/launcher=batched)" in proc.stdout
    assert "batched: 2 group(s)" in proc.stdout and "#0 " in proc.stdout and "estimated time" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_dry_run_counts_the_store_and_estimates_from_it(tmp_path):
    run_lab(tmp_path, "model=logistic", *TINY)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "outputs").rglob("*"))
    proc = run_lab(tmp_path, "-m", "model=logistic", "seed=0,1", *TINY, "dry_run=true")
    assert "dry run: 2 job(s), 1 already in the store, 1 to run" in proc.stdout
    assert "estimated time: about" in proc.stdout and "#1 " in proc.stdout and "#0 " not in proc.stdout
    proc = run_lab(tmp_path, "model=logistic", "seed=5", *TINY, "dry_run=true")
    assert "dry run: 1 job(s), 0 already in the store, 1 to run" in proc.stdout
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "outputs").rglob("*")) == before
    one_error_line(run_lab(tmp_path, "model.padding=-1", "dry_run=true", check=False), "model.padding")


# 9. files follow the user's umask

_UMASK_SCRIPT = """
import os, sys
os.umask(0o027)
from pathlib import Path
import numpy as np
from mnist1d_lab import records
from mnist1d_lab.context import write_bytes_atomic
from mnist1d_lab.data.store import write_npz
t = Path(sys.argv[1])
records.write_atomic(t / "a.txt", "x")
write_bytes_atomic(t / "b.bin", b"x")
write_npz(t / "c.npz", {"x": np.zeros(2)})
records.write_record(t / "run", {"seed": 0}, {"status": "complete", "run_key": "k"}, "step\\n0\\n", {})
records.file_into_store(t / "run", t / "store" / "k")
for p in sorted(t.rglob("*")):
    print(p.relative_to(t), oct(p.stat().st_mode & 0o777))
"""


def test_files_and_store_folders_follow_the_umask(tmp_path):
    out = subprocess.run([sys.executable, "-c", _UMASK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    modes = dict(line.split() for line in out.splitlines())
    for name in ("a.txt", "b.bin", "c.npz", "store/k/summary.json", "store/k/config.yaml", "run/summary.json"):
        assert modes[name] == "0o640", (name, modes)
    assert modes["store/k"] == "0o750", modes


def test_a_runs_store_files_have_the_umasks_mode(tmp_path):
    run_lab(tmp_path, "model=logistic", *TINY)
    mask = os.umask(0o022)
    os.umask(mask)
    (store,) = (tmp_path / "outputs" / "store").iterdir()
    assert stat.S_IMODE(store.stat().st_mode) == 0o777 & ~mask
    for f in (store / "summary.json", store / "curves.csv", *(tmp_path / "cache").glob("*.npz")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


# 10. parallel jobs needing the same new dataset: one generates it, the others wait

def test_one_job_generates_a_new_dataset_the_others_wait(tmp_path):
    from mnist1d_lab.data import knobs, store

    a = {**knobs({"num_samples": 200, "seed": 3}), "cache_dir": str(tmp_path)}
    calls, results = [], []
    gate = threading.Barrier(4)

    def make(knob_dict):
        calls.append(1)
        from mnist1d_lab.data.exact import make_dataset

        return make_dataset(knob_dict)

    def job():
        gate.wait()
        results.append(store.cached(a, make))

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4
    assert all(np.array_equal(r["x"], results[0]["x"]) for r in results)
    assert [p.name for p in tmp_path.glob("*.npz")] == [store.cache_path(a).name]
    assert not list(tmp_path.glob("*.tmp"))


# 11. two CI runs at once: each runs its own script

def test_two_ci_runs_at_once_use_private_scripts(tmp_path):
    stubs = tmp_path / "bin"  # tools the script may install first (a browser): present, so nothing is installed
    stubs.mkdir()
    for tool in ("chromium",):
        (stubs / tool).write_text("#!/bin/sh\n")
        (stubs / tool).chmod(0o755)
    procs = []
    for name in ("first", "second"):
        clone = tmp_path / name
        (clone / ".ci").mkdir(parents=True)
        shutil.copy(Path(__file__).parents[1] / ".ci" / "run", clone / ".ci" / "run")
        wait = "sleep 2; " if name == "first" else ""  # the first writes its script, then the second writes its own
        (clone / "README.md").write_text(f"```bash\n{wait}echo {name}-one\n```\n\n```bash\necho {name}-two\n```\n")
        env = {**os.environ, "TMPDIR": str(tmp_path), "MNIST1D_LAB_CACHE": str(tmp_path / "cache"),
               "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
        procs.append(subprocess.Popen(["bash", str(clone / ".ci" / "run")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for name, out in zip(("first", "second"), outs, strict=True):
        assert f"\n{name}-one\n" in out and f"\n{name}-two\n" in out, out
        assert ("first" if name == "second" else "second") + "-one" not in out.replace(f"echo {name}", ""), out
    assert not list(tmp_path.glob("mnist1d_lab_ci_blocks*")), "the private script is removed at exit"


# 12. collected rows come in job order

def test_collect_orders_rows_by_job_number(tmp_path):
    from mnist1d_lab.collect import main as collect_main

    for num in range(12):
        records.write_record(tmp_path / str(num), {"seed": num}, {"status": "complete", "run_key": f"k{num}"},
                             None, {})
    assert collect_main([str(tmp_path), "--no-summary"]) == 0
    assert list(pd.read_csv(tmp_path / "results.csv")["seed"]) == list(range(12))
