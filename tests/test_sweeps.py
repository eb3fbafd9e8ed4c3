"""Sweeps: kill-and-resume, launchers giving identical tables, a shared dataset cache under parallel
jobs, thread counts, sweep folders that never collide, progress, the design's commands (Slurm's
composed launcher config among them) and skips before launch. ComposeCache: test_compose_cache.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import TINY, lab_env, run_lab, summaries, sweep_dirs
from omegaconf import OmegaConf

from mnist1d_lab import callbacks, records
from mnist1d_lab.callbacks import count_jobs

TIMING = ["wall_time_s", "record_dir"]


def test_kill_mid_sweep_then_resume_runs_each_job_exactly_once(tmp_path):
    args = ["-m", "model=mlp", "seed=0,1,2,3,4,5", "data.num_samples=500", "train.steps=400",
            "train.eval_every=200", "progress=false", "num_threads=1"]
    cmd = [sys.executable, "-m", "mnist1d_lab", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=lab_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    store = tmp_path / "outputs" / "store"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(store.glob("*/summary.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # SIGKILL: no cleanup of any kind
    proc.wait()
    done_before = len(list(store.glob("*/summary.json")))
    assert 2 <= done_before < 6, "the sweep should have been killed half-way"
    second = run_lab(tmp_path, *args)
    assert f"{done_before} skipped" in second.stdout + second.stderr
    table = records.collect(store)
    assert len(table) == 6 and table["seed"].tolist() != [] and sorted(table["seed"]) == [0, 1, 2, 3, 4, 5]
    assert set(table["status"]) == {"complete"} and table["run_key"].is_unique
    resumed = sweep_dirs(tmp_path)[-1]
    assert len(records.collect(resumed)) == 6  # the resumed sweep folder holds every run once


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_give_identical_tables(tmp_path, launcher):
    sweep = ["-m", "model=logistic,mlp", "seed=0,1", *TINY]
    for sub in ("basic", launcher):
        (tmp_path / sub).mkdir()
    run_lab(tmp_path / "basic", *sweep)
    extra = ["hydra.launcher.timeout_min=10"] if launcher == "submitit_local" else ["hydra.launcher.n_jobs=2"]
    run_lab(tmp_path / launcher, *sweep, f"hydra/launcher={launcher}", *extra, timeout=600)
    tables = []
    for sub in ("basic", launcher):
        (sweep_dir,) = sweep_dirs(tmp_path / sub)
        t = pd.read_csv(sweep_dir / "results.csv") if (sweep_dir / "results.csv").is_file() else records.collect(sweep_dir)
        tables.append(t.drop(columns=[c for c in TIMING if c in t]).sort_values("run_key").reset_index(drop=True))
    assert len(tables[0]) == 4
    metrics = [c for c in tables[0].columns if c.startswith(("final_", "best_", "status", "run_key", "num_params"))]
    pd.testing.assert_frame_equal(tables[0][metrics], tables[1][metrics])


def test_parallel_jobs_share_one_dataset_cache_safely(tmp_path):
    run_lab(tmp_path, "-m", "model=logistic", "seed=0,1,2,3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "data.seed=7", *TINY)
    cache_files = list((tmp_path / "cache").rglob("*"))
    assert cache_files and not [f for f in cache_files if f.name.endswith(".tmp")]
    envs = [json.loads(p.read_text()) for p in (tmp_path / "outputs" / "multirun").rglob("env.json")]
    assert len(envs) == 4 and all(e["num_threads"] == 1 for e in envs)
    logs = list((tmp_path / "outputs" / "multirun").rglob("__main__.log"))  # the workers' logs, complete at exit
    assert len(logs) == 4 and all("/4 runs done" in p.read_text().splitlines()[-1] for p in logs)
    from mnist1d_lab.data import load

    os.environ["MNIST1D_LAB_CACHE"] = str(tmp_path / "cache")
    try:  # the cached file is complete and equals a fresh generation
        fresh = load({"num_samples": 500, "seed": 7, "cache": False})
        cached = load({"num_samples": 500, "seed": 7})
    finally:
        del os.environ["MNIST1D_LAB_CACHE"]
    assert (fresh.x == cached.x).all() and (fresh.y == cached.y).all()


def test_joblib_workers_run_one_thread_each_whatever_the_cores(tmp_path):
    """num_threads=null is one torch thread per job under every launcher (a function of the config, never of
    the cores), so two workers share two cores without oversubscription and give the basic launcher's numbers."""
    args = ["-m", "model=logistic", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            *[a for a in TINY if not a.startswith("num_threads")]]
    run_lab(tmp_path, *args)
    envs = [json.loads(p.read_text()) for p in (tmp_path / "outputs" / "multirun").rglob("env.json")]
    assert len(envs) == 2 and {e["num_threads"] for e in envs} == {1}
    assert all(e["omp_wait_policy"] == "PASSIVE" for e in envs)


