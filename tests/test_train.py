"""The plain training loop and the data preparation it shares with the batched loop (tiny runs)."""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from mnist1d_lab import protocol
from mnist1d_lab.errors import ConfigError
from mnist1d_lab.models import build_model
from mnist1d_lab.train import (
    EVAL_ROWS,
    GRAPH_WARMUP,
    TRAIN_DEFAULTS,
    can_graph,
    evaluate,
    train,
    validate_train,
)

MLP = {"name": "mlp"}
TINY = {"steps": 12, "eval_every": 5, "batch_size": 50}


def _run(data, cfg: dict, seed: int = 0, model: dict = MLP, **kw) -> protocol.TrainResult:
    return train(build_model(model, seed), data, {**TINY, **cfg}, seed, progress=False, **kw)


def test_defaults_match_paper_yaml() -> None:
    path = Path(__file__).resolve().parents[1] / "conf" / "train" / "paper.yaml"
    assert yaml.safe_load(path.read_text()) == TRAIN_DEFAULTS


def test_deterministic(random_data) -> None:
    a, b = (_run(random_data, {"batch_order": "reshuffle", "label_noise": 0.2, "val_split": 0.1}) for _ in "ab")
    pd.testing.assert_frame_equal(a.curves, b.curves, check_exact=True)
    drop = lambda s: {k: v for k, v in s.items() if k != "train_seconds"}  # noqa: E731
    assert drop(a.summary) == drop(b.summary)
    c = _run(random_data, {"batch_order": "reshuffle"}, seed=1)
    assert not a.curves.equals(c.curves)


def test_curves_columns_and_eval_steps(random_data) -> None:
    r = _run(random_data, {"steps": 23, "eval_every": 10})
    assert tuple(r.curves.columns) == protocol.CURVE_COLUMNS
    assert r.curves["step"].tolist() == [0, 10, 20, 23]
    assert r.curves[["train_acc", "test_acc"]].stack().between(0, 1).all()
    s = r.summary
    assert s["steps"] == 23 and s["num_params"] == 15210 and s["diverged"] is False
    assert s["final_test_acc"] == r.curves["test_acc"].iloc[-1]
    assert s["n_train"] == 600 and s["n_val"] == 0


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_evaluation_runs_in_chunks_with_the_one_pass_numbers(name) -> None:
    """On the CPU evaluate() feeds the model at most EVAL_ROWS rows at a time (bounded memory), and its
    loss and accuracy are those of one forward pass over all rows (float64: equal to rounding)."""
    model = build_model({"name": name}, 0).double()
    g = torch.Generator().manual_seed(0)
    n = 2 * EVAL_ROWS + 77
    x, y = torch.randn(n, 40, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    got = evaluate(model, x, y, "cross_entropy")
    handle.remove()
    assert seen == [EVAL_ROWS, EVAL_ROWS, 77]
    with torch.no_grad():
        logits = model(x)
    want = [F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).double().mean().item()]
    assert got.tolist() == pytest.approx(want, rel=1e-12)


def _summary_by_pandas(curves: pd.DataFrame) -> dict:
    """The summary as pandas computes it (the lab's implementation before curves became plain rows)."""
    last, best = curves.iloc[-1], curves.loc[curves["test_acc"].idxmax()]
    out = {f"final_{k}": float(last[k]) for k in curves.columns if k != "step"}
    out |= {"steps": int(last["step"]), "best_test_acc": float(best["test_acc"]), "best_test_step": int(best["step"])}
    if "val_acc" in curves and curves["val_acc"].notna().any():
        sel = curves.loc[curves["val_acc"].idxmax()]
        out |= {"val_selected_step": int(sel["step"]), "val_selected_val_acc": float(sel["val_acc"]),
                "val_selected_test_acc": float(sel["test_acc"])}
    return out


