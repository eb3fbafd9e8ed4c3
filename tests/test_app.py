"""The Hydra app end to end: configs compose, every model runs through the real entry point, records,
determinism, skip/force, bad input (one line, exit 2, nothing left behind), collect and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY, compose_cfg, run_lab, summaries, sweep_dirs

from mnist1d_lab import experiments, records, runner
from mnist1d_lab.batched import schedule

MODELS = ["logistic", "mlp", "cnn", "gru"]
EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_models_compose(model):
    cfg = compose_cfg(f"model={model}")
    assert cfg.model.name == model and cfg.train.steps == 6000 and cfg.train.lr == 0.01
    runner.validate(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.experiment_name in experiments.EXPERIMENTS  # every experiment file names a registered module
    runner.validate(cfg)


def test_every_registered_experiment_has_a_config_file():
    named = {compose_cfg(f"experiment={e}").experiment_name for e in EXPERIMENTS}
    assert set(experiments.EXPERIMENTS) - {"train"} <= named


def test_default_is_cnn_with_paper_protocol():
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.train.optimizer, cfg.train.batch_size, cfg.train.eval_every) == ("cnn", "adam", 100, 250)
    assert cfg.data.num_samples == 5000 and cfg.data.seed == 42


def test_run_key_ignores_paths_and_threads_but_not_knobs():
    a, b = compose_cfg(), compose_cfg("num_threads=1", "paths.output_dir=/elsewhere", "progress=false",
                                      "cuda_graphs=false")
    assert records.run_key(a) == records.run_key(b)
    assert records.run_key(a) != records.run_key(compose_cfg("seed=1"))
    assert records.run_key(a) != records.run_key(compose_cfg("data.shear_scale=0"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_runs_through_the_entry_point(tmp_path, model):
    proc = run_lab(tmp_path, f"model={model}", *TINY)
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    for name in ("config.yaml", "summary.json", "curves.csv", "env.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and 0 <= summary["final_test_acc"] <= 1
    assert summary["num_params"] == {"logistic": 410, "mlp": 15210, "cnn": 5210, "gru": 5134}[model]
    curves = pd.read_csv(run_dir / "curves.csv")
    assert list(curves.columns[:5]) == ["step", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert curves["step"].tolist() == [0, 10, 20]
    env = json.loads((run_dir / "env.json").read_text())
    assert env["versions"]["torch"] and env["seeds"]["seed"] == 0 and env["seeds"]["data.seed"] == 42
    assert "git_revision" in env and env["num_threads"] == 1
    assert "test accuracy" in proc.stdout + proc.stderr and str(run_dir) in proc.stdout + proc.stderr
    log_lines = (run_dir / "__main__.log").read_text().splitlines()  # flushed and closed at exit (cpu.fast_exit)
    assert "run folder:" in log_lines[-1]


def test_same_config_same_numbers_then_skip_then_force(tmp_path):
    run_lab(tmp_path, "model=mlp", *TINY)
    second = run_lab(tmp_path, "model=mlp", *TINY)
    assert "skipped" in second.stdout + second.stderr
    run_lab(tmp_path, "model=mlp", "force=true", *TINY)
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    curves = [pd.read_csv(d / "curves.csv") for d in runs]
    assert len(runs) == 3
    pd.testing.assert_frame_equal(curves[0], curves[1])
    pd.testing.assert_frame_equal(curves[0], curves[2])  # recomputed: the same numbers again


BAD = [
    ("model=foo", "model"), ("experiment=nope", "experiment"), ("model=mlp model.width=0", "model.width"),
    ("train.lr=-1", "train.lr"), ("train.steps=0", "train.steps"), ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=100000", "train.batch_size"), ("device=tpu", "device"), ("data.padding=[60,36]", "data.padding"),
    ("data.train_split=1.5", "data.train_split"),
]


@pytest.mark.parametrize("args,key", BAD)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, args, key):
    proc = run_lab(tmp_path, *args.split(), "progress=false", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [s for s in proc.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("mnist1d_lab: error: ") and key in lines[0], proc.stderr
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_unknown_model_lists_the_valid_ones(tmp_path):
    proc = run_lab(tmp_path, "model=transformer", check=False)
    assert proc.returncode == 2 and all(m in proc.stderr for m in MODELS)


def test_failed_run_is_recorded_and_not_stored(tmp_path, monkeypatch):
    from mnist1d_lab.experiments import train as train_exp

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(train_exp, "run", boom)
    cfg = compose_cfg(*TINY, f"paths.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}")
    summary = runner.execute(cfg, tmp_path / "job")
    assert summary["status"] == "failed" and "simulated crash" in summary["error"]
    assert records.read_summary(tmp_path / "job")["status"] == "failed"
    assert not (tmp_path / "store").exists()  # failed runs are retried next time


def test_stop_on_error_records_the_failure_then_stops(tmp_path, monkeypatch):
    from mnist1d_lab.experiments import train as train_exp

    monkeypatch.setattr(train_exp, "run", lambda *a, **k: 1 / 0)
    cfg = compose_cfg(*TINY, "stop_on_error=true", f"paths.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'c'}")
    with pytest.raises(RuntimeError, match="stop_on_error=true.*ZeroDivisionError"):
        runner.execute(cfg, tmp_path / "job")
    assert records.read_summary(tmp_path / "job")["status"] == "failed"


@pytest.mark.parametrize("stop", [False, True])
def test_a_failed_batched_stack_is_recorded_for_every_member(tmp_path, monkeypatch, stop):
    from mnist1d_lab import batched

    def boom(*a, **k):
        raise MemoryError("simulated")

    monkeypatch.setattr(batched, "train_batched", boom)
    cfgs = [compose_cfg(*TINY, "model=mlp", f"seed={s}", f"stop_on_error={stop}", f"paths.output_dir={tmp_path}",
                        f"data.cache_dir={tmp_path / 'c'}") for s in (0, 1)]
    dirs = [tmp_path / "0", tmp_path / "1"]
    if stop:
        with pytest.raises(RuntimeError, match="MemoryError: simulated"):
            schedule.execute_groups([(cfgs, dirs)])[0]
    else:
        assert [s["status"] for s in schedule.execute_groups([(cfgs, dirs)])[0]] == ["failed", "failed"]
    assert [records.read_summary(d)["error"] for d in dirs] == ["MemoryError: simulated"] * 2
    assert not (tmp_path / "store").exists()


def test_mlp_stacks_of_several_groups_train_side_by_side_with_one_threads_numbers(tmp_path, monkeypatch):
    import threading

    import torch

    from mnist1d_lab import batched

    calls = []  # (python thread, torch threads) of each stack
    state = {"active": 0, "most": 0, "barrier": None}  # stacks in flight now, at most; a meeting point
    lock = threading.Lock()
    real = batched.train_batched

    def spy(*args, **kwargs):
        with lock:
            state["active"] += 1
            state["most"] = max(state["most"], state["active"])
        try:
            if state["barrier"] is not None:  # side by side: both stacks must be in flight at once
                state["barrier"].wait()
            out = real(*args, **kwargs)
        finally:
            with lock:
                state["active"] -= 1
        calls.append((threading.get_ident(), torch.get_num_threads()))
        return out

    monkeypatch.setattr(batched, "train_batched", spy)

    def group(noise: float, threads: int, root: Path):  # two widths: one stack per group; side by side is a CPU schedule
        cfgs = [compose_cfg(*TINY, "model=mlp", f"model.width={w}", f"train.label_noise={noise}", "device=cpu",
                            f"num_threads={threads}", f"paths.output_dir={root}", f"data.cache_dir={tmp_path / 'c'}")
                for w in (4, 8)]
        return cfgs, [root / f"{noise}_{w}" for w in (4, 8)]

    seen = []
    state["barrier"] = threading.Barrier(2, timeout=60)  # broken (a failed stack) unless both run at once
    side = schedule.execute_groups([group(n, 2, tmp_path / "side") for n in (0.0, 0.2)],
                                   done=lambda g, i, s: seen.append((g, i, s["status"], threading.get_ident())))
    assert len(calls) == 2 and {c[1] for c in calls} == {1} and len({c[0] for c in calls}) == 2
    assert state["most"] == 2  # the two stacks were in flight together
    assert sorted(seen) == sorted((g, i, "complete", threading.get_ident()) for g in (0, 1) for i in (0, 1))
    assert {json.loads((d / "env.json").read_text())["num_threads"] for d in (tmp_path / "side").glob("0*")} == {1}
    calls.clear()
    state.update(most=0, barrier=None)
    alone = schedule.execute_groups([group(n, 1, tmp_path / "alone") for n in (0.0, 0.2)])  # one thread: in turn
    assert len(calls) == 2 and state["most"] == 1
    for a, b in zip(side[0] + side[1], alone[0] + alone[1], strict=True):  # same stacks on one thread: same bits
        assert (a["final_test_acc"], a["final_train_loss"]) == (b["final_test_acc"], b["final_train_loss"])
    calls.clear()
    state["most"] = 0
    schedule.execute_groups([group(n, 2, tmp_path / "off") for n in (0.0, 0.2)], side_by_side=False)
    assert len(calls) == 2 and {c[1] for c in calls} == {2} and state["most"] == 1  # in turn, 2 threads


@pytest.mark.parametrize("stop", [False, True])
def test_a_failed_stack_beside_another_is_recorded_and_stop_on_error_stops(tmp_path, monkeypatch, stop):
    from mnist1d_lab import batched

    real = batched.train_batched

    def boom_if_noisy(model_cfgs, seeds, data, cfg, **kwargs):
        if cfg["label_noise"] > 0:
            raise MemoryError("simulated")
        return real(model_cfgs, seeds, data, cfg, **kwargs)

    monkeypatch.setattr(batched, "train_batched", boom_if_noisy)
    groups = []
    for noise in (0.0, 0.2):
        cfgs = [compose_cfg(*TINY, "model=mlp", f"model.width={w}", f"train.label_noise={noise}", "num_threads=2",
                            f"stop_on_error={stop}", f"paths.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'c'}")
                for w in (4, 8)]
        groups.append((cfgs, [tmp_path / f"{noise}_{w}" for w in (4, 8)]))
    if stop:
        with pytest.raises(RuntimeError, match="MemoryError: simulated"):
            schedule.execute_groups(groups)
    else:
        out = schedule.execute_groups(groups)
        assert [[s["status"] for s in g] for g in out] == [["complete", "complete"], ["failed", "failed"]]
    assert [records.read_summary(d)["status"] for d in groups[1][1]] == ["failed", "failed"]
    # the stack running beside the failed one (started at once) finishes and is kept, even with stop
    assert [records.read_summary(d)["status"] for d in groups[0][1]] == ["complete", "complete"]
    assert len(list((tmp_path / "store").glob("*"))) == 2  # failed runs are never stored


def test_diverged_run_is_recorded(tmp_path):
    cfg = compose_cfg(*TINY, "model=mlp", "train.lr=1e9", "train.optimizer=sgd", f"paths.output_dir={tmp_path}",
                      f"data.cache_dir={tmp_path / 'cache'}")
    summary = runner.execute(cfg, tmp_path / "job")
    assert summary["status"] == "diverged"
    assert records.is_done(tmp_path / "store" / summary["run_key"])


def test_benchmark_experiment_smoke_and_collect(tmp_path):
    proc = run_lab(tmp_path, "experiment=benchmark", "seed=0,1", *TINY)
    (sweep,) = sweep_dirs(tmp_path)
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 16 and set(table["status"]) == {"complete"}
    assert (sweep / "results.parquet").is_file()
    t1 = pd.read_csv(sweep / "table1.csv")
    assert set(t1["model.name"]) == set(MODELS) and set(t1["seeds"]) == {2}
    assert {"final_test_acc_mean", "final_test_acc_std", "paper"} <= set(t1.columns)
    assert (sweep / "table1.md").is_file() and (sweep / "figure2.png").is_file() and (sweep / "figure2.pdf").is_file()
    assert "16/16 runs done" in proc.stdout + proc.stderr
    # the collect CLI rebuilds the same table
    (sweep / "results.csv").unlink()
    run_lab(tmp_path, str(sweep), module="mnist1d_lab.collect")
    assert len(pd.read_csv(sweep / "results.csv")) == 16
    # and plot draws a metric against a knob
    run_lab(tmp_path, str(sweep / "results.csv"), "x=model.name", "y=final_test_acc", "hue=data.shuffle_seq",
            module="mnist1d_lab.plot")
    assert (sweep / "plot_final_test_acc_vs_model.name.png").is_file()
    assert len(summaries(tmp_path / "outputs" / "store")) == 16


def test_durations_read_as_minutes_or_hours():
    from mnist1d_lab.clock import hms

    assert [hms(s) for s in (0, 59.6, 61, 3599, 3600, 5025.2, -3)] == [
        "0:00", "1:00", "1:01", "59:59", "1:00:00", "1:23:45", "0:00"]
    assert hms(float("inf")) == hms(float("nan")) == "?"
