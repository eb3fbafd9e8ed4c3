"""Pooling vs training-set size (Figure 7) and the spatial-prior scoreboard: the models, the sweeps' configs,
the summaries on hand-made tables, and both experiments at smoke size through the real entry point."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_cfg, run_lab, summaries, sweep_dirs
from omegaconf import OmegaConf

from hydra_plugins.mnist1d_lab_launcher.grids import expand_grids, scaled
from mnist1d_lab import records
from mnist1d_lab.errors import ConfigError
from mnist1d_lab.experiments import pooling, spatial_priors
from mnist1d_lab.models import CNN, build_model, count_parameters, model_kwargs, pool1d

VARIANT_OVERRIDES = {  # the original notebook's five ConvPooling variants and their parameter counts
    "no_pool": (["model.pool=none"], 9310), "stride_2": (["model.pool=none", "model.stride=2"], 3310),
    "max_pool": (["model.pool=max"], 3310), "avg_pool": (["model.pool=avg"], 3310),
    "l2_pool": (["model.pool=l2"], 3310)}


@pytest.mark.parametrize("name", list(VARIANT_OVERRIDES))
def test_cnn_pool_variants_have_the_originals_parameter_counts(name):
    overrides, count = VARIANT_OVERRIDES[name]
    cfg = compose_cfg("model=cnn_pool", *overrides)
    model = build_model(cfg.model, 0)
    assert count_parameters(model) == count
    assert model(torch.zeros(3, 40)).shape == (3, 10)


def test_default_cnn_is_unchanged():
    """The pool keys live in cnn_pool.yaml only: model=cnn's config (so every CNN run key) is as before."""
    cfg = compose_cfg()
    assert set(cfg.model) == {"name", "channels", "depth", "kernel_sizes", "stride", "padding", "activation"}
    assert model_kwargs(cfg.model)["pool"] == "none" and model_kwargs(cfg.model)["pool_size"] == 2
    assert count_parameters(build_model(cfg.model, 0)) == 5210
    assert records.run_key(cfg) == records.run_key(compose_cfg("model=cnn"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pool1d_gives_atens_numbers_and_gradients(dtype, size, layout):
    """pool1d's own avg and l2 (WindowPool) against F.avg_pool1d and F.lp_pool1d: the same numbers bit for
    bit, on (B, C, L) tensors and on the channels-last views the training paths pool; gradients equal
    (avg, max) or within 1e-12 (l2 in float64), laid out like the input, 0 at all-zero windows."""
    g = torch.Generator().manual_seed(size)
    raw = torch.relu(torch.randn(6, 13, 5, generator=g, dtype=dtype)).round(decimals=1)  # zeros and ties
    h = raw.transpose(1, 2) if layout == "channels_last" else raw.transpose(1, 2).contiguous()
    refs = {"max": lambda v: F.max_pool1d(v, size), "avg": lambda v: F.avg_pool1d(v, size),
            "l2": lambda v: F.lp_pool1d(v, 2, size)}
    for pool, ref in refs.items():
        ours_in, ref_in = (h.clone().requires_grad_() for _ in range(2))
        ours, expected = pool1d(ours_in, pool, size), ref(ref_in)
        assert torch.equal(ours, expected), pool
        upstream = torch.randn(expected.shape, generator=g, dtype=dtype)
        (ours * upstream).sum().backward()
        (expected * upstream).sum().backward()
        assert ours_in.grad.stride() == h.stride() and torch.isfinite(ours_in.grad).all(), pool
        if pool == "l2":
            torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-12 if dtype == torch.float64 else 1e-5,
                                       atol=1e-12 if dtype == torch.float64 else 1e-6)
        else:
            assert torch.equal(ours_in.grad, ref_in.grad), pool
    assert float(pool1d(torch.zeros(1, 2, 4, dtype=dtype), "l2", size).abs().sum()) == 0.0
    assert torch.equal(pool1d(h, "none", size), h)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_max_pooled_evaluation_is_max_pool1d_of_relu(size):
    """Evaluation pools before the ReLU (the same numbers, half the ReLU work): bit for bit F.max_pool1d."""
    model = build_model({"name": "cnn", "channels": 6, "depth": 2, "kernel_sizes": [3, 3], "stride": 1,
                         "padding": 1, "pool": "max", "pool_size": size}, 0)
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        h = x.unsqueeze(1)
        for conv in model.convs:
            h = F.max_pool1d(torch.relu(conv(h)), size)
        assert torch.equal(model(x), model.out(h.flatten(1)))


def test_training_forward_matches_evaluation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 40, generator=g)
    for pool in ("none", "max", "avg", "l2"):
        model = build_model({"name": "cnn", "channels": 6, "depth": 2, "kernel_sizes": [3, 3], "stride": 1,
                             "padding": 1, "pool": pool}, 0)
        with torch.no_grad():
            ref = model(x)  # nn.Conv1d + F.*pool1d on (B, C, L)
        out = model(x)  # the training path: im2col, channels last, pooled through transposes
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), pool  # l2 at all-zero windows too