@pytest.mark.parametrize("val", [False, True])
def test_plain_row_curves_write_and_summarise_as_pandas_does(val) -> None:
    """Runs keep curves as rows (no pandas import); CSV text and summary equal pandas' own, edge values too."""
    gen = torch.Generator().manual_seed(0)
    columns = ["step", "train_loss", "train_acc", "test_loss", "test_acc"] + (["val_loss", "val_acc"] if val else [])
    rows = [[float(10 * i)] + torch.rand(len(columns) - 1, generator=gen).tolist() for i in range(8)]
    rows[2][1:3] = [float("nan"), float("inf")]  # a diverged evaluation
    rows[3][1:3] = [-0.0, 1e-05]
    rows[5][4] = rows[6][4] = max(r[4] for r in rows) + 1  # a tie for the best test accuracy: first wins
    if val:
        rows[0][6] = float("nan")  # NaN never selects
        rows[7][6] = 2.0
    result = protocol.TrainResult(columns=columns, rows=rows)
    assert result.curves_csv() == result.curves.to_csv(index=False)
    assert protocol.summarize_curves(columns, rows) == _summary_by_pandas(result.curves)
    assert protocol.summarize_curves(columns, rows)["best_test_step"] == 50


def test_a_run_never_imports_pandas(tmp_path) -> None:
    """A CLI run writes its record from plain rows: pandas (0.5 s per process) is not imported."""
    from helpers import lab_imports

    args = ["data.num_samples=500", "train.steps=20", "train.eval_every=10", "progress=false", "model=mlp"]
    assert lab_imports(tmp_path, ["pandas"], *args) == set()
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    curves = pd.read_csv(run_dir / "curves.csv")
    assert curves["step"].tolist() == [0, 10, 20] and curves.notna().all().all()


def test_epochs_set_the_number_of_updates(random_data) -> None:
    r = _run(random_data, {"epochs": 2, "batch_size": 250, "eval_every": 100})  # ceil(600/250) = 3 per epoch
    assert r.curves["step"].tolist() == [0, 6]


def test_sequential_batches_equal_the_original() -> None:
    x = torch.arange(750)
    for batch_size in (100, 300):
        it = protocol.batches(750, batch_size, "sequential")
        for s in range(40):
            bix = (s * batch_size) % 750  # the original: x_train[bix:bix+batch_size]
            assert torch.equal(x[next(it)], x[bix:bix + batch_size])


def test_reshuffle_covers_every_row_once_per_epoch_and_depends_on_seed() -> None:
    def epochs(seed: int) -> list[torch.Tensor]:
        it = protocol.batches(95, 10, "reshuffle", protocol.generator(seed, "batch_order"))
        return [torch.cat([next(it) for _ in range(10)]) for _ in range(3)]  # ceil(95/10) = 10 batches

    e0 = epochs(0)
    for perm in e0:
        assert torch.equal(perm.sort().values, torch.arange(95))
    assert not torch.equal(e0[0], e0[1])
    assert not torch.equal(e0[0], epochs(1)[0])
    assert all(torch.equal(a, b) for a, b in zip(e0, epochs(0), strict=True))


def test_label_noise_modes() -> None:
    y = torch.randint(0, 10, (40000,), generator=torch.Generator().manual_seed(0))
    noisy, changed = protocol.apply_label_noise(y, 0.3, "uniform", torch.Generator().manual_seed(1))
    assert changed == pytest.approx(0.3 * 9 / 10, abs=0.01)
    assert changed == (noisy != y).float().mean().item()
    noisy, changed = protocol.apply_label_noise(y, 0.3, "different", torch.Generator().manual_seed(1))
    assert changed == pytest.approx(0.3, abs=0.01)
    noisy, changed = protocol.apply_label_noise(y, 1.0, "different", torch.Generator().manual_seed(1))
    assert changed == 1.0 and bool((noisy != y).all())


def test_prepare_data_label_noise(random_data) -> None:
    cfg = {**TRAIN_DEFAULTS, "label_noise": 0.5}
    prep, info = protocol.prepare_data(random_data, cfg, seed=0)
    assert info["label_noise_changed_fraction"] == (prep.y != prep.y_clean).float().mean().item() > 0.3
    assert torch.equal(prep.y_clean, random_data.y) and torch.equal(prep.y_test, random_data.y_test)
    assert info["label_noise_seed"] == protocol.stream_seed(0, "label_noise")
    other, _ = protocol.prepare_data(random_data, cfg, seed=1)
    assert not torch.equal(prep.y, other.y)
    fixed = [protocol.prepare_data(random_data, {**cfg, "label_noise_seed": 7}, seed=s)[0].y for s in (0, 1)]
    assert torch.equal(*fixed)  # an explicit noise seed fixes the labels across run seeds
    r = _run(random_data, {"label_noise": 0.5})
    assert r.summary["label_noise_changed_fraction"] == info["label_noise_changed_fraction"]


