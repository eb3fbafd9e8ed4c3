"""Metalearning (paper Figures 5 and 6): hand-written inner gradients against autograd, hypergradients
against central finite differences (float64), checkpointed meta-gradients against one graph, the learned
activation's transfer module and file, knobs and scales, resumable stages, and both experiments end to
end through the entry point at smoke size."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_cfg, run_lab, summaries

from mnist1d_lab import learned_activation as la
from mnist1d_lab import metalearn as ml
from mnist1d_lab.errors import ConfigError

F64 = torch.float64


def _data(n: int = 60, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 40, generator=gen, dtype=F64), torch.randint(0, 10, (n,), generator=gen)


def _phi(hidden: int = 6):
    return la.init_g(0, hidden, dtype=F64)


@pytest.mark.parametrize("name", sorted(ml.ACTIVATIONS))
def test_activation_derivatives_match_autograd(name):
    z = torch.linspace(-4, 4, 81, dtype=F64).requires_grad_(True)
    f, df = ml.ACTIVATIONS[name](z)
    (auto,) = torch.autograd.grad(f.sum(), z)
    mask = z.detach().abs() > 1e-6  # relu/elu kinks at 0
    assert torch.allclose(df[mask], auto[mask], atol=1e-12)


def test_learned_derivative_matches_autograd():
    z = torch.linspace(-4, 4, 81, dtype=F64).view(1, 9, 9).requires_grad_(True)
    noise = torch.full((1, 6), 0.05, dtype=F64)
    f, df = la.learned(_phi(), "elu", 0.2, noise)(z)
    (auto,) = torch.autograd.grad(f.sum(), z)
    mask = z.detach().abs() > 1e-6
    assert torch.allclose(df[mask], auto[mask], atol=1e-12)


@pytest.mark.parametrize("which", ["tanh", "relu", "learned"])
def test_hand_gradients_match_autograd(which):
    x, y = _data(20)
    params = [p.requires_grad_(True) for p in ml.init_mlp([0, 1], 7, dtype=F64)]
    act = la.learned(_phi(), noise=torch.rand(2, 6, dtype=F64)) if which == "learned" else ml.activation(which)
    noise = (torch.rand(2, 1, 7, dtype=F64) - 0.5) * 0.2
    loss, grads = ml.loss_and_grads(params, x, y, act, noise)
    logits = ml.forward(params, x, act, noise)
    ref = torch.stack([torch.nn.functional.cross_entropy(logits[k], y) for k in range(2)])
    auto = torch.autograd.grad(ref.sum(), params)
    assert torch.allclose(loss, ref, atol=1e-12)
    for g, a in zip(grads, auto, strict=True):
        assert torch.allclose(g, a, atol=1e-12)


def test_lr_hypergradient_matches_central_differences():
    x, y = _data(60)
    params0 = ml.init_mlp([0], 8, dtype=F64)
    lr = torch.tensor([0.2, 1.1], dtype=F64)
    kw = dict(x=x, y=y, steps=15, batch_size=20, act=ml.activation("tanh"))
    meta, grad = ml.lr_hypergrad(params0, lr, **kw)
    h = 1e-5
    fd = (ml.lr_landscape(params0, lr + h, **kw) - ml.lr_landscape(params0, lr - h, **kw)) / (2 * h)
    assert torch.allclose(meta, ml.lr_landscape(params0, lr, **kw), atol=1e-12)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-9), (grad, fd)
    assert grad.abs().min() > 1e-6  # a real signal, not a vacuous match of zeros


def _meta_setup(steps: int = 9, last: int = 5):
    x, y = _data(40)
    loop = la.InnerLoop(steps=steps, batch_size=10, last=last)
    params0 = ml.init_mlp([0], 7, dtype=F64)
    noise_c, noise_g = la.draw_noise([0], loop, 7, 6, dtype=F64)
    return x, y, loop, params0, noise_c, noise_g


def test_checkpointed_meta_gradient_equals_one_graph_and_finite_differences():
    x, y, loop, params0, noise_c, noise_g = _meta_setup()
    phi = _phi()
    meta, grad, losses, _ = la.meta_gradient(phi, params0, x, y, loop, noise_c, noise_g, segment=2)
    meta_one, grad_one, _, _ = la.meta_gradient(phi, params0, x, y, loop, noise_c, noise_g, segment=loop.steps)
    assert torch.allclose(meta, meta_one, atol=1e-13)
    for g, g1 in zip(grad, grad_one, strict=True):
        assert torch.allclose(g, g1, atol=1e-12)
    # the meta-objective along a random direction in phi, by central differences
    direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=F64) for i, p in enumerate(phi)]

    def objective(t: float) -> float:
        moved = [p + t * d for p, d in zip(phi, direction, strict=True)]
        act_at = lambda s: la.learned(moved, noise=noise_g[s])  # noqa: E731
        return float(la.meta_objective(la.run_inner(params0, x, y, loop, act_at, noise_c)[1], loop)[0])

    h = 1e-5
    fd = (objective(h) - objective(-h)) / (2 * h)
    analytic = sum(float((g * d).sum()) for g, d in zip(grad, direction, strict=True))
    assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-10)
    assert float(meta) == pytest.approx(objective(0.0), abs=1e-13)


def test_learned_activation_module_file_and_sha(tmp_path):
    phi = la.init_g(3, 10)
    path = tmp_path / "activation.pt"
    torch.save(la.state_dict(phi, "elu", 0.2), path)
    module = la.LearnedActivation.load(path)
    x = torch.linspace(-5, 5, 50).view(5, 10)
    assert torch.allclose(module(x), la.learned(phi)(x)[0], atol=1e-6)
    sha = la.file_sha256(path)
    torch.save(la.state_dict(la.init_g(4, 10), "elu", 0.2), path)
    assert la.file_sha256(path) != sha  # the run key follows the file's content, not its path
    with pytest.raises(ConfigError, match="model.activation_path"):
        la.LearnedActivation.load(tmp_path / "missing.pt")


def test_knobs_apply_scale_and_reject_bad_values():
    cfg = compose_cfg("experiment=metalearn_lr", "metalearn.scale=smoke")
    from mnist1d_lab.experiments import metalearn_activation, metalearn_lr

    k = metalearn_lr.validated(cfg)
    assert k["scale"] == "smoke" and k["inner_steps"] == 10 and k["landscape"]["num"] == 5
    assert k["landscape"]["min"] == 0.05  # nested values not named by the scale stay
    assert metalearn_lr.validated(compose_cfg("experiment=metalearn_lr"))["inner_steps"] == 200
    with pytest.raises(ConfigError, match="metalearn.scale"):
        metalearn_lr.validated(compose_cfg("experiment=metalearn_lr", "metalearn.scale=huge"))
    with pytest.raises(ConfigError, match="metalearn.activation"):
        metalearn_lr.validated(compose_cfg("experiment=metalearn_lr", "metalearn.activation=gelu"))
    with pytest.raises(ConfigError, match="eval_seeds"):
        metalearn_activation.validated(compose_cfg("experiment=metalearn_activation", "metalearn.eval_seeds=[0,5]"))


def test_stages_resume_to_the_same_numbers(tmp_path):
    from mnist1d_lab.context import RunContext
    from mnist1d_lab.experiments import metalearn_lr

    cfg = compose_cfg("experiment=metalearn_lr", "metalearn.scale=smoke", "data.num_samples=500",
                      f"data.cache_dir={tmp_path / 'cache'}")
    first = RunContext(tmp_path / "a", progress=False, checkpoint_dir=tmp_path / "partial")
    result = metalearn_lr.run(cfg, first)
    again = RunContext(tmp_path / "b", progress=False, checkpoint_dir=tmp_path / "partial")
    resumed = metalearn_lr.run(cfg, again)
    assert {s for _, s in first.stage_log} == {"computed"} and {s for _, s in again.stage_log} == {"restored"}
    assert resumed.summary == result.summary and resumed.stages == result.stages
    assert len(result.stages) == 3 * 2  # one row per outer step and trial


@pytest.mark.parametrize("experiment,artifacts", [
    ("metalearn_lr", ["figure5.png", "figure5.pdf", "lr_landscape.csv", "lr_trials.csv", "summary.md"]),
    ("metalearn_activation", ["figure6.png", "figure6.pdf", "activation.pt", "activation.csv",
                              "activation_eval.csv", "summary.md"]),
])
def test_experiment_end_to_end_at_smoke_size(tmp_path, experiment, artifacts):
    run_lab(tmp_path, f"experiment={experiment}", "metalearn.scale=smoke", "data.num_samples=1000", "num_threads=1")
    (summary,) = summaries(tmp_path / "outputs" / "runs")
    assert summary["status"] == "complete"
    run_dir = next((tmp_path / "outputs" / "runs").iterdir())
    for name in artifacts:
        assert (run_dir / "artifacts" / name).stat().st_size > 0
    assert (run_dir / "stages.csv").read_text().count("\n") >= 3


def test_models_activation_table_builds_the_learned_function(tmp_path):
    from mnist1d_lab.models import ACTIVATIONS, _activation

    assert {"softplus", "sigmoid", "learned"} <= set(ACTIVATIONS)
    phi = la.init_g(5, 12)
    path = tmp_path / "activation.pt"
    torch.save(la.state_dict(phi, "elu", 0.2), path)
    x = torch.randn(4, 3, 7)  # any shape: (B, C, L) in a CNN, (B, H) in an MLP
    assert torch.allclose(_activation("learned", str(path))(x), la.learned(phi)(x)[0], atol=1e-6)
    with pytest.raises(ConfigError, match="model.activation_path"):
        _activation("learned", None)


def test_g_backward_by_hand_passes_gradcheck():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 4, generator=gen, dtype=F64, requires_grad=True)
    w1, b1, w2 = (torch.randn(5, generator=gen, dtype=F64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(la._G.apply, (z, w1, b1, w2))


def test_scale_name_selects_the_experiment_scale():
    from mnist1d_lab.experiments import metalearn_activation

    k = metalearn_activation.validated(compose_cfg("experiment=metalearn_activation", "+scale_name=quick"))
    assert k["scale"] == "quick" and k["outer_steps"] == 40 and k["inner_steps"] == 301
