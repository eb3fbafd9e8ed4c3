"""Train one model on one dataset with one protocol: the default experiment.

Question: how well does <model> do on <data> under <train>?
Command:  python -m mnist1d_lab                 (the CNN on the default data, paper protocol)
          python -m mnist1d_lab model=gru data.shuffle_seq=true
CPU time: CNN ~5 s of training on one thread (2-core x86 CPU); logistic and MLP ~1-2 s, GRU ~1 min.
Expected: CNN 92-94 % test accuracy (paper Table 1: 94 +- 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    from ..context import RunContext
    from ..protocol import TrainResult

BATCHABLE = True  # jobs that differ in seed and width may train stacked (hydra/launcher=batched)


def run(cfg: DictConfig, ctx: RunContext) -> TrainResult:
    """Load the data, build the model for cfg.seed, train it; the model is returned in the result.

    torch is imported here, not at module level: the experiment modules that re-export `run` are also
    loaded by `collect` for their `summarize`, in a sweep's parent process that trains nothing.
    """
    from ..data import load
    from ..models import build_model, count_parameters
    from ..train import train

    data = load(cfg.data, device=ctx.device)
    model = build_model(cfg.model, cfg.seed, input_len=data.input_len)
    result = train(model, data, cfg.train, cfg.seed, progress=ctx.progress, device=ctx.device,
                   cuda_graphs=cfg.get("cuda_graphs", True))
    result.summary.setdefault("num_params", count_parameters(model))
    return result