def test_bad_pool_settings_fail_with_the_key():
    with pytest.raises(ConfigError, match="model.pool"):
        model_kwargs({"name": "cnn", "pool": "median"})
    with pytest.raises(ConfigError, match="model.pool_size"):
        model_kwargs({"name": "cnn", "pool": "max", "pool_size": 0})
    with pytest.raises(ConfigError, match="model.depth"):  # 40 -> 20 -> 10 -> 5 -> 2 -> 1 -> 0
        CNN(channels=2, depth=6, kernel_sizes=[3] * 6, stride=1, pool="max")


def _jobs(experiment: str, scale: str | None = None, *args: str) -> list[list[str]]:
    cfg = compose_cfg(f"experiment={experiment}", *([f"scale={scale}"] if scale else []), hydra_config=True)
    s = OmegaConf.to_container(cfg.hydra.sweeper)
    jobs, _ = expand_grids(scaled(s["grids"], s["scales"], scale), s["params"], list(args))
    return jobs


def test_pooling_sweep_is_5_variants_x_6_nested_sizes_x_3_seeds_on_one_dataset():
    jobs = _jobs("pooling")
    assert len(jobs) == 90 and len({tuple(sorted(j)) for j in jobs}) == 90
    cfgs = [compose_cfg("experiment=pooling", *j) for j in jobs[::7]]  # a sample across sizes and variants
    assert len({OmegaConf.to_yaml(c.data) for c in cfgs}) == 1  # the same data config: the same test set
    assert {c.data.num_samples for c in cfgs} == {60000} and {c.train.eval_every for c in cfgs} == {100}
    assert {c.train.eval_train_rows for c in cfgs} == {10000}  # training accuracy on the first 10,000 rows
    assert {c.train.train_size for c in cfgs} == {1000, 2000, 5000, 10000, 20000, 50000}
    assert len(_jobs("pooling", "quick")) == 45 and len(_jobs("pooling", "smoke")) == 10
    original = _jobs("pooling", None, "train.train_size=null",
                     "data={num_samples:2000,train_split:0.5},{num_samples:51000,train_split:0.9803921568627451}")
    assert len(original) == 30  # the original's protocol: data per size, 5 variants x 2 sizes x 3 seeds


def test_nested_sizes_share_the_test_set_and_cut_training_rows(tmp_path, monkeypatch):
    """train.train_size only keeps the first n training rows: the test set is the same for every size."""
    from mnist1d_lab.data import load
    from mnist1d_lab.protocol import prepare_data

    monkeypatch.setenv("MNIST1D_LAB_CACHE", str(tmp_path))
    small, large = (compose_cfg("experiment=pooling", "data.num_samples=1200", f"train.train_size={n}")
                    for n in (100, 500))
    assert small.data == large.data
    data = load(small.data)
    a, _ = prepare_data(data, small.train, 0)
    b, _ = prepare_data(load(large.data), large.train, 0)
    assert (len(a.x), len(b.x), len(a.x_test)) == (100, 500, 200)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert torch.equal(a.x, b.x[:100]) and torch.equal(b.x, data.x[:500])