def test_two_sweeps_started_together_get_different_folders(tmp_path):
    cmd = [sys.executable, "-m", "mnist1d_lab", "-m", "model=logistic", "seed=0", *TINY]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=lab_env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len(sweep_dirs(tmp_path)) == 2


def test_count_jobs_for_progress():
    assert count_jobs(["model=mlp", "model.width=range(1,200,40)"], {"seed": "0,1,2", "model": "a,b"}) == 15
    assert count_jobs(["data.shear_scale=0,0.75,1.5", "data.corr_noise_scale=0,0.25"], None) == 6


def test_eta_weighs_remaining_jobs_by_planned_cost(tmp_path, monkeypatch):
    clock = [1000.0]  # a fake clock: the ETA is arithmetic on time stamps, not a measurement
    monkeypatch.setattr(callbacks, "time", SimpleNamespace(time=lambda: clock[0]))
    callbacks.set_total(tmp_path, 6)
    callbacks.count_job(tmp_path, "skipped", 5)
    callbacks.count_job(tmp_path, "complete", 0)
    callbacks.count_job(tmp_path, "complete", 1)
    clock[0] += 100
    assert callbacks.progress_line(tmp_path).endswith("1:40 elapsed, ETA 2:30")  # by count: 3 more runs like these 2
    callbacks.plan_jobs(tmp_path, [{0: 1.0}, {1: 1.0}, {4: 2.0}])
    callbacks.plan_jobs(tmp_path, [{2: 6.0, 3: 2.0}])  # plans merge (the launcher plans lone and stacked jobs)
    clock[0] += 50
    assert callbacks.progress_line(tmp_path).endswith("ETA 4:10")  # 50 s since the plan per 2 units, 10 left
    callbacks.count_job(tmp_path, "complete", 3)  # job 2 trained in the same stack: done too
    assert callbacks.progress_line(tmp_path).endswith("ETA 0:10")  # 50 s per 10 units, 2 left
    callbacks.count_job(tmp_path, "complete", 7)  # a job the plan does not know: back to counting
    clock[0] += 10
    assert callbacks.progress_line(tmp_path).endswith("ETA 0:40")  # 4 ran in 160 s, 1 left by count


def test_the_design_commands_work_from_any_folder(tmp_path):
    elsewhere = tmp_path / "some" / "other" / "folder"
    elsewhere.mkdir(parents=True)
    proc = run_lab(tmp_path, "-m", "experiment=benchmark", "model=mlp", "model.width=range(1,200,40)",
                   "seed=0", "data.shuffle_seq=false", *TINY, cwd=elsewhere)
    assert "5/5 runs done" in proc.stdout + proc.stderr
    proc = run_lab(tmp_path, "-m", "data.shear_scale=0,0.75,1.5", "data.corr_noise_scale=0,0.25", "model=logistic",
                   *TINY, cwd=elsewhere)
    assert "6/6 runs done" in proc.stdout + proc.stderr
    assert len(summaries(tmp_path / "outputs" / "store")) == 11
    assert not (elsewhere / "outputs").exists()  # outputs go where MNIST1D_LAB_OUTPUTS says


def test_slurm_command_composes(tmp_path):
    """The Slurm command's `hydra` node, parsed: the submitit plugin's Slurm launcher config (its target
    class and its own keys), with the command line's values typed."""
    from hydra.utils import get_class
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    proc = run_lab(tmp_path, "experiment=benchmark", "hydra/launcher=submitit_slurm",
                   "hydra.launcher.partition=gpu", "hydra.launcher.cpus_per_task=2", "hydra.launcher.timeout_min=60",
                   "--cfg", "hydra")
    launcher = OmegaConf.to_container(OmegaConf.create(proc.stdout).hydra.launcher)  # unresolved, as composed
    assert get_class(launcher["_target_"]) is SlurmLauncher
    assert set(launcher) == {f.name for f in dataclasses.fields(SlurmQueueConf)}  # the plugin's own config
    assert launcher["submitit_folder"] == SlurmQueueConf.submitit_folder and launcher["nodes"] == 1  # its defaults
    assert (launcher["partition"], launcher["cpus_per_task"], launcher["timeout_min"]) == ("gpu", 2, 60)


