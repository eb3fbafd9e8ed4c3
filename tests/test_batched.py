"""Batched training (mnist1d_lab.batched) against the one-at-a-time loop (train.train): same records, same
weights, same test predictions; what can batch; the planner.

Exactness is checked in float64 (batched and single sum in different orders, and float32 Adam
trajectories drift apart chaotically after ~100 steps); float32 is compared as accuracies.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mnist1d_lab import batched, models, protocol, train
from mnist1d_lab.batched import StackedModel, plan
from mnist1d_lab.batched import train as loop
from mnist1d_lab.batched.ops import StackedHead, member_losses
from mnist1d_lab.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops: 2 OpenMP threads on a shared 2-core machine spin and run 10-30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _double(d) -> SimpleNamespace:
    return SimpleNamespace(x=d.x.double(), y=d.y, x_test=d.x_test.double(), y_test=d.y_test)


def _member_cfgs(name: str, widths: list[int], **extra) -> list[dict]:
    key = batched.WIDTH_KEY.get(name)
    return [{"name": name, **extra, **({key: w} if key else {})} for w in widths]


def _compare(cfgs, seeds, data, cfg, rtol=1e-4):
    """Batched vs single runs: curves within rtol, same summary keys, same final weights."""
    results = batched.train_batched(cfgs, seeds, data, cfg, progress=False)
    for c, s, rb in zip(cfgs, seeds, results, strict=True):
        model = models.build_model(c, s, data.x.shape[1]).to(data.x.dtype)
        r1 = train.train(model, data, cfg, s, progress=False)
        assert list(rb.curves.columns) == list(r1.curves.columns)
        np.testing.assert_array_equal(rb.curves["step"], r1.curves["step"])
        np.testing.assert_allclose(rb.curves.to_numpy(float), r1.curves.to_numpy(float), rtol=rtol, atol=1e-12)
        assert set(rb.summary) == set(r1.summary)
        assert rb.summary["num_params"] == r1.summary["num_params"]
        assert rb.summary["label_noise_changed_fraction"] == r1.summary["label_noise_changed_fraction"]
        for p, q in zip(rb.model.parameters(), r1.model.parameters(), strict=True):
            assert p.shape == q.shape
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)
        _check_test_predictions(rb, r1, data)
    return results


def _check_test_predictions(rb, r1, data) -> None:
    """Batched member's final test predictions: every test row, in order, the plain run's final model's."""
    with torch.no_grad():
        plain_pred = r1.model.eval()(data.x_test).argmax(-1).numpy()
    assert rb.test_pred.dtype == np.int64 and rb.test_pred.shape == (len(data.x_test),)
    np.testing.assert_array_equal(rb.test_pred, plain_pred)
    np.testing.assert_array_equal(rb.test_true, data.y_test.numpy())
    if r1.test_pred is not None:  # the plain loop's own record of them
        np.testing.assert_array_equal(rb.test_pred, r1.test_pred)
        np.testing.assert_array_equal(rb.test_true, r1.test_true)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("order", ["sequential", "reshuffle"])
@pytest.mark.parametrize("name,widths,extra", [
    ("logistic", [0, 0], {}),
    ("mlp", [12, 5, 9], {}),  # residual, padded to 12
    ("mlp", [6, 11], {"residual": False, "depth": 3, "activation": "tanh"}),
    ("cnn", [4, 7], {}),
])
def test_batched_equals_single_float64(random_data, name, widths, extra, order, optimizer):
    cfg = {"steps": 100, "eval_every": 10, "batch_size": 50, "batch_order": order, "optimizer": optimizer,
           "lr": 0.01 if optimizer == "adam" else 0.05, "weight_decay": 1e-3, "label_noise": 0.2}
    cfgs = _member_cfgs(name, widths, **extra)
    _compare(cfgs, list(range(3, 3 + len(cfgs))), _double(random_data), cfg)


