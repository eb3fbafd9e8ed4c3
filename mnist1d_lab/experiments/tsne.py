"""Figure 10: t-SNE of MNIST-1D (and of MNIST, when you have its files) coloured by class.

Question: does MNIST-1D form class clusters in input space, as MNIST does? (Paper: MNIST shows ten
          well-defined clusters, MNIST-1D few: its classes need nonlinear features.)
Command:  python -m mnist1d_lab experiment=tsne                                     (generated default data)
          python -m mnist1d_lab experiment=tsne data=frozen data.path=<mnist1d_data.pkl>  (the paper's data)
          python -m mnist1d_lab experiment=tsne tsne.mnist_path=<folder of IDX files | mnist.npz>
CPU time: MNIST-1D (5,000 x 40) about 50 s on one core; MNIST takes longer, growing as n log n with the
          images embedded (`tsne.mnist_max`, default 10,000 of 70,000; null: all, tens of minutes).
Expected: MNIST-1D: no separated clusters, classes overlap (KL 2.494 on the 5,000 frozen examples, seed 0;
          the original's openTSNE: 2.528); MNIST: ten clusters (the original's KL on all 70,000: 2.864).
Outputs:  artifacts figure10.png/.pdf, tsne_embedding.csv (dataset, row, split, label, tsne_x, tsne_y);
          the summary keeps each dataset's KL divergence and number of points.

scikit-learn's Barnes-Hut TSNE (perplexity 30, PCA init, random_state = `seed`); the
original used openTSNE with the same perplexity and initialisation (docs/paper_figures.md). MNIST pixels
are scaled to [0, 1]; each point is one train or test example; labels sit at the class medians.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ..errors import ConfigError
from ..protocol import TrainResult

log = logging.getLogger(__name__)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(t: DictConfig) -> None:
    """Raise ConfigError for an impossible `tsne` knob."""
    p = t.get("perplexity")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or p <= 0:
        raise ConfigError("tsne.perplexity", p, "a number > 0 (30 in the paper's figure)")
    if not _is_int(t.get("max_iter")) or t.max_iter < 300:
        raise ConfigError("tsne.max_iter", t.get("max_iter"),
                          "an integer >= 300 (250 early-exaggeration steps, then at least 50 that give the KL)")
    for knob in ("max_points", "mnist_max"):
        v = t.get(knob)
        if v is not None and (not _is_int(v) or v <= 3 * p):
            raise ConfigError(f"tsne.{knob}", v, f"null (all points) or an integer > 3 * perplexity ({3 * p:g})")
    if t.get("mnist_path") is not None and not isinstance(t.get("mnist_path"), str):
        raise ConfigError("tsne.mnist_path", t.get("mnist_path"), "null or a folder of IDX files or an .npz")


def subsample(n: int, k: int | None, seed: int) -> np.ndarray:
    """Sorted indices of k of n rows drawn without replacement from `seed` (all rows when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([int(seed), 10]).choice(n, size=k, replace=False))


def embed(x: np.ndarray, seed: int, perplexity: float, max_iter: int) -> dict:
    """{"embedding": (n, 2), "kl": final KL divergence} of scikit-learn's TSNE (PCA init, Barnes-Hut)."""
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=float(perplexity), init="pca", random_state=int(seed),
                max_iter=int(max_iter))
    emb = tsne.fit_transform(np.asarray(x, dtype=np.float32))
    kl = float(tsne.kl_divergence_)  # scikit-learn's placeholder (float max) when no final step ran
    return {"embedding": emb.astype(np.float32), "kl": kl if kl < 1e300 else float("nan")}


