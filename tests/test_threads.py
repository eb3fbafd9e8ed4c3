"""Threads: a run's thread count and a batched sweep's plan follow the config, never the cores, so the same
config gives the same float32 bits on any machine; env.json says how many threads and why; the entry
points make waiting OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) and their joblib workers inherit it.
Timings under load are measured by scripts/bench_busy.py, not here."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, compose_cfg, lab_env, sweep_dirs
from omegaconf import OmegaConf

from mnist1d_lab import runner
from mnist1d_lab.batched import plan, schedule

ROOT = Path(__file__).resolve().parent.parent
UNSET = [a for a in TINY if not a.startswith("num_threads")]  # TINY with num_threads=null
DD_MLP = [2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 47, 61, 80, 104, 135, 177, 230, 300]  # Figure 4's grids
DD_CNN = [*range(2, 31, 2), *range(35, 101, 5)]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The runner sets torch's process-wide thread count: give the other tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _env(tmp: Path, **extra: str) -> dict:
    env = {k: v for k, v in lab_env(tmp).items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return {**env, **extra}


def _affinity() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


@pytest.mark.skipif(shutil.which("taskset") is None or not {0, 1} <= _affinity(), reason="needs taskset and CPUs 0, 1")
def test_a_default_run_gives_the_same_bits_on_one_core_and_on_two(tmp_path):
    """The default (num_threads=null) is one thread wherever it runs: 1 and 2 threads differ after 100 steps."""
    args = ["train.steps=100", "train.eval_every=50", "data.num_samples=1000", "progress=false"]
    curves = []
    for cpus in ("0", "0,1"):
        out = tmp_path / cpus / "outputs"
        proc = subprocess.run(["taskset", "-c", cpus, sys.executable, "-m", "mnist1d_lab", *args], cwd=tmp_path,
                              env=_env(tmp_path, MNIST1D_LAB_OUTPUTS=str(out)), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        (run,) = (out / "runs").iterdir()
        curves.append((run / "curves.csv").read_bytes())
        assert json.loads((run / "env.json").read_text())["num_threads"] == 1
    assert curves[0] == curves[1]


def _dd_groups(tmp: Path) -> list:
    """Figure 4's three grids as the batched launcher's groups (jobs that differ only in width)."""
    base = [f"paths.output_dir={tmp / 'outputs'}", f"data.cache_dir={tmp / 'cache'}", "progress=false"]
    groups = []
    for model, noise, widths in (("mlp", 0.0, DD_MLP), ("mlp", 0.15, DD_MLP), ("cnn", 0.15, DD_CNN)):
        extra = ["model.residual=false"] if model == "mlp" else []
        first = compose_cfg("experiment=double_descent", f"model={model}", *extra, f"train.label_noise={noise}", *base)
        cfgs = [first.copy() for _ in widths]
        for cfg, w in zip(cfgs, widths, strict=True):
            OmegaConf.update(cfg, "model.width" if model == "mlp" else "model.channels", w)
        groups.append((cfgs, [tmp / f"{model}{noise}_{w}" for w in widths]))
    return groups


class _Planned(Exception):
    """Raised from execute_groups' `planned` callback: the plan is made, nothing is trained."""


def _plan(groups, monkeypatch) -> dict:
    """What the batched launcher plans for `groups`: per planned stack, its members' widths, torch threads
    and the stacks of its group that train at once; and every job's share of the ETA."""
    stacks, real = [], plan.plan_stacks

    def spy(cfgs, n_train, batch_size, device, threads, budget_mb, side, costs=None):
        out = real(cfgs, n_train, batch_size, device, threads, budget_mb, side, costs)
        widths = [int(c.get("width") or c.get("channels")) for c in cfgs]
        stacks.extend((cfgs[0]["name"], [widths[i] for i in s.members], s.threads, side) for s in out)
        return out

    monkeypatch.setattr(plan, "plan_stacks", spy)
    shares = []

    def planned(jobs):
        shares.extend(jobs)
        raise _Planned

    with pytest.raises(_Planned):
        schedule.execute_groups(groups, memory_budget_mb=2048, planned=planned)
    monkeypatch.setattr(plan, "plan_stacks", real)
    return {"stacks": stacks, "shares": shares}


def _thread_answers() -> list:
    null, three = compose_cfg(*UNSET), compose_cfg(*UNSET, "num_threads=3")
    return [(int(t), t.reason) for t in (runner.default_threads(null), runner.default_threads(three),
                                         runner.setup_torch(null), runner.setup_torch(null, workers=4))]