@pytest.mark.parametrize("name,widths,extra", [
    ("mlp", [5, 9], {"depth": 1, "activation": "gelu"}),
    ("cnn", [3, 6], {"depth": 2, "kernel_sizes": [3, 5], "stride": 1, "padding": 2, "activation": "elu"}),
    ("cnn", [4, 2], {"depth": 4, "activation": "silu"}),
])
def test_other_shapes_float64(random_data, name, widths, extra):
    cfg = {"steps": 40, "eval_every": 20, "batch_size": 50, "batch_order": "reshuffle", "loss": "mse"}
    _compare(_member_cfgs(name, widths, **extra), [0, 1], _double(random_data), cfg)


def test_val_split_gives_each_member_its_own_rows(random_data):
    # the val hold-out depends on the seed, so members train on different rows: the (K, n, L) path
    cfg = {"steps": 60, "eval_every": 20, "batch_size": 50, "val_split": 0.2, "train_size": 400}
    for order in ("sequential", "reshuffle"):
        res = _compare(_member_cfgs("mlp", [8, 8]), [0, 1], _double(random_data), {**cfg, "batch_order": order})
        assert "val_acc" in res[0].curves and "val_selected_test_acc" in res[0].summary


POOLED_CNN = {"depth": 2, "kernel_sizes": [3, 3], "stride": 1, "padding": 1}  # model=cnn_pool, narrower


@pytest.mark.parametrize("pool,order", [("max", "sequential"), ("avg", "reshuffle"), ("l2", "sequential")])
def test_pooled_cnns_stack_as_their_plain_models_float64(random_data, pool, order):
    """Pooling in the stack (autograd step) is the plain model's own pooling, members of several widths."""
    cfg = {"steps": 60, "eval_every": 20, "batch_size": 50, "batch_order": order, "lr": 0.01}
    _compare(_member_cfgs("cnn", [4, 7], **POOLED_CNN, pool=pool, pool_size=2), [3, 4], _double(random_data), cfg)


@pytest.mark.parametrize("order,scored", [("sequential", None), ("reshuffle", None), ("sequential", 250)])
def test_members_of_nested_train_sizes_train_as_their_plain_runs_float64(random_data, order, scored):
    """train_size per member (the pooling sweep's nested sets): each member draws its own batches from its
    own first n rows and is scored on them (at most the first `eval_train_rows`), exactly as a plain run of
    that size."""
    cfg = {"steps": 30, "eval_every": 10, "batch_size": 50, "batch_order": order, "lr": 0.01,
           "eval_train_rows": scored}
    cfgs, seeds, sizes = _member_cfgs("cnn", [4, 4, 6], **POOLED_CNN, pool="max"), [3, 4, 3], [100, 300, 550]
    data = _double(random_data)
    results = batched.train_batched(cfgs, seeds, data, cfg, progress=False, train_sizes=sizes)
    for c, seed, n, rb in zip(cfgs, seeds, sizes, results, strict=True):
        r1 = train.train(models.build_model(c, seed).double(), data, {**cfg, "train_size": n}, seed, progress=False)
        assert rb.summary["n_train"] == r1.summary["n_train"] == n
        np.testing.assert_allclose(rb.curves.to_numpy(float), r1.curves.to_numpy(float), rtol=1e-6, atol=1e-12)
        for p, q in zip(rb.model.parameters(), r1.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)
    assert len({r.summary["final_train_acc"] for r in results}) == 3  # scored on their own rows
    if scored:  # the members training on 300 and 550 rows are scored on their first 250
        for r, n in zip(results[1:], sizes[1:], strict=True):
            pred = train.predict(r.model, data.x[:n].double())
            assert r.summary["final_train_acc"] == pytest.approx(float((pred[:scored] == data.y[:scored].numpy()).mean()))
            assert r.summary["final_train_acc"] != pytest.approx(float((pred == data.y[:n].numpy()).mean()))


