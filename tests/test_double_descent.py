"""Double descent (Figure 4) at smoke size through the real entry point, the grids sweeper, the threshold."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import compose_cfg
from omegaconf import OmegaConf

from hydra_plugins.mnist1d_lab_launcher.grids import expand_grids, scaled
from mnist1d_lab.experiments import double_descent as dd
from mnist1d_lab.protocol import apply_label_noise

REPO = Path(__file__).resolve().parents[1]
CMD = [sys.executable, "-m", "mnist1d_lab", "experiment=double_descent", "scale=smoke"]


def _run(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MNIST1D_LAB_OUTPUTS": str(root / "out"), "MNIST1D_LAB_CACHE": str(root / "cache")}
    proc = subprocess.run(CMD, cwd=root, env=env, capture_output=True, text=True, timeout=180)  # not the repo: plugins must be found from anywhere
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _latest_sweep(root: Path) -> Path:
    return sorted((root / "out" / "multirun").iterdir())[-1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("dd")
    _run(root)
    return root, _latest_sweep(root)


def test_smoke_outputs(smoke):
    _, sweep = smoke
    for name in ("figure4.png", "figure4.pdf", "dd_results.csv", "dd_thresholds.csv", "dd_thresholds.md",
                 "results.csv", "dd_curves.csv", "figure4_epochs.png", "figure4_epochs.pdf"):
        assert (sweep / name).stat().st_size > 0, name
    res = pd.read_csv(sweep / "dd_results.csv")
    assert list(res.columns) == dd.RESULT_COLUMNS
    assert len(res) == 9  # 3 grids x 3 sizes
    mlp, cnn = res[res["model.name"] == "mlp"], res[res["model.name"] == "cnn"]
    assert (mlp["num_params"] == mlp["size"] ** 2 + 52 * mlp["size"] + 10).all()  # plain 40-h-h-10
    assert (cnn["num_params"] == 6 * cnn["size"] ** 2 + 58 * cnn["size"] + 10).all()
    assert sorted(res["train.label_noise"].unique()) == [0.0, 0.15]
    assert ((res["train_error"] >= 0) & (res["train_error"] <= 1)).all()
    thr = pd.read_csv(sweep / "dd_thresholds.csv")
    assert len(thr) == 3 and {"threshold_params", "peak_params", "n", "n_K"} <= set(thr.columns)
    assert (thr["n_K"] == 10 * thr["n"]).all() and (thr["n"] == 250).all()
    curves = pd.read_csv(sweep / "dd_curves.csv")  # epoch-wise: every run's evaluations, epochs from steps
    assert list(curves.columns) == dd.CURVE_COLUMNS
    assert curves.groupby(["model.name", "train.label_noise", "size"]).ngroups == 9
    steps_per_epoch = 3  # ceil(250 train rows / batch 100); scale=smoke trains 3 epochs, evaluates every 3 steps
    assert sorted(curves["step"].unique()) == [0, 3, 6, 9] and (curves["epoch"] == curves["step"] / steps_per_epoch).all()
    last = curves[curves["step"] == 9].merge(res, on=["model.name", "train.label_noise", "size"], suffixes=("", "_final"))
    assert len(last) == 9 and (last["test_error"] == last["test_error_final"]).all()


def test_smoke_label_noise_fraction(smoke):
    res = pd.read_csv(smoke[1] / "dd_results.csv")
    clean = res[res["train.label_noise"] == 0]["label_noise_changed_fraction"]
    noisy = res[res["train.label_noise"] > 0]["label_noise_changed_fraction"]
    assert (clean == 0).all()
    assert noisy.nunique() == 1  # same seed -> the same noisy labels for every size
    assert abs(noisy.iloc[0] - 0.15 * 0.9) < 0.07  # uniform: 1/10 of the picks keep their label (n = 250)


def test_label_noise_fraction_large_n():
    y = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    for mode, expected in (("uniform", 0.15 * 0.9), ("different", 0.15)):
        _, changed = apply_label_noise(y, 0.15, mode, torch.Generator().manual_seed(1))
        assert abs(changed - expected) < 0.003, mode


def test_rerun_skips(smoke):
    root, first = smoke
    proc = _run(root)
    log = proc.stdout + proc.stderr
    assert log.count("skipped: complete record") >= 9
    assert "batched program" not in log and "trained " not in log  # nothing retrained
    second = _latest_sweep(root)
    assert second != first and (second / "figure4.png").is_file()


def _grids(experiment: str, scale: str | None = None) -> tuple[dict, dict]:
    """The sweep's grids (with `scale`'s changes, as the lab sweeper applies them) and params."""
    cfg = compose_cfg(f"experiment={experiment}", *([f"scale={scale}"] if scale else []), hydra_config=True)
    sw = OmegaConf.to_container(cfg.hydra.sweeper)
    return scaled(sw["grids"], sw["scales"], scale), sw["params"]


def test_grids_width_sweep_keeps_mlp_grids():
    grids, params = _grids("double_descent")
    jobs, kept = expand_grids(grids, params, [])
    assert kept == ["mlp_clean", "mlp_noisy", "cnn_noisy"] and len(jobs) == 19 + 19 + 29
    jobs, kept = expand_grids(grids, params, ["experiment=double_descent", "model.width=range(1,200)"])
    assert kept == ["mlp_clean", "mlp_noisy"] and len(jobs) == 2 * 199
    assert all("experiment=double_descent" in j and "model=mlp" in j for j in jobs)
    assert expand_grids(grids, params, ["model=cnn"])[1] == ["cnn_noisy"]
    assert expand_grids(grids, params, ["train.label_noise=0"])[1] == ["mlp_clean"]
    jobs, kept = expand_grids(grids, params, ["train.label_noise=0.3", "seed=0,1"])  # replaced in all,
    assert len(jobs) == 2 * (19 + 29)                                                 # duplicates run once


def test_quick_scale_thins_only_the_cnn_tail():
    full, params = _grids("double_descent")
    quick, _ = _grids("double_descent", "quick")
    assert {k: v for k, v in quick.items() if k != "cnn_noisy"} == {k: v for k, v in full.items() if k != "cnn_noisy"}
    channels = lambda g: [int(c) for c in str(g["cnn_noisy"]["model.channels"]).split(",")]  # noqa: E731
    assert channels(quick) == [c for c in channels(full) if c <= 30 or c in (40, 50, 60, 80, 100)]
    jobs, kept = expand_grids(quick, params, [])
    assert kept == ["mlp_clean", "mlp_noisy", "cnn_noisy"] and len(jobs) == 19 + 19 + 20
    plain = lambda c: {k: OmegaConf.to_container(c[k]) for k in ("data", "train", "model")}  # noqa: E731
    assert plain(compose_cfg("experiment=double_descent", "scale=quick")) == plain(compose_cfg("experiment=double_descent"))


def test_mse_grid():
    grids, params = _grids("double_descent_mse")
    jobs, kept = expand_grids(grids, params, [])
    assert kept == ["mlp_noisy"] and len(jobs) == 10 * 2 * 3
    assert {"model.width=2", "model.width=300", "train.loss=mse", "train.train_size=1000"} <= set(sum(jobs, []))
    quick, _ = _grids("double_descent_mse", "quick")  # n = 1k and 2k: the threshold at n vs n*K still shows
    jobs, kept = expand_grids(quick, params, [])
    assert kept == ["mlp_noisy"] and len(jobs) == 10 * 2 * 2 and "train.train_size=4000" not in set(sum(jobs, []))


def test_threshold_and_peak_synthetic():
    curve = pd.DataFrame({"size": [2, 4, 8, 16, 32, 64], "num_params": [10, 20, 40, 80, 160, 320],
                          "train_error": [0.6, 0.4, 0.1, 0.0, 0.0, 0.0],
                          "test_error": [0.7, 0.45, 0.5, 0.55, 0.48, 0.4]})
    thr = dd.interpolation_threshold(curve)
    assert thr["size"] == 16 and thr["num_params"] == 80
    assert dd.interpolation_threshold(curve.assign(train_error=0.1)) is None
    lo, peak = dd.test_peak(curve, thr["num_params"])
    assert lo["size"] == 4 and peak["size"] == 16
    rows = curve.assign(**{"model.name": "mlp", "train.loss": "mse", "train.label_noise": 0.15,
                           "train.label_noise_mode": "uniform", "n_train": 50, "seed": 0})
    t = dd.thresholds(rows).iloc[0]
    assert (t["threshold_params"], t["n"], t["n_K"], t["peak_size"]) == (80, 50, 500, 16)
    assert t["peak_excess"] == pytest.approx(10.0)