def test_saved_sweep_yaml_narrowed_on_the_command_line(tmp_path):
    proc = run_lab(tmp_path, "sweep=noise_shear", "model=logistic", "data.corr_noise_scale=0", *TINY)
    assert "3/3 runs done" in proc.stdout + proc.stderr
    table = records.collect(sweep_dirs(tmp_path)[0])
    assert sorted(table["data.shear_scale"]) == [0.0, 0.75, 1.5] and set(table["data.corr_noise_scale"]) == {0.0}


def test_batched_launcher_records_match_the_sequential_path_and_resume_member_by_member(tmp_path):
    sweep = ["-m", "model=mlp", "model.width=4,8,16", "seed=0,1", *TINY]
    for sub in ("basic", "batched"):
        (tmp_path / sub).mkdir()
    run_lab(tmp_path / "basic", *sweep)
    proc = run_lab(tmp_path / "batched", *sweep, "hydra/launcher=batched")
    assert "as one batched program" in proc.stdout + proc.stderr
    basic, fused = (records.collect(sweep_dirs(tmp_path / s)[0]).sort_values("run_key").reset_index(drop=True)
                    for s in ("basic", "batched"))
    assert list(basic.columns) == list(fused.columns)  # identical in form: collect cannot tell them apart
    assert basic["run_key"].tolist() == fused["run_key"].tolist() and set(fused["status"]) == {"complete"}
    assert (basic["num_params"] == fused["num_params"]).all()
    assert (abs(basic["final_test_acc"] - fused["final_test_acc"]) < 0.05).all()  # float32: close, not equal
    for name in ("config.yaml", "curves.csv", "env.json", "summary.json", ".hydra/overrides.yaml"):
        assert len(list(sweep_dirs(tmp_path / "batched")[0].glob(f"*/{name}"))) == 6, name
    plan = json.loads((sweep_dirs(tmp_path / "batched")[0] / callbacks.PLAN_FILE).read_text())
    costs = plan["costs"]
    assert sorted(costs, key=int) == [str(i) for i in range(6)] and min(costs.values()) > 0  # the ETA's costs
    assert "ETA ?" not in (proc.stdout + proc.stderr).split("6/6 runs done")[0].split("1/6 runs done")[-1]
    # widen the sweep: only the new widths train, the finished members are skipped one by one
    again = run_lab(tmp_path / "batched", "-m", "model=mlp", "model.width=4,8,16,32", "seed=0,1", *TINY,
                    "hydra/launcher=batched", "num_threads=2", "hydra.launcher.side_by_side=false")
    out = again.stdout + again.stderr
    assert out.count("skipped: complete record") == 6 and "training 2 runs as one batched program" in out
    assert "side by side" not in out  # with 2 threads the MLP stack would be planned side by side otherwise


def test_collect_reports_failed_runs(tmp_path):
    from mnist1d_lab.collect import collect_sweep

    ok, bad = tmp_path / "0", tmp_path / "1"
    records.write_record(ok, {"seed": 0}, {"status": "complete", "run_key": "a"}, "step\n0\n", {})
    records.write_record(bad, {"seed": 1}, {"status": "failed", "run_key": "b", "error": "boom"}, None, {})
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "summary.json").write_text("{truncated")  # a half-written record is ignored
    table = collect_sweep(tmp_path, summarize=False)
    assert sorted(table["status"]) == ["complete", "failed"] and (tmp_path / "results.csv").is_file()


def test_finished_jobs_are_skipped_before_launch_keeping_job_numbers(tmp_path):
    run_lab(tmp_path, "-m", "model=logistic", "seed=1", *TINY)
    proc = run_lab(tmp_path, "-m", "model=logistic", "seed=0,1,2", *TINY)
    out = proc.stdout + proc.stderr
    assert out.count("skipped: complete record") == 1 and "3/3 runs done (1 skipped" in out
    second = sweep_dirs(tmp_path)[-1]
    assert not (second / "1" / ".hydra").exists() and (second / "0" / ".hydra").is_dir()  # #1 never launched
    table = records.collect(second)
    assert sorted(table["seed"]) == [0, 1, 2] and set(table["status"]) == {"complete"}
    nums = {d.name: OmegaConf.load(d / "config.yaml").seed for d in second.iterdir() if d.is_dir()}
    assert nums == {"0": 0, "1": 1, "2": 2}  # job numbers are the sweep's order, skipped or not