def test_train_sizes_may_differ_only_for_nested_whole_batch_sets():
    mlp = _member_cfgs("mlp", [8, 8])
    assert batched.can_batch(mlp, {"batch_size": 50}, [100, 300]) == (True, "")
    assert batched.can_batch(mlp, {"batch_size": 50, "epochs": 3}, [100, 100])[0]  # equal sizes: as ever
    for cfg, sizes in (({"batch_size": 50, "epochs": 3}, [100, 300]), ({"batch_size": 50, "val_split": 0.1}, [100, 300]),
                       ({"batch_size": 50}, [100, 330]), ({"batch_size": 50}, [None, 300])):
        ok, reason = batched.can_batch(mlp, cfg, sizes)
        assert not ok and "train.train_size" in reason, (cfg, sizes)
    with pytest.raises(ConfigError, match="train_size"):
        batched.train_batched(mlp, [0, 1], None, {"batch_size": 50}, train_sizes=[100, 330])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_padded_entries_stay_exactly_zero(random_data, name):
    seen = []
    cfg = {"steps": 50, "eval_every": 50, "weight_decay": 0.1, "batch_size": 50}
    batched.train_batched(_member_cfgs(name, [3, 17, 8]), [0, 1, 2], random_data, cfg, progress=False,
                          hook=lambda step, model, opt: seen.append((model, opt)) if step == 50 else None)
    model, opt = seen[0]
    masks = model.padding_masks()
    assert sum(int((m == 0).sum()) for m in masks.values()) > 0
    for name, p in model.named_parameters():
        pad = masks[name] == 0
        assert torch.all(p.detach()[pad] == 0), name
        for state in opt.state[p].values():
            if torch.is_tensor(state) and state.shape == p.shape:
                assert torch.all(state[pad] == 0), name


def test_float32_accuracy_close(small_data):
    cfg = {"steps": 300, "eval_every": 300}
    cfgs, seeds = _member_cfgs("mlp", [100] * 3), [0, 1, 2]
    rb = batched.train_batched(cfgs, seeds, small_data, cfg, progress=False)
    r1 = [train.train(models.build_model(c, s), small_data, cfg, s, progress=False) for c, s in zip(cfgs, seeds, strict=True)]
    acc_b = np.mean([r.summary["final_test_acc"] for r in rb])
    acc_1 = np.mean([r.summary["final_test_acc"] for r in r1])
    assert acc_1 > 0.3 and abs(acc_b - acc_1) < 0.06


def test_diverged_member_does_not_poison_others(random_data):
    cfg = {"steps": 30, "eval_every": 10, "batch_size": 50}
    cfgs, seeds = _member_cfgs("mlp", [10, 10, 6]), [0, 1, 2]

    def poison(step, model, opt):
        if step == 5:
            with torch.no_grad():
                model.w0[:, 1] = float("nan")  # member 1 only

    clean = batched.train_batched(cfgs, seeds, _double(random_data), cfg, progress=False)
    hit = batched.train_batched(cfgs, seeds, _double(random_data), cfg, progress=False, hook=poison)
    assert hit[1].summary["diverged"] and list(hit[1].curves["step"]) == [0, 10]
    for k in (0, 2):
        assert not hit[k].summary["diverged"]
        np.testing.assert_array_equal(hit[k].curves.to_numpy(), clean[k].curves.to_numpy())


def test_can_batch_rules():
    cfg = {"steps": 10}
    assert batched.can_batch(_member_cfgs("mlp", [10, 20]), cfg) == (True, "")
    assert batched.can_batch(_member_cfgs("cnn", [4, 25]), cfg)[0]
    assert not batched.can_batch([{"name": "mlp"}, {"name": "logistic"}], cfg)[0]
    assert not batched.can_batch([{"name": "mlp", "depth": 2}, {"name": "mlp", "depth": 3}], cfg)[0]
    assert not batched.can_batch([{"name": "gru"}] * 2, cfg)[0]
    assert not batched.can_batch(_member_cfgs("mlp", [10, 10]), {"grad_clip": 1.0})[0]
    with pytest.raises(ConfigError):
        batched.train_batched([{"name": "mlp"}, {"name": "logistic"}], [0, 1], None, cfg)