def test_spatial_priors_jobs_are_benchmark_and_pooling_jobs():
    """Same config, same run key: the scoreboard reuses the benchmark's and the pooling sweep's runs."""
    jobs = _jobs("spatial_priors")
    assert len(jobs) == 108  # 9 models x normal/shuffled x 3 seeds x 2 sizes
    key = lambda exp, j: records.run_key(compose_cfg(f"experiment={exp}", *j))  # noqa: E731
    as_dict = lambda j: {k: v.lower() for k, v in (o.split("=", 1) for o in j)}  # noqa: E731
    pool = {key("pooling", j) for j in _jobs("pooling") if "train.train_size=50000" in j and "seed=0" in j}
    bench = {key("benchmark", j) for j in (["model=cnn", "data.shuffle_seq=true", "seed=2"], ["model=gru", "seed=0"])}
    wanted = [j for j in jobs if (d := as_dict(j))["data.shuffle_seq"] == "false" and d["model"] == "cnn_pool"
              and d["experiment_name"] == "pooling" and d["seed"] == "0"]
    wanted += [j for j in jobs if (d := as_dict(j))["experiment_name"] == "benchmark" and (d["model"], d["seed"],
               d["data.shuffle_seq"]) in (("cnn", "2", "true"), ("gru", "0", "false"))]
    mine = {key("spatial_priors", j) for j in wanted}
    assert len(pool) == 5 and len(wanted) == 7 and mine == pool | bench
    quick = _jobs("spatial_priors", "quick")  # a scale sets the 50k grids to null: left out
    assert len(quick) == 54 and all("experiment_name=benchmark" in j for j in quick)


def _run_table(rows) -> pd.DataFrame:
    """A collected-table look-alike: (pool, stride, n_train, seed, final accuracy fraction)."""
    return pd.DataFrame([{"model.name": "cnn", "model.pool": p, "model.stride": s, "n_train": n, "seed": k,
                          "final_test_acc": a, "best_test_acc": a, "num_params": 3310, "data.num_samples": 60000,
                          "data.train_split": 0.8333333333333334, "data.seed": 42, "data.shuffle_seq": False}
                         for p, s, n, k, a in rows])


def test_pooling_table_and_verdicts():
    acc = {  # mean accuracy per variant at 1k and 50k; seeds add -0.01 / +0.01
        "no_pool": (0.60, 0.97), "stride_2": (0.58, 0.96), "max_pool": (0.78, 0.96), "avg_pool": (0.75, 0.965),
        "l2_pool": (0.69, 0.975)}
    spec = {"no_pool": ("none", 1), "stride_2": ("none", 2), "max_pool": ("max", 1), "avg_pool": ("avg", 1),
            "l2_pool": ("l2", 1)}
    rows = [(*spec[v], n, k, a[i] + d) for v, a in acc.items() for i, n in enumerate((1000, 50000))
            for k, d in ((0, -0.01), (1, 0.01))]
    res = pooling.pooling_results(_run_table(rows))
    tab = pooling.pooling_table(res)
    assert len(tab) == 10 and set(tab["seeds"]) == {2}
    r = tab.set_index(["n_train", "variant"])
    assert r.loc[(1000, "max_pool"), "final_test_acc_mean"] == 78.0
    assert r.loc[(1000, "max_pool"), "original"] == 78.2 and r.loc[(50000, "l2_pool"), "original"] == 97.1
    assert r.loc[(1000, "no_pool"), "final_test_acc_std"] == pytest.approx(np.sqrt(2) * 1.0, abs=0.01)
    text = "\n".join(pooling.verdicts(tab))
    assert "by >= 10 points at n = 1,000: **no**" in text  # l2 gains only 9
    assert "advantage is < 4 points at n = 50,000: **yes** (l2_pool +0.5 ± 1.4" in text
    assert "hindered\" performance with much data (every pooling variant below no pooling at n = 50,000): **no**" in text
    assert "max pooling worse than L2 pooling with much data (n = 50,000): **yes** (max - L2 -1.5 ± 1.4" in text
    md = pooling.table_markdown(tab, res)
    assert "| 1,000 | 60.0 ± 1.4 [59.2] |" in md and "One pool of 60,000 examples (50,000 train, 10,000 test)" in md


