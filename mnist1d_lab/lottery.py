"""Lottery tickets, the pieces without training: masks, magnitude pruning, sparsity schedules, adjacency.

A mask is a dict {parameter name: bool tensor of the parameter's shape} over a model's weights AND
biases (the original's SparseMLP masks both). A *layer* is the parameters that share a name prefix
(`hidden.0.weight` and `hidden.0.bias` form layer `hidden.0`): layer-wise pruning ranks the entries of
one layer together, global pruning ranks all entries of the model together. Training with masks lives in
`lottery_train.py`; the experiment (rounds, ablations, figures) in `experiments/lottery.py`.

Nesting: a pruned entry scores -1, below every kept entry (|theta| >= 0), so the next round prunes it
again first and masks shrink round by round as long as the schedule's sparsity does not fall.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .errors import ConfigError

Masks = dict[str, torch.Tensor]
SCHEDULES = ("linear", "geometric")
PRUNE_MODES = ("layer", "global")


def layer_of(name: str) -> str:
    """`hidden.0.weight` -> `hidden.0`: the layer a parameter belongs to."""
    return name.rsplit(".", 1)[0]


def layers(names) -> dict[str, list[str]]:
    """{layer: [its parameter names]} in the order the names come."""
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(layer_of(name), []).append(name)
    return out


def full_masks(params: Mapping[str, torch.Tensor]) -> Masks:
    """Every entry kept (the dense model)."""
    return {k: torch.ones_like(v, dtype=torch.bool) for k, v in params.items()}


def kept_counts(masks: Masks) -> dict[str, int]:
    """{layer: kept entries (weights + biases)}."""
    return {layer: int(sum(int(masks[n].sum()) for n in names)) for layer, names in layers(masks).items()}


def layer_sizes(masks: Masks) -> dict[str, int]:
    """{layer: entries (weights + biases)}."""
    return {layer: sum(masks[n].numel() for n in names) for layer, names in layers(masks).items()}


def sparsity(masks: Masks) -> float:
    """Fraction of all entries pruned."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of the `keep` highest scores (1-D); ties broken by position (a stable sort)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    out = torch.zeros_like(scores, dtype=torch.bool)
    out[order[:keep]] = True
    return out


def _split(flat: torch.Tensor, like: Masks, names: list[str]) -> Masks:
    out, start = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = flat[start:start + size].view_as(like[n])
        start += size
    return out


def prune(params: Mapping[str, torch.Tensor], masks: Masks, target: float, mode: str = "layer") -> Masks:
    """New masks at sparsity `target` by magnitude |theta| of the (masked) parameters.

    layer:  each layer of n entries keeps exactly n - int(target * n), the original's rule.
    global: the model's N entries keep N - int(target * N), ranked together, so layers end up with
            different sparsities.
    Entries already pruned score -1 and go first: the result is nested in `masks` (ValueError if the
    target would need an entry back, i.e. a falling schedule).
    """
    if mode not in PRUNE_MODES:
        raise ConfigError("lottery.prune", mode, f"one of {list(PRUNE_MODES)}")
    groups = layers(masks) if mode == "layer" else {"all": list(masks)}
    out: Masks = {}
    for names in groups.values():
        scores = torch.cat([torch.where(masks[n], params[n].detach().abs().to(masks[n].device), -1.0).flatten()
                            .double() for n in names])
        keep = scores.numel() - int(target * scores.numel())
        if keep > int((scores >= 0).sum()):
            raise ValueError(f"sparsity {target} keeps {keep} entries, more than the {int((scores >= 0).sum())} kept")
        out.update(_split(_keep_top(scores, keep), masks, names))
    return {n: out[n] for n in masks}


def random_masks(like: Masks, counts: Mapping[str, int], gen: torch.Generator) -> Masks:
    """A uniformly random mask keeping `counts[layer]` entries of each layer (the random ticket)."""
    out: Masks = {}
    for layer, names in layers(like).items():
        n = sum(like[m].numel() for m in names)
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=gen)[:counts[layer]]] = True
        out.update(_split(flat, like, names))
    return {n: out[n] for n in like}