def test_can_batch_accepts_only_the_knobs_the_stacked_path_implements():
    """An allow-list: a knob or value the stacked path does not implement falls back to one at a time
    (with the reason) instead of being silently ignored by the stack."""
    paper = {"name": "cnn", "channels": 25, "depth": 3, "kernel_sizes": None, "stride": 2, "padding": 1,
             "activation": "relu"}
    assert batched.can_batch([paper, {**paper, "channels": 4}], {**train.TRAIN_DEFAULTS}) == (True, "")
    assert batched.can_batch([{**paper, "pool": "none", "pool_size": 2}] * 2, {})[0]
    pooled = {**paper, "depth": 2, "kernel_sizes": [3, 3], "stride": 1, "pool": "max", "pool_size": 2}
    assert batched.can_batch([pooled, {**pooled, "channels": 4}], {}) == (True, "")
    for extra in ({"pool": "median"}, {"dropout": 0.1}, {"activation": "softplus"}, {"activation": "sigmoid"},
                  {"activation": "learned"}):
        ok, reason = batched.can_batch([{**paper, **extra}] * 2, {})
        assert not ok and f"model.{next(iter(extra))}" in reason, (extra, reason)
    mlp = _member_cfgs("mlp", [10, 20], depth=2, residual=False, activation="gelu")
    assert batched.can_batch(mlp, {})[0]
    assert not batched.can_batch([{**c, "norm": "layer"} for c in mlp], {})[0]
    assert not batched.can_batch([{"name": "logistic", "bias": False}] * 2, {})[0]
    for train_cfg in ({"optimizer": "adamw"}, {"loss": "hinge"}, {"batch_order": "stratified"}, {"grad_clip": 1.0}):
        ok, reason = batched.can_batch(mlp, train_cfg)
        assert not ok and f"train.{next(iter(train_cfg))}" in reason, (train_cfg, reason)
    assert set(batched.TRAIN_KEYS) == set(train.TRAIN_DEFAULTS)  # a new train knob: review it, then list it


def test_plan_stacks_is_plan_groups_cut_for_stacks_side_by_side():
    """The one planner (train_batched and the launcher's execute_groups): width buckets for the torch
    threads a stack trains on, each cut into `side` interleaved parts that share the memory budget."""
    widths = [2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 47, 61, 80, 104, 135, 177, 230, 300]  # the DD grid
    cfgs = _member_cfgs("mlp", widths, residual=False)
    two = plan.plan_stacks(cfgs, 4000, 100, "cpu", threads=2, budget_mb=2048, side=2)
    buckets = plan.plan_groups(cfgs, 4000, 1024, 100, "cpu", threads=1)  # MLP stacks: one torch thread each
    assert [s.members for s in two] == [part for g in buckets for part in plan.spread(g, 2)]
    assert all(s.threads == 1 and s.cost == plan.stack_cost([cfgs[i] for i in s.members]) for s in two)
    cnn = _member_cfgs("cnn", [4, 8, 60, 64])  # CNN stacks side by side too: one thread each
    one = plan.plan_stacks(cnn, 4000, 100, "cpu", threads=2)
    assert [s.members for s in one] == plan.plan_groups(cnn, 4000, float("inf"), 100, "cpu", threads=1)
    assert {s.threads for s in one} == {1} and plan.plan_stacks([], 4000, 100, "cpu", 2) == []
    gpu = plan.plan_stacks(_member_cfgs("cnn", [4, 8]), 4000, 100, "cuda", threads=2)  # on a GPU: one at a time
    assert {s.threads for s in gpu} == {1}


def test_member_batches_draw_what_each_member_would_draw_alone():
    gens = lambda: [protocol.generator(s, "batch_order") for s in (3, 4)]  # noqa: E731
    alone = [protocol.batches(130, 50, "reshuffle", g) for g in gens()]  # short last batch: 130 = 2 * 50 + 30
    stacked = loop._member_batches([130, 130], 50, gens(), "cpu")
    for _ in range(9):  # three epochs
        idx = next(stacked)
        assert torch.equal(idx, torch.stack([next(o) for o in alone]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,order,optimizer", [("mlp", "reshuffle", "sgd"), ("mlp", "sequential", "adam"),
                                                  ("cnn", "reshuffle", "adam"), ("cnn", "sequential", "sgd")])