def test_per_size_datasets_are_named_in_the_table():
    """The original's protocol (a dataset per size) is said in the table: its test sets differ."""
    table = _run_table([("max", 1, n, 0, 0.9) for n in (1000, 2000)] + [("none", 1, n, 0, 0.8) for n in (1000, 2000)])
    table["data.num_samples"] = table["n_train"] + 1000
    table["data.train_split"] = 1 - 1000 / table["data.num_samples"]
    res = pooling.pooling_results(table)
    md = pooling.table_markdown(pooling.pooling_table(res), res)
    assert "2 datasets (one per size, as the original's protocol): test sets differ" in md
    assert "| 2,000 | 80.0 [82.0] | 90.0 [89.2] |" in md  # one seed: no ± part


def test_scoreboard_gap_and_its_error():
    rows = []
    for name, pool, stride, normal, shuffled in (("mlp", np.nan, np.nan, 0.66, 0.66), ("cnn", np.nan, 2, 0.93, 0.56),
                                                 ("cnn", "max", 1, 0.90, 0.40)):
        for shuf, acc in ((False, normal), (True, shuffled)):
            rows += [{"model.name": name, "model.pool": pool, "model.stride": stride, "n_train": 4000, "seed": k,
                      "data.shuffle_seq": shuf, "num_params": 1, "final_test_acc": acc + d}
                     for k, d in ((0, -0.02), (1, 0.0), (2, 0.02))]
    board = spatial_priors.scoreboard(pd.DataFrame(rows))
    assert board["model"].tolist() == ["max_pool", "cnn", "mlp"]  # largest gap first
    assert board["gap"].tolist() == pytest.approx([50.0, 37.0, 0.0])
    assert board["gap_err"].iloc[0] == pytest.approx(np.sqrt(2 * 4 / 3), abs=0.01)  # std 2 points, 3 seeds each
    assert "| max_pool | 1 | 90.0 ± 2.0 | 40.0 ± 2.0 | +50.0 ± 1.6 | 3 |" in spatial_priors.scoreboard_markdown(board)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> Path:
    """experiment=pooling then experiment=spatial_priors at smoke size, sharing one result store."""
    root = tmp_path_factory.mktemp("pooling")
    run_lab(root, "experiment=pooling", "scale=smoke", "num_threads=1")
    run_lab(root, "experiment=spatial_priors", "scale=smoke", "num_threads=1")
    return root


def test_pooling_smoke_through_the_entry_point(smoke_runs):
    sweep = sweep_dirs(smoke_runs)[0]
    for name in ("figure7.png", "figure7.pdf", "pooling_table.md", "pooling_table.csv", "pooling_results.csv"):
        assert (sweep / name).stat().st_size > 0, name
    res = pd.read_csv(sweep / "pooling_results.csv")
    assert len(res) == 10 and sorted(res["n_train"].unique()) == [100, 300]
    assert dict(zip(res["variant"], res["num_params"], strict=False)) == {
        "no_pool": 9310, "stride_2": 3310, "max_pool": 3310, "avg_pool": 3310, "l2_pool": 3310}
    assert "## Verdicts" in (sweep / "pooling_table.md").read_text()


def test_spatial_priors_smoke_reuses_the_pooling_runs(smoke_runs):
    first, second = sweep_dirs(smoke_runs)
    board = pd.read_csv(second / "spatial_priors.csv")
    assert (second / "spatial_priors.png").stat().st_size > 0 and (second / "spatial_priors.md").stat().st_size > 0
    assert set(board["n_train"]) == {300, 800}  # the 50k grids at smoke size; the benchmark's 800 rows
    assert set(board[board["n_train"] == 300]["model"]) == {"logistic", *pooling.VARIANTS}
    pooled = {s["run_key"] for s in summaries(first) if s.get("n_train") == 300}
    reused = {s["run_key"] for s in summaries(second)} & pooled
    assert len(pooled) == 5 and reused == pooled  # the same runs: keys equal, found in the store
