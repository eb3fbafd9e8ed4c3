"""Figure 1 of the paper: the ten templates and their step-by-step transformation into MNIST-1D examples.

Each column follows one digit through the generator's steps with one set of random draws (drawn in the
original's order), so a row differs from the one above by exactly one step. Signals are drawn as the
paper does: value on the horizontal axis, position on the vertical axis, top to bottom. Drawn under
`plots.style` (its own fonts and no grid), so matplotlib's global settings are left as they were.

    python scripts/figure1_dataset.py --out outputs/figures
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from . import plots
from .data.config import knobs
from .data.exact import CORR_SIGMA, EPS, get_templates, roll_rows

STEPS = ("template", "pad", "dilate + scale", "translate", "+ correlated noise", "+ iid noise", "shear",
         "subsample")
COLORS = ("#222222", "#4c72b0", "#4c72b0", "#55a868", "#c44e52", "#c44e52", "#8172b3", "#222222")
# on top of plots.STYLE: no grid, a frame on all sides, the saved size as laid out, TrueType in the PDF
RC = {"axes.grid": False, "axes.spines.top": True, "axes.spines.right": True, "savefig.bbox": "standard",
      "font.family": "DejaVu Sans", "font.size": 9, "pdf.fonttype": 42}


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def transform_steps(template: np.ndarray, rs: np.random.RandomState, cfg: dict | None = None) -> list[np.ndarray]:
    """The signal after each step in STEPS for one template (draws in the original's order)."""
    a = knobs(cfg)
    low, high = a["padding"]
    length = a["template_len"] + high
    padded = np.concatenate([template + EPS, np.zeros(low + int(rs.random_sample() * (high - low + 1)))])
    scaled = _resample(padded, length) * (1 + a["scale_coeff"] * (rs.random_sample() - 0.5))
    shifted = roll_rows(scaled[None], np.array([rs.randint(0, a["max_translation"])]))[0]
    corr = gaussian_filter1d(a["corr_noise_scale"] * rs.standard_normal(length), CORR_SIGMA)
    noisy = np.where(shifted != 0, shifted, corr)
    noisier = noisy + a["iid_noise_scale"] * rs.standard_normal(length)
    sheared = noisier - a["shear_scale"] * (rs.random_sample() - 0.5) * np.linspace(-0.5, 0.5, length)
    # the padded signal is drawn on the dilated length's grid so that its zeros show as a tail
    return [template, np.concatenate([padded, np.full(length - len(padded), np.nan)]), scaled, shifted, noisy,
            noisier, sheared, _resample(sheared, a["final_seq_length"])]


def plot_dataset_construction(out_dir: str | os.PathLike, seed: int = 0, name: str = "figure1_dataset",
                              dpi: int = 200) -> list[Path]:
    """Draw Figure 1 (templates -> pad -> dilate/scale -> translate -> noise -> shear -> subsample) as PNG and PDF."""
    templates = get_templates()
    rs = np.random.RandomState(seed)
    rows = list(zip(*[transform_steps(t, rs) for t in templates["x"]], strict=True))  # rows[step][digit]

    with plots.style(RC):
        fig, axes = plots.subplots(len(STEPS), 10, figsize=(10.5, 12.5), sharey="row")
        for r, (step, signals) in enumerate(zip(STEPS, rows, strict=True)):
            lim = 1.12 * max(np.nanmax(np.abs(s)) for s in signals)
            for c, s in enumerate(signals):
                ax = axes[r, c]
                pos = np.linspace(0, 1, len(s))
                final = r == len(STEPS) - 1
                ax.plot(s, pos, "-", color=COLORS[r], lw=1.6 if final else 1.4, solid_capstyle="round")
                if final or r == 0:
                    ax.plot(s, pos, "o", color=COLORS[r], ms=2.2)
                ax.axvline(0, color="#dddddd", lw=0.6, zorder=0)
                ax.set_xlim(-lim, lim)
                ax.set_ylim(1.04, -0.04)  # position runs top to bottom, as in the paper
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_color("#bbbbbb")
                    side.set_linewidth(0.6)
                if r == 0:
                    ax.set_title(f"{c}", fontsize=13, fontweight="bold", pad=6)
                if c == 0:
                    n = len(s[~np.isnan(s)]) if r != 1 else "12+p"
                    ax.set_ylabel(f"{step}\n({n} pts)", fontsize=9.5, rotation=0, ha="right", va="center",
                                  labelpad=8)
        fig.suptitle("Constructing MNIST-1D: each row applies one more transformation", fontsize=13, y=0.992)
        fig.subplots_adjust(left=0.14, right=0.995, bottom=0.008, top=0.945, wspace=0.06, hspace=0.1)
    return plots.save_figure(fig, out_dir, name, dpi=dpi, rc=RC)