def test_cuda_graph_replays_train_exactly_as_the_eager_loop(random_data, name, order, optimizer, dtype, caplog,
                                                             graph_replays):
    data = SimpleNamespace(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in vars(random_data).items()})
    cfg = {"steps": 120, "eval_every": 25, "batch_size": 50, "batch_order": order, "optimizer": optimizer,
           "lr": 0.01, "weight_decay": 1e-3, "label_noise": 0.2}
    cfgs, seeds = _member_cfgs(name, [3, 17, 9]), [0, 1, 1]
    eager_run = batched.train_batched(cfgs, seeds, data, cfg, progress=False, device="cuda", cuda_graphs=False)
    assert not graph_replays
    graphed_run = batched.train_batched(cfgs, seeds, data, cfg, progress=False, device="cuda")
    assert len(graph_replays) == 120 - train.GRAPH_WARMUP  # one stack; every update after the warm-up
    for eager, graphed in zip(eager_run, graphed_run, strict=True):
        np.testing.assert_array_equal(graphed.curves.to_numpy(float), eager.curves.to_numpy(float))
        for p, q in zip(graphed.model.parameters(), eager.model.parameters(), strict=True):
            assert torch.equal(p, q)
    assert "capture failed" not in caplog.text  # the graph was used, not the eager fallback


def test_plan_groups_respects_budget():
    cfgs = _member_cfgs("mlp", [1 + (7 * i) % 300 for i in range(64)])
    budget = 40.0
    groups = plan.plan_groups(cfgs, 4000, budget)
    assert sorted(i for g in groups for i in g) == list(range(64))
    assert len(groups) > 1
    for g in groups:
        assert len(g) == 1 or plan.estimate_memory_mb([cfgs[i] for i in g], 4000) <= budget
    widths = [[cfgs[i]["width"] for i in g] for g in groups]
    assert all(max(a) <= min(b) for a, b in zip(widths, widths[1:], strict=False))  # small widths batch together
    narrow = _member_cfgs("mlp", list(range(1, 33)))  # overhead-bound: one group when memory allows
    assert plan.plan_groups(narrow, 4000, 1e9) == [sorted(range(32), key=lambda i: narrow[i]["width"])]


def test_plan_groups_buckets_a_wide_width_range():
    widths = [2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 47, 61, 80, 104, 135, 177, 230, 300]  # the DD grid
    groups = [[widths[i] for i in g] for g in plan.plan_groups(_member_cfgs("mlp", widths), 4000, 1e9)]
    assert 1 < len(groups) < len(widths)  # no padding of width 2 to 300, no one-at-a-time either
    assert groups[0][:3] == [2, 3, 4] and groups[-1][-1] == 300


def test_stacks_on_several_threads_pay_for_whole_rounds_of_threads():
    """torch's CPU bmm gives each thread whole matrices: on 2 threads a stack of 3 costs what one of 4 does,
    so the planner avoids odd stacks of wide CNNs there, and plans on 1 thread as it always did."""
    wide = _member_cfgs("cnn", [100] * 4)
    for k in (1, 3, 4):
        assert plan.thread_slots(k, 1) == k
    assert [plan.thread_slots(k, 2) for k in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 6]
    assert plan.stack_cost(wide[:3], threads=2) == plan.stack_cost(wide, threads=2)
    assert plan.stack_cost(wide[:3], threads=1) < plan.stack_cost(wide, threads=1)
    channels = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, *range(35, 101, 5)]  # the DD grid
    cfgs = _member_cfgs("cnn", channels)
    two = [[channels[i] for i in g] for g in plan.plan_groups(cfgs, 4000, 2048, threads=2)]
    one = [[channels[i] for i in g] for g in plan.plan_groups(cfgs, 4000, 2048, threads=1)]
    assert all(len(g) % 2 == 0 for g in two if g[0] >= 35), two
    assert any(len(g) % 2 for g in one if g[0] >= 35), one  # the rounding, not the grid, makes them even
    assert sorted(c for g in two for c in g) == channels
    assert plan.stack_threads("mlp", 2) == 1 and plan.stack_threads("cnn", 2) == 1  # both side by side
    assert plan.stack_threads("gru", 2) == 2 and plan.stack_threads("cnn", 2, "cuda") == 1
    assert plan.stack_threads("cnn", 2, "cuda") == 1