def mnist1d_points(data_cfg: DictConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(x, y, split, description): every train then test example of the `data` config."""
    from ..data import dataset

    d = dataset(data_cfg)
    frozen = data_cfg.get("source") == "frozen"
    what = "the frozen pickle" if frozen else \
        f"generated: data.seed={data_cfg.seed}, {data_cfg.generator} generator, not the frozen file"
    x = np.concatenate([d["x"], d["x_test"]])
    split = np.array(["train"] * len(d["x"]) + ["test"] * len(d["x_test"]))
    return x, np.concatenate([d["y"], d["y_test"]]).astype(np.int64), split, what


def panel(ax, emb: np.ndarray, y: np.ndarray, title: str) -> None:
    """One t-SNE scatter coloured by class, with each class's label at its median point."""
    import matplotlib.patheffects as pe

    colors = [f"C{c}" for c in range(10)]
    ax.scatter(emb[:, 0], emb[:, 1], c=[colors[c % 10] for c in y], s=2 if len(y) > 3000 else 5, alpha=0.6,
               linewidths=0, rasterized=True)
    for c in np.unique(y):
        mx, my = np.median(emb[y == c], axis=0)
        ax.text(mx, my, str(c), fontsize=14, fontweight="bold", ha="center", va="center", color=colors[c % 10],
                path_effects=[pe.withStroke(linewidth=3, foreground="white")])
    ax.set(title=title, xticks=[], yticks=[])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def figure10(panels: list[tuple[np.ndarray, np.ndarray, str]]):
    """MNIST (when given) beside MNIST-1D, one panel each."""
    import matplotlib.pyplot as plt

    from ..plots import STYLE

    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
        for ax, (emb, y, title) in zip(axes[0], panels, strict=True):
            panel(ax, emb, y, title)
    return fig


def figure_bytes(fig, fmt: str) -> bytes:
    """The figure as PNG (200 dpi) or PDF bytes, for ctx.save_artifact."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=200, bbox_inches="tight")
    return buf.getvalue()


def run(cfg: DictConfig, ctx) -> TrainResult:
    """Embed MNIST-1D (and MNIST from `tsne.mnist_path`), draw Figure 10, keep the embeddings."""
    import matplotlib.pyplot as plt

    t = cfg.tsne
    validate(t)
    datasets = []  # (name, x, y, split, description)
    x, y, split, what = mnist1d_points(cfg.data)
    datasets.append(("mnist1d", x, y, split, what))
    if t.mnist_path is not None:
        from ..mnist_files import load_mnist

        mx, my = load_mnist(t.mnist_path)
        n_train = 60000 if len(mx) == 70000 else len(mx)
        msplit = np.where(np.arange(len(mx)) < n_train, "train", "test")
        datasets.insert(0, ("mnist", mx, my, msplit, Path(t.mnist_path).name))
    summary, panels, frames = {}, [], []
    for name, x, y, split, what in datasets:
        keep = subsample(len(x), t.max_points if name == "mnist1d" else t.mnist_max, cfg.seed)
        log.info("t-SNE of %s: %d of %d points (%s)", name, len(keep), len(x), what)
        out = ctx.stage(f"tsne_{name}", lambda x=x, keep=keep: embed(x[keep], cfg.seed, t.perplexity, t.max_iter))
        emb = np.asarray(out["embedding"])
        summary.update({f"tsne_kl_{name}": out["kl"], f"tsne_n_{name}": len(keep), f"tsne_total_{name}": len(x),
                        f"tsne_source_{name}": what})
        label = "MNIST" if name == "mnist" else "MNIST-1D"
        panels.append((emb, y[keep], f"{label}: {len(keep):,} of {len(x):,} examples, KL {out['kl']:.3f}\n({what})"))
        frames.append(pd.DataFrame({"dataset": name, "row": keep, "split": split[keep], "label": y[keep],
                                    "tsne_x": emb[:, 0], "tsne_y": emb[:, 1]}))
    ctx.save_artifact("tsne_embedding.csv", pd.concat(frames, ignore_index=True))
    fig = figure10(panels)
    ctx.save_artifact("figure10.png", figure_bytes(fig, "png"))
    ctx.save_artifact("figure10.pdf", figure_bytes(fig, "pdf"))
    plt.close(fig)
    summary.update(tsne_perplexity=float(t.perplexity), tsne_max_iter=int(t.max_iter))
    log.info("t-SNE KL divergence: %s", ", ".join(f"{k[8:]} {v:.3f}" for k, v in summary.items()
                                                    if k.startswith("tsne_kl_")))
    return TrainResult(summary=summary)