def test_thread_counts_and_the_batched_plan_never_read_the_cores(tmp_path, monkeypatch):
    """os.cpu_count and the CPU affinity set to absurd values: the same thread counts, the same stacks,
    parts and threads for Figure 4's sweep, and that plan is the one it always had on 2 cores."""
    groups = _dd_groups(tmp_path)
    answers, planned = _thread_answers(), _plan(groups, monkeypatch)
    for cores in (1000, 1):
        monkeypatch.setattr(os, "cpu_count", lambda n=cores: n)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert _thread_answers() == answers, cores
        assert _plan(groups, monkeypatch) == planned, cores
    assert answers[0] == (1, "num_threads=null: one thread per plain run") and answers[1][0] == 3
    assert torch.get_num_threads() == 1  # setup_torch set it
    mlp = [[2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 47, 61], [80, 104, 135, 177], [230, 300]]
    assert [s for s in planned["stacks"] if s[0] == "mlp"] == [("mlp", m, 1, 2) for m in mlp] * 2
    cnn = [s for s in planned["stacks"] if s[0] == "cnn"]  # side by side too, one thread each
    assert sorted(c for s in cnn for c in s[1]) == DD_CNN and {(s[2], s[3]) for s in cnn} == {(1, 2)}


def test_num_threads_is_honoured_and_env_json_says_why(tmp_path):
    """num_threads=3 wins over the default; env.json records the count, the reason and the wait policy."""
    base = [*UNSET, "model=logistic", "force=true", f"paths.output_dir={tmp_path / 'outputs'}",
            f"data.cache_dir={tmp_path / 'c'}"]
    for threads, reason in ((3, "num_threads=3"), (1, "num_threads=null: one thread per plain run")):
        out = tmp_path / str(threads)
        extra = [f"num_threads={threads}"] if threads == 3 else []
        assert runner.execute(compose_cfg(*base, *extra), out)["status"] == "complete"
        assert torch.get_num_threads() == threads
        env = json.loads((out / "env.json").read_text())
        assert (env["num_threads"], env["threads_reason"]) == (threads, reason)
        assert env["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")  # whatever this process has


def test_batched_stacks_record_their_threads_and_why(tmp_path):
    """num_threads=null under the batched launcher: MLP and CNN stacks side by side on one thread each (the
    config's 2 threads, not the cores)."""
    base = [*UNSET, f"paths.output_dir={tmp_path / 'outputs'}", f"data.cache_dir={tmp_path / 'c'}", "device=cpu"]

    def group(model: str, noise: float) -> tuple:
        key = "width" if model == "mlp" else "channels"
        cfgs = [compose_cfg(*base, f"model={model}", f"model.{key}={w}", f"train.label_noise={noise}") for w in (4, 8)]
        return cfgs, [tmp_path / f"{model}{noise}_{w}" for w in (4, 8)]

    schedule.execute_groups([group("mlp", 0.0), group("mlp", 0.2), group("cnn", 0.0)])
    envs = {d.name: json.loads((d / "env.json").read_text()) for d in tmp_path.glob("*_*")}
    assert len(envs) == 6
    for name, env in envs.items():
        assert env["num_threads"] == 1, name
        assert env["threads_reason"].startswith("num_threads=null: the batched launcher's 2 threads;"), name
        assert "side by side, one thread each" in env["threads_reason"], name


def test_the_passive_wait_policy_reaches_joblib_workers_and_a_users_value_wins(tmp_path):
    run_sweep = subprocess.run([sys.executable, "-m", "mnist1d_lab", "-m", "model=logistic", "seed=0,1",
                                "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *UNSET], cwd=tmp_path,
                               env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert run_sweep.returncode == 0, run_sweep.stderr
    envs = [json.loads(p.read_text()) for p in sweep_dirs(tmp_path)[0].rglob("env.json")]
    assert len(envs) == 2 and {e["omp_wait_policy"] for e in envs} == {"PASSIVE"}
    assert {e["num_threads"] for e in envs} == {1}  # the config's count, whatever n_jobs is
    assert {e["threads_reason"] for e in envs} == {"num_threads=null: one thread per plain run (one of 2 jobs at once)"}
    (tmp_path / "user").mkdir()
    proc = subprocess.run([sys.executable, "-m", "mnist1d_lab", "model=logistic", *UNSET], cwd=tmp_path,
                          env=_env(tmp_path / "user", OMP_WAIT_POLICY="active"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "user" / "outputs" / "runs").iterdir()
    assert json.loads((run / "env.json").read_text())["omp_wait_policy"] == "active"


def _sets_passive_before_torch(path: Path) -> bool:
    """Whether a module's top level sets OMP_WAIT_POLICY before its first import other than os."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr) and "OMP_WAIT_POLICY" in ast.unparse(node):
            return True
        if isinstance(node, ast.Import | ast.ImportFrom) and not (
                isinstance(node, ast.ImportFrom) and node.module == "__future__") and ast.unparse(node) != "import os":
            return False
    return False


def test_entry_points_set_the_wait_policy_before_torch_loads_and_the_library_does_not():
    scripts = sorted((ROOT / "scripts").glob("bench_*.py"))
    assert scripts and ROOT / "scripts" / "bench_busy.py" in scripts
    for path in [ROOT / "mnist1d_lab" / "__main__.py", *scripts]:
        assert _sets_passive_before_torch(path), path
    code = """import importlib, os, pkgutil, mnist1d_lab
for m in pkgutil.walk_packages(mnist1d_lab.__path__, "mnist1d_lab."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
print("set" if "OMP_WAIT_POLICY" in os.environ else "unset")
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("unset"), proc.stderr