def test_val_split_and_train_size(random_data) -> None:
    cfg = {**TRAIN_DEFAULTS, "val_split": 0.25, "train_size": 400}
    prep, info = protocol.prepare_data(random_data, cfg, seed=0)
    assert (info["n_train"], info["n_val"], len(prep.x), len(prep.x_val)) == (400, 150, 400, 150)
    row = {tuple(r.tolist()): i for i, r in enumerate(random_data.x)}
    train_rows = [row[tuple(r.tolist())] for r in prep.x]
    val_rows = {row[tuple(r.tolist())] for r in prep.x_val}
    assert train_rows == sorted(train_rows) and not val_rows & set(train_rows)  # original order, disjoint
    assert train_rows == sorted(set(range(600)) - val_rows)[:400]
    r = _run(random_data, {"val_split": 0.25, "steps": 20})
    c, s = r.curves, r.summary
    assert {"val_loss", "val_acc"} <= set(c.columns)
    best = c.loc[c["val_acc"].idxmax()]
    assert (s["val_selected_step"], s["val_selected_test_acc"]) == (best["step"], best["test_acc"])


def test_mse_loss_definition() -> None:
    z, y = torch.randn(8, 10, dtype=torch.float64), torch.randint(0, 10, (8,))
    expected = sum(((z[i] - F.one_hot(y[i], 10)) ** 2).sum() for i in range(8)) / 8
    assert torch.allclose(protocol.loss_fn("mse", z, y), expected)
    assert torch.allclose(protocol.loss_fn("cross_entropy", z, y), -z.log_softmax(-1)[range(8), y].mean())