def test_plan_groups_keeps_a_gpu_group_whole_within_budget():
    """On a GPU (eager) a step costs the same whatever the stack's size: one stack per group, unless memory cuts it."""
    mlp = _member_cfgs("mlp", [2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 47, 61, 80, 104, 135, 177, 230, 300])
    cnn = _member_cfgs("cnn", [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, *range(35, 101, 5)])
    for cfgs in (mlp, cnn):  # the double-descent grids, under the batched launcher's default budget
        assert len(plan.plan_groups(cfgs, 4000, 2048, device="cpu")) > 1
        assert len(plan.plan_groups(cfgs, 4000, 2048, device="cuda")) == 1
    budget = plan.estimate_memory_mb(cnn, 4000) / 2
    groups = plan.plan_groups(cnn, 4000, budget, device="cuda:0")
    assert len(groups) >= 2 and all(plan.estimate_memory_mb([cnn[i] for i in g], 4000) <= budget for g in groups)
    # the ETA's cost of a GPU stack (CUDA graphs): the CNN grid ~5x the MLP grid, as measured on an H100
    ratio = plan.stack_cost(cnn, "cuda") / plan.stack_cost(mlp, "cuda")
    assert 3 < ratio < 8


def test_memory_budget_splits_but_keeps_results(random_data):
    cfg = {"steps": 20, "eval_every": 10, "batch_size": 50}
    cfgs, seeds = _member_cfgs("mlp", [4, 30, 8]), [0, 1, 2]
    whole = batched.train_batched(cfgs, seeds, _double(random_data), cfg, progress=False)
    tiny = batched.train_batched(cfgs, seeds, _double(random_data), cfg, progress=False, memory_budget_mb=1e-3)
    for a, b in zip(whole, tiny, strict=True):
        np.testing.assert_allclose(a.curves.to_numpy(float), b.curves.to_numpy(float), rtol=1e-10)


def test_wide_width_range_is_split_without_a_budget(random_data):
    cfg = {"steps": 10, "eval_every": 5, "batch_size": 50}
    cfgs, seeds = _member_cfgs("mlp", [2, 300, 3]), [0, 1, 2]
    assert len(plan.plan_groups(cfgs, len(random_data.x), float("inf"))) == 2
    split = batched.train_batched(cfgs, seeds, _double(random_data), cfg, progress=False)
    calls = []
    one = batched.train_batched(cfgs, seeds, _double(random_data), cfg, progress=False,  # a hook: one stack
                                hook=lambda step, model, opt: calls.append(model.K))
    assert set(calls) == {3}
    for a, b in zip(split, one, strict=True):
        np.testing.assert_allclose(a.curves.to_numpy(float), b.curves.to_numpy(float), rtol=1e-10)


def test_large_stacks_train_as_parts_side_by_side_with_the_same_results(random_data, monkeypatch):
    """With 2 torch threads a stack of 16 trains as two interleaved parts of 8 in two Python threads;
    every member's curve equals the one-stack run (float64)."""
    cfg = {"steps": 12, "eval_every": 4, "batch_size": 50}
    cfgs, seeds = _member_cfgs("mlp", [4 + (k % 5) for k in range(16)]), list(range(16))
    assert plan.spread(list(range(16)), 2) == [list(range(0, 16, 2)), list(range(1, 16, 2))]
    assert plan.spread(list(range(3)), 2) == [[0, 1, 2]]  # parts would be < MIN_SPLIT: one stack
    assert plan.spread(list(range(9)), 1) == [list(range(9))]  # one torch thread: one stack
    assert plan.spread(list(range(16)), 2, [1.0] * 16) == plan.spread(list(range(16)), 2)  # equal costs: interleaved
    seen = []
    inner = loop._train_group
    monkeypatch.setattr(loop, "_train_group", lambda c, s, *a: seen.append(len(s)) or inner(c, s, *a))
    one = batched.train_batched(cfgs, seeds, _double(random_data), cfg, progress=False)
    torch.set_num_threads(2)
    two = batched.train_batched(cfgs, seeds, _double(random_data), cfg, progress=False)
    assert seen == [16, 8, 8] and torch.get_num_threads() == 2  # the thread count is restored
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a.curves.to_numpy(float), b.curves.to_numpy(float), rtol=1e-10)


