"""Lottery tickets: masks, pruning, schedules, masked (stacked) training, adjacency, resume, the entry point."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_cfg, run_lab, sweep_dirs

from mnist1d_lab import lottery as lt
from mnist1d_lab import runner
from mnist1d_lab.context import RunContext
from mnist1d_lab.errors import ConfigError
from mnist1d_lab.experiments import lottery as exp
from mnist1d_lab.lottery_train import train_masked
from mnist1d_lab.models import build_model

SMALL = {"name": "mlp", "width": 24}
HP = {"lr": 0.02, "batch_size": 50, "steps": 12, "eval_every": 4}


def _state(seed: int = 0, cfg: dict = SMALL) -> dict:
    return build_model(cfg, seed).state_dict()


def _random_mask(state: dict, keep: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(v.shape, generator=g) < keep for n, v in state.items()}


def test_layerwise_prune_keeps_exactly_n_minus_int_sn_per_layer_and_masks_nest():
    state = _state()
    masks, sizes = lt.full_masks(state), None
    for s in lt.schedule("linear", 12, 0, 0)[1:]:
        new = lt.prune(state, masks, s, "layer")
        sizes = lt.layer_sizes(new)
        assert lt.kept_counts(new) == {layer: n - int(s * n) for layer, n in sizes.items()}
        assert all(not (new[n] & ~masks[n]).any() for n in new)  # nested: nothing comes back
        assert all(new[n].dtype == torch.bool and new[n].shape == state[n].shape for n in new)
        masks = new
    assert lt.sparsity(masks) == 1.0
    assert set(sizes) == {"hidden.0", "hidden.1", "out"}  # weights and biases of a layer ranked together


def test_prune_keeps_the_largest_magnitudes_of_the_masked_parameters():
    state = _state()
    mask = _random_mask(state, 0.7, 1)
    new = lt.prune(state, mask, 0.5, "layer")
    w, m, k = state["hidden.1.weight"].abs(), mask["hidden.1.weight"], new["hidden.1.weight"]
    assert w[k].min() >= w[m & ~k].max()  # every kept entry beats every entry pruned this round
    with pytest.raises(ValueError):
        lt.prune(state, new, 0.1, "layer")  # a falling schedule would need entries back


def test_global_prune_ranks_over_all_layers():
    state = {n: v.clone() for n, v in _state().items()}
    state["out.weight"] += 10.0  # the head's 240 weights all outrank the hidden layers'
    masks = lt.full_masks(state)
    total = sum(v.numel() for v in state.values())  # 1,834: 367 kept at 80 %
    new = lt.prune(state, masks, 0.8, "global")
    assert sum(int(m.sum()) for m in new.values()) == total - int(0.8 * total)
    assert bool(new["out.weight"].all())  # global: the head keeps everything, layer-wise it would not
    flat = torch.cat([v.abs().flatten() for v in state.values()])
    kept = torch.cat([m.flatten() for m in new.values()])
    assert flat[kept].min() >= flat[~kept].max()
    assert not lt.prune(state, masks, 0.8, "layer")["out.weight"].all()
    with pytest.raises(ConfigError, match="lottery.prune"):
        lt.prune(state, masks, 0.5, "neuron")


def test_schedules():
    assert np.array_equal(lt.schedule("linear", 100, 0, 0), np.linspace(0, 1, 100))
    geo = lt.schedule("geometric", 0, 0.2, 0.96)
    assert np.allclose(geo, 1 - 0.8 ** np.arange(15)) and geo[-1] <= 0.96 < 1 - 0.8 ** 15
    with pytest.raises(ConfigError, match="lottery.schedule"):
        lt.schedule("cubic", 10, 0.2, 0.9)
    with pytest.raises(ConfigError, match="lottery.rate"):
        lt.schedule("geometric", 10, 1.5, 0.9)


def test_random_masks_keep_the_counts_and_pruned_at_round_trips():
    state = _state()
    masks = [lt.full_masks(state)]
    for s in (0.3, 0.6, 0.9):
        masks.append(lt.prune(state, masks[-1], s))
    counts = lt.kept_counts(masks[2])
    r = lt.random_masks(masks[2], counts, torch.Generator().manual_seed(0))
    assert lt.kept_counts(r) == counts and any(not torch.equal(r[n], masks[2][n]) for n in r)
    at = lt.pruned_at(masks)
    for i, m in enumerate(masks):
        assert all(np.array_equal(at[n] > i, m[n].numpy()) for n in m)


def test_masked_entries_stay_exactly_zero_and_adam_never_moves_them(random_data):
    state = _state()
    mask = _random_mask(state, 0.3, 2)
    res = train_masked([state], [mask], random_data, **HP, snapshot_steps=[0, HP["steps"]])
    start, end = res.snapshots[0][0], res.snapshots[HP["steps"]][0]
    for n in state:
        assert torch.equal(start[n], state[n] * mask[n])  # the round starts from the rewind weights, masked
        assert (end[n][~mask[n]] == 0).all()  # exactly zero after training
        assert (end[n][mask[n]] != start[n][mask[n]]).float().mean() > 0.9  # the kept ones did train


def test_stacked_tickets_equal_one_at_a_time_in_float64(random_data):
    """K masked members in one bmm program vs models.MLP trained alone with torch.optim.Adam, in float64."""
    states = [_state(s) for s in (0, 1, 2)]
    masks = [_random_mask(states[0], keep, 10 + i) for i, keep in enumerate((1.0, 0.5, 0.1))]
    res = train_masked(states, masks, random_data, **HP, snapshot_steps=[HP["steps"]], dtype=torch.float64)
    x, y = random_data.x.double(), random_data.y
    for k in range(3):
        model = build_model(SMALL, k).double()
        params = dict(model.named_parameters())
        m = {n: masks[k][n].double() for n in params}
        with torch.no_grad():
            for n, p in params.items():
                p.mul_(m[n])
        opt = torch.optim.Adam(model.parameters(), lr=HP["lr"])
        accs = []
        for step in range(HP["steps"] + 1):
            if step % HP["eval_every"] == 0:
                with torch.no_grad():
                    accs.append(float((model(random_data.x_test.double()).argmax(-1) == random_data.y_test).double().mean()))
            if step == HP["steps"]:
                break
            start = (step * HP["batch_size"]) % len(x)
            loss = F.cross_entropy(model(x[start:start + HP["batch_size"]]), y[start:start + HP["batch_size"]])
            opt.zero_grad()
            loss.backward()
            for n, p in params.items():
                p.grad.mul_(m[n])
            opt.step()
            with torch.no_grad():
                for n, p in params.items():
                    p.mul_(m[n])
        assert np.array_equal(res.test[:, k, 1], accs)
        for n, p in params.items():
            torch.testing.assert_close(res.snapshots[HP["steps"]][k][n], p.detach(), rtol=0, atol=1e-12)


def test_adjacency_counts_runs_and_the_null_gives_a_p_value():
    mask = np.zeros((3, 40), bool)
    mask[0, [0, 1, 2, 3]] = True      # one run of four: 3 pairs, 2 triples, 1 quadruple
    mask[1, [0, 2, 4, 6]] = True      # no adjacent pair
    mask[2, [10, 11, 30, 31]] = True  # two pairs
    adj = lt.adjacency(mask)
    assert np.allclose(adj["p2"] * 40, [3, 0, 2]) and np.allclose(adj["p3"] * 40, [2, 0, 0])
    assert np.allclose(adj["p4"] * 40, [1, 0, 0])
    local = np.zeros((200, 40), bool)
    for j in range(200):
        local[j, j % 30: j % 30 + 6] = True  # 6 adjacent inputs per unit: far above chance
    null = lt.adjacency_null(local, 200, torch.Generator().manual_seed(0))
    assert null["p2"].max() < lt.adjacency(local)["p2"].mean()
    assert abs(null["p2"].mean() - 39 * (6 / 40) * (5 / 39) / 40) < 2e-3  # E[pairs] = 39 * c(c-1) / (40 * 39)
    order = lt.unit_order(mask)
    assert list(order) == [1, 2, 0]


def _smoke_cfg(*extra: str):
    return compose_cfg("experiment=lottery", "scale=smoke", "model.width=16", "lottery.schedule=geometric",
                       "lottery.rate=0.5", "lottery.target=0.9", "lottery.score_step=4", "lottery.random_stack=3",
                       "lottery.search.steps=6", "lottery.search.eval_every=3", "lottery.ablation.steps=6",
                       "lottery.ablation.eval_every=3", "lottery.ablation.batch_size=100",
                       "lottery.null_samples=20", *extra)


def test_a_killed_trial_resumes_with_identical_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST1D_LAB_CACHE", str(tmp_path / "cache"))
    cfg = _smoke_cfg("lottery.rewind_step=2")
    ctx = RunContext(tmp_path / "a", checkpoint_dir=tmp_path / "ckpt", progress=False)
    first = exp.run(cfg, ctx)
    assert {s for _, s in ctx.stage_log} == {"computed"}
    for name in ("lottery_002.pt", "lottery_003.pt", "ablation_shuffled.pt", "adjacency.pt"):
        (tmp_path / "ckpt" / name).unlink()  # killed during round 2: later stages never finished
    ctx2 = RunContext(tmp_path / "b", checkpoint_dir=tmp_path / "ckpt", progress=False)
    second = exp.run(cfg, ctx2)
    log = dict(ctx2.stage_log)
    assert log["lottery_001"] == "restored" and log["lottery_002"] == "computed" and log["adjacency"] == "computed"
    assert log["ablation_transfer"] == "restored"
    assert pd.DataFrame(first.stages).equals(pd.DataFrame(second.stages))
    assert first.summary == second.summary
    restored = ctx.stage("lottery_000", lambda: None)
    rewind = restored["rewind"]  # late resetting: the dense round's weights after 2 updates
    assert not torch.equal(rewind["hidden.1.weight"], build_model(cfg.model, 0).state_dict()["hidden.1.weight"])


def test_rewinding_to_step_zero_restores_the_initial_weights_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST1D_LAB_CACHE", str(tmp_path / "cache"))
    cfg = _smoke_cfg()
    ctx = RunContext(tmp_path / "a", checkpoint_dir=tmp_path / "ckpt", progress=False)
    result = exp.run(cfg, ctx)
    init = build_model(cfg.model, 0).state_dict()
    rewind = ctx.stage("lottery_000", lambda: None)["rewind"]
    assert all(torch.equal(rewind[n], init[n]) for n in init)
    assert result.summary["ticket_round"] == 3 and abs(result.summary["ticket_sparsity"] - 0.875) < 0.01


def test_bad_knobs_raise_config_errors():
    with pytest.raises(ConfigError, match="lottery.ablation.arms"):
        exp.knobs(_smoke_cfg("lottery.ablation.arms=[transfer,upside_down]"))
    with pytest.raises(ConfigError, match="lottery.score_step"):
        exp.knobs(_smoke_cfg("lottery.score_step=100"))
    with pytest.raises(ConfigError, match="lottery.prune"):
        exp.knobs(_smoke_cfg("lottery.prune=neuron"))
    with pytest.raises(ConfigError, match="model.name"):
        exp.knobs(_smoke_cfg("model=cnn"))
    for override, key in (("lottery.schedule=cubic", "lottery.schedule"), ("lottery.rate=1.5", "lottery.rate"),
                          ("+lottery.roundz=3", "lottery.roundz")):
        with pytest.raises(ConfigError, match=key):  # before any job launches (CONFIG_NODE, validate)
            runner.validate(_smoke_cfg(override))
    runner.validate(_smoke_cfg())


def test_lottery_smoke_through_the_entry_point(tmp_path):
    run_lab(tmp_path, "experiment=lottery", "scale=smoke", "hydra/launcher=basic")  # joblib's workers: 15 s more
    sweep = sweep_dirs(tmp_path)[-1]
    rounds = pd.read_csv(sweep / "lottery_rounds.csv")
    assert set(rounds["trial"]) == {0, 1} and set(rounds["kind"]) == {"lottery", "random"}
    assert len(rounds) == 2 * 2 * 4  # trials x kinds x rounds (0, 0.5, 0.75, 0.875)
    abl = pd.read_csv(sweep / "lottery_ablations.csv")
    assert set(abl["arm"]) == set(exp.ARMS) and len(abl) == 2 * (5 * 3 + 1)
    assert len(pd.read_csv(sweep / "lottery_adjacency.csv")) == 2 * 2 * 3
    for name in ("lottery_summary.md", "figure3.png", "figure3.pdf", "figure9.png", "figure9.pdf"):
        assert (sweep / name).is_file(), name
    masks = list(Path(sweep).rglob("lottery_masks.npz"))
    assert masks and np.load(masks[0])["hidden.0.weight"].dtype == np.int16


def test_verdicts_say_no_when_the_ticket_does_not_win():
    """Computed from the runs: a ticket 2 points above its random ticket fails the 5-point claims."""
    from mnist1d_lab.lottery_figures import verdicts

    table = pd.DataFrame({"seed": [0, 1], "final_test_acc": [0.70, 0.72], "ticket_random_final_test_acc": [0.68, 0.70]})
    rounds = pd.DataFrame([{"trial": k, "kind": kind, "sparsity": s, "final_test_acc": acc + (0.3 if s > 0.96 else 0)}
                           for k in (0, 1) for s in (0.5, 0.85, 0.92, 0.99)
                           for kind, acc in (("lottery", 0.71), ("random", 0.69))])
    adjacency = pd.DataFrame([{"trial": k, "mask": m, "metric": "p2", "mean": v, "p_value": 0.5}
                              for k in (0, 1) for m, v in (("lottery", 0.006), ("random", 0.007))])
    text = "\n".join(verdicts(table, {"rounds": rounds, "adjacency": adjacency}))
    assert "chosen round: no (+2.0" in text and "0.96]: no (+2.0)" in text  # the 0.99 round is outside the band
    assert "(p2): no (0.0060 vs 0.0070" in text
    table["ticket_random_final_test_acc"] -= 0.05
    assert "chosen round: yes (+7.0" in "\n".join(verdicts(table, {"rounds": rounds, "adjacency": adjacency}))
    text = "\n".join(verdicts(table, {"rounds": rounds[rounds["sparsity"] < 0.8], "adjacency": adjacency.iloc[:0]}))
    assert "0.96]: n/a" in text and "(p2): n/a" in text  # nothing in the band, no adjacency rows