def test_mse_and_sgd_train(random_data) -> None:
    r = _run(random_data, {"loss": "mse", "optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4})
    assert r.curves["train_loss"].iloc[-1] < r.curves["train_loss"].iloc[0]


def test_hook_called_once_per_update(random_data) -> None:
    seen = []
    _run(random_data, {"steps": 17}, hook=lambda step, model, opt: seen.append(step))
    assert seen == list(range(1, 18))


def test_diverged_by_injected_nan(random_data) -> None:
    def poison(step, model, optimizer):
        if step == 7:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    r = _run(random_data, {"steps": 30}, hook=poison)
    assert r.summary["diverged"] is True
    assert r.curves["step"].tolist() == [0, 5, 10]  # stopped at the first evaluation after the NaN


def test_diverged_by_huge_lr(random_data) -> None:
    r = _run(random_data, {"steps": 40, "eval_every": 10, "optimizer": "sgd", "loss": "mse", "lr": 1e6})
    assert r.summary["diverged"] is True and r.curves["step"].iloc[-1] < 40


@pytest.mark.parametrize("key,value", [
    ("lr", 0), ("lr", -1.0), ("lr", "fast"), ("lr", float("nan")), ("steps", 0), ("steps", 2.5),
    ("epochs", 0), ("batch_size", 0), ("batch_size", True), ("batch_size", 601), ("eval_every", 0),
    ("optimizer", "lbfgs"), ("loss", "hinge"), ("batch_order", "random"), ("label_noise_mode", "flip"),
    ("label_noise", -0.1), ("label_noise", 1.5), ("label_noise_seed", 1.5), ("val_split", 1.0),
    ("val_split", -0.2), ("train_size", 0), ("train_size", 601), ("train_size", 10.0),
    ("weight_decay", -1e-3), ("momentum", -0.5), ("eval_train_rows", 0), ("eval_train_rows", 2.5),
])
def test_validate_train_rejects(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        validate_train({**TRAIN_DEFAULTS, key: value}, n_train=600)
    assert err.value.key == f"train.{key}" and f"train.{key}" in str(err.value)


def test_validate_train_checks_sizes_after_the_val_hold_out() -> None:
    validate_train({**TRAIN_DEFAULTS, "val_split": 0.5, "train_size": 300}, n_train=600)
    with pytest.raises(ConfigError, match="train.train_size"):
        validate_train({**TRAIN_DEFAULTS, "val_split": 0.5, "train_size": 301}, n_train=600)
    with pytest.raises(ConfigError, match="train.batch_size"):
        validate_train({**TRAIN_DEFAULTS, "train_size": 50}, n_train=600)


@pytest.mark.parametrize("batch_size,train_size", [(100, None), (100, 750)])
def test_reproduces_the_original_loop_in_float64(small_data, batch_size: int, train_size: int | None) -> None:
    """The original notebooks/train.py loop (Adam 1e-2, sequential batches, CE), re-created, in float64."""
    steps, n = 30, train_size or len(small_data.x)
    x, y = small_data.x[:n].double(), small_data.y[:n]
    x_test, y_test = small_data.x_test.double(), small_data.y_test
    model = build_model(MLP, seed=5).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # the original: default Adam, no weight decay
    test_losses, train_accs = [], []
    for step in range(steps):
        bix = (step * batch_size) % n
        loss = F.cross_entropy(model(x[bix:bix + batch_size]), y[bix:bix + batch_size])
        loss.backward()
        opt.step()
        opt.zero_grad()
        test_losses.append(F.cross_entropy(model(x_test), y_test).item())
        train_accs.append((model(x).argmax(-1) == y).double().mean().item())

    ours = train(build_model(MLP, seed=5).double(), small_data, {"steps": steps, "eval_every": 1,
                 "batch_size": batch_size, "train_size": train_size}, seed=0, progress=False)
    c = ours.curves.iloc[1:]  # row k = after k updates; the original's list index k-1
    assert (c["test_loss"] - test_losses).abs().max() < 1e-10
    assert c["train_acc"].tolist() == train_accs
    for p, q in zip(model.parameters(), ours.model.parameters(), strict=True):
        assert (p - q).abs().max().item() < 1e-10


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="mallopt tuning is glibc-only")
def test_configure_process_stops_page_faults_from_freed_activations() -> None:
    """After cpu.configure_process(), allocating and freeing stacked-step-sized tensors no longer
    page-faults each time."""
    from mnist1d_lab import cpu

    cpu.configure_process()
    assert torch.get_num_threads() >= 1 and cpu._keep_freed_memory()

    def faults(n: int = 50) -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            t = torch.ones(32, 100, 100)  # 1.3 MB, over glibc's default 128 KB mmap threshold
            del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults(5)  # the first allocation grows the heap once
    assert faults() < 50  # untuned: ~1,500 here (fresh pages after glibc returned the memory)


def test_cuda_graphs_only_where_every_update_has_the_same_shapes():
    hook = lambda step, model, opt: None  # noqa: E731
    assert can_graph(torch.device("cuda"), None, 4000, 100)
    assert not can_graph(torch.device("cpu"), None, 4000, 100)
    assert not can_graph(torch.device("cuda"), hook, 4000, 100)  # a hook may change anything
    assert not can_graph(torch.device("cuda"), None, 130, 50)  # a short last batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["logistic", "mlp", "cnn", "gru"])
def test_cuda_graph_replays_a_single_model_exactly_as_the_eager_loop(random_data, name, caplog, graph_replays) -> None:
    cfg = {"steps": 60, "eval_every": 25, "batch_order": "reshuffle", "label_noise": 0.1}
    runs = [_run(random_data, cfg, seed=3, model={"name": name}, device="cuda", cuda_graphs=False)]
    assert not graph_replays
    runs.append(_run(random_data, cfg, seed=3, model={"name": name}, device="cuda"))
    assert len(graph_replays) == 60 - GRAPH_WARMUP  # every update after the warm-up
    pd.testing.assert_frame_equal(runs[1].curves, runs[0].curves, check_exact=True)
    for p, q in zip(runs[1].model.parameters(), runs[0].model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert "capture failed" not in caplog.text  # the graph was used, not the eager fallback