def test_members_of_nested_sizes_are_spread_by_cost():
    """Nested training sets (1k..50k, 3 seeds): parts balanced by member_costs, each member once; the
    interleaved split of the same order would leave one part 24 % heavier."""
    sizes = [1000, 2000, 5000, 10000, 20000, 50000] * 3
    cfg = {**train.TRAIN_DEFAULTS, "steps": 6000, "eval_every": 100}
    costs = plan.member_costs(cfg, sizes, 10000)
    assert costs[5] - costs[0] == 61 * 49000 and plan.member_costs(cfg, [4000] * 3, 10000) is None
    parts = plan.spread(list(range(18)), 2, costs)
    loads = [sum(costs[i] for i in part) for part in parts]
    interleaved = [sum(costs[i] for i in part) for part in plan.spread(list(range(18)), 2)]
    assert sorted(sum(parts, [])) == list(range(18)) and all(len(p) >= plan.MIN_SPLIT for p in parts)
    assert max(loads) / min(loads) < 1.06 < max(interleaved) / min(interleaved)


def test_stacked_head_is_the_plain_product_with_first_and_second_derivatives():
    torch.manual_seed(0)
    h, w, b = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((3, 5, 7), (3, 4, 7), (3, 4)))
    torch.testing.assert_close(StackedHead.apply(h, w, b), h @ w.transpose(1, 2) + b.unsqueeze(1))
    assert torch.autograd.gradcheck(StackedHead.apply, (h, w, b))
    assert torch.autograd.gradgradcheck(StackedHead.apply, (h, w, b))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name,widths,extra", [
    ("mlp", [7, 3, 5], {}),  # residual ReLU: every layer by hand
    ("mlp", [4, 6], {"residual": False, "depth": 3}),
    ("mlp", [5, 2], {"depth": 1}),
    ("mlp", [6, 4], {"activation": "tanh"}),  # hidden layers by autograd, head and loss by hand
    ("cnn", [3, 5], {}),  # ReLU: every layer by hand
    ("cnn", [3, 6], {"depth": 2, "kernel_sizes": [3, 5], "stride": 1, "padding": 2}),
    ("cnn", [4, 2], {"depth": 4, "activation": "elu"}),
])
def test_hand_grads_equal_autograd_float64(name, widths, extra, shared, loss):
    """StackedModel.hand_grads (batched/ops.py, the CPU training step) against autograd on the same stack."""
    cfgs, K, B = _member_cfgs(name, widths, **extra), len(widths), 30
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*(() if shared else (K,)), B, 40, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (K, B), generator=g)
    weight = torch.tensor([1.0, 0.0, 0.5][:K], dtype=torch.float64)  # 0: a diverged, frozen member
    hand, ref = (StackedModel(cfgs, [3, 4, 5][:K], dtype=torch.float64) for _ in range(2))
    assert hand.can_hand_step(x)
    losses = hand.hand_grads(x, y, loss, weight)
    ref_losses = member_losses(loss, ref(x), y).mean(-1)
    (ref_losses * weight).sum().backward()
    torch.testing.assert_close(losses, ref_losses.detach(), rtol=1e-12, atol=1e-14)
    for (n, p), q in zip(hand.named_parameters(), ref.parameters(), strict=True):
        assert p.grad.shape == p.shape and p.grad.stride() == p.stride(), n
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14, msg=n)
    assert all(float(p.grad.abs().sum()) > 0 for p in hand.parameters())  # the test could fail


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name,widths", [("mlp", [7, 3, 5]), ("cnn", [3, 5])])
def test_stacked_evaluation_equals_member_by_member_float64(name, widths, shared):
    """The GPU path's evaluation (all members at once, in chunks of rows) against the CPU path's (each
    member as its own model, train.evaluate), on trained-looking (perturbed) weights."""
    cfgs, K, n = _member_cfgs(name, widths), len(widths), 50
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*(() if shared else (K,)), n, 40, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (K, n), generator=g)
    model = StackedModel(cfgs, [3, 4, 5][:K], dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) * (p != 0))  # padding stays zero
    splits = {"train": (x, y), "test": (x[..., :20, :], y[:, :20])}
    stacked = torch.cat([loop._evaluate(model, xs, ys, "cross_entropy", chunk=7) for xs, ys in splits.values()], 1)
    members = torch.stack([loop._evaluate_member(model, k, splits, "cross_entropy", n) for k in range(K)])
    torch.testing.assert_close(stacked, members, rtol=1e-12, atol=1e-14)
    assert len(set(members[:, 0].tolist())) == K  # members differ: a mix-up of members would fail
    for k in range(K):  # member_model is member k at its own width, holding the stack's weights
        assert models.count_parameters(model.member_model(k)) == models.count_parameters(
            models.build_model(cfgs[k], 0))