def schedule(kind: str, rounds: int, rate: float, target: float) -> np.ndarray:
    """Sparsity of every round, round 0 dense (float64).

    linear:    round i of `rounds` targets i / (rounds - 1), 0 to 1 (the original: linspace(0, 1, 100)).
    geometric: round i targets 1 - (1 - rate)^i, removing `rate` of what remains each round, for as long
               as that stays <= `target` (`rounds` is ignored).
    """
    if kind == "linear":
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 2:
            raise ConfigError("lottery.rounds", rounds, "an integer >= 2")
        return np.linspace(0.0, 1.0, rounds)
    if kind == "geometric":
        if not 0 < rate < 1:
            raise ConfigError("lottery.rate", rate, "a fraction in (0, 1)")
        if not 0 < target < 1:
            raise ConfigError("lottery.target", target, "a fraction in (0, 1)")
        n = int(np.floor(np.log1p(-target) / np.log1p(-rate) + 1e-9)) + 1
        return 1.0 - (1.0 - rate) ** np.arange(n)
    raise ConfigError("lottery.schedule", kind, f"one of {list(SCHEDULES)}")


def pruned_at(round_masks: list[Masks]) -> dict[str, np.ndarray]:
    """Nested masks of rounds 0..R-1 -> {name: int16 array, the first round without the entry (R: never
    pruned)}: all rounds' masks in one small array per parameter (mask of round r = pruned_at > r)."""
    R = len(round_masks)
    out = {}
    for name in round_masks[0]:
        kept = torch.stack([m[name] for m in round_masks]).cpu().numpy()  # (R, *shape)
        out[name] = np.where(kept.all(0), R, np.argmin(kept, 0)).astype(np.int16)
    return out


def adjacency(mask: np.ndarray | torch.Tensor, orders: tuple[int, ...] = (2, 3, 4)) -> dict[str, np.ndarray]:
    """Per hidden unit of a first-layer mask (H, L): p_k = (runs of k adjacent kept inputs) / L.

    p_2 = sum_i m_i m_{i+1} / L, p_3 with three factors, p_4 with four (the original's normalisation by
    L = 40; its lottery p_4 took the fourth factor from the random mask, a bug not repeated here).
    """
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float64)
    L = m.shape[-1]
    out = {}
    for k in orders:
        run = m[..., : L - k + 1].clone()
        for j in range(1, k):
            run *= m[..., j: L - k + 1 + j]
        out[f"p{k}"] = (run.sum(-1) / L).numpy()
    return out


def adjacency_null(mask: np.ndarray | torch.Tensor, samples: int, gen: torch.Generator,
                   orders: tuple[int, ...] = (2, 3, 4), chunk: int = 100) -> dict[str, np.ndarray]:
    """Means over units of p_k for `samples` random masks with the mask's kept count in every unit:
    {p_k: (samples,)}, the null distribution of "no preference for adjacent inputs"."""
    m = torch.as_tensor(np.asarray(mask)).bool()
    H, L = m.shape
    counts = m.sum(-1)  # (H,)
    out: dict[str, list[np.ndarray]] = {f"p{k}": [] for k in orders}
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        ranks = torch.rand(n, H, L, generator=gen).argsort(-1).argsort(-1)  # a random order of each unit's inputs
        null = ranks < counts[None, :, None]  # (n, H, L): counts[j] random inputs of unit j
        for key, per_unit in adjacency(null.numpy(), orders).items():
            out[key].append(per_unit.mean(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


def unit_order(mask: np.ndarray) -> np.ndarray:
    """Hidden units sorted by adjacent kept pairs + 0.001 x kept count (Figure 9, as the original)."""
    m = np.asarray(mask).astype(float)
    pairs = (m[:, :-1] * m[:, 1:]).sum(-1)
    return np.argsort(pairs + 0.001 * m.sum(-1), kind="stable")