def test_only_batchable_experiments_are_stacked_the_others_run_through_the_runner(tmp_path, monkeypatch):
    """execute_groups (hydra/launcher=batched) stacks the jobs of experiments that declare BATCHABLE = True;
    any other experiment's jobs run one by one through runner.execute, i.e. the experiment's own run."""
    from helpers import TINY, compose_cfg

    from mnist1d_lab import runner
    from mnist1d_lab.batched import schedule
    from mnist1d_lab.experiments import train as train_exp

    stacked, alone = [], []
    real_batched, real_execute = batched.train_batched, runner.execute
    monkeypatch.setattr(batched, "train_batched", lambda *a, **k: stacked.append(len(a[0])) or real_batched(*a, **k))
    monkeypatch.setattr(runner, "execute", lambda cfg, out_dir, *a, **k: alone.append(out_dir) or real_execute(
        cfg, out_dir, *a, **k))

    def jobs(root):
        cfgs = [compose_cfg(*TINY, "model=mlp", f"model.width={w}", f"paths.output_dir={root}",
                            f"data.cache_dir={tmp_path / 'cache'}") for w in (4, 8)]
        return cfgs, [root / "4", root / "8"]

    cfgs, dirs = jobs(tmp_path / "stacked")
    assert schedule.group_key(cfgs[0]) == schedule.group_key(cfgs[1]) is not None
    assert [s["status"] for s in schedule.execute_groups([(cfgs, dirs)])[0]] == ["complete"] * 2
    assert stacked == [2] and alone == []
    monkeypatch.setattr(train_exp, "BATCHABLE", False)
    stacked.clear()
    cfgs, dirs = jobs(tmp_path / "alone")
    assert schedule.group_key(cfgs[0]) is None and schedule.single_cost(cfgs[0]) is None
    assert [s["status"] for s in schedule.execute_groups([(cfgs, dirs)])[0]] == ["complete"] * 2
    assert stacked == [] and alone == dirs


def test_the_pooling_sweeps_nested_sizes_and_seeds_share_one_stack_per_variant():
    """group_key: jobs that differ in seed and in a nested, whole-batch train_size train as one stack;
    a val split (rows depend on the seed) or another variant keeps them apart."""
    from helpers import compose_cfg

    from mnist1d_lab.batched import schedule

    def key(*overrides):
        return schedule.group_key(compose_cfg("experiment=pooling", *overrides))

    same = {key(f"train.train_size={n}", f"seed={s}") for n in (1000, 5000, 50000) for s in (0, 2)}
    assert len(same) == 1 and None not in same
    assert key("train.train_size=1000", "train.val_split=0.1") != key("train.train_size=5000", "train.val_split=0.1")
    assert key("train.train_size=1050") != key("train.train_size=1000")  # not whole batches: a group of its own
    assert key("model.pool=avg") != key("model.pool=max")
