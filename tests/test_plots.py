"""Figures: the shared style stays inside its context (matplotlib's global rcParams untouched, at import
and while drawing), Figure 1 and the plot command write PNG + PDF."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import pandas as pd
import pytest

from mnist1d_lab import plot, plots


def changed_rc(before: matplotlib.RcParams) -> dict:
    """The rcParams that differ from `before`, read raw (reading "backend" through rcParams would pick one)."""
    after = matplotlib.rcParams
    keys = set(dict.keys(before)) | set(dict.keys(after))
    return {k: (dict.get(before, k), dict.get(after, k)) for k in keys if dict.get(before, k) != dict.get(after, k)}


@pytest.fixture
def sweep_table() -> pd.DataFrame:
    """A collected table in miniature: two widths x two noise levels x two seeds."""
    rows = [{"model.width": w, "train.label_noise": n, "seed": s, "final_test_acc": 0.5 + 0.001 * w - n + 0.01 * s}
            for w in (8, 64) for n in (0.0, 0.2) for s in (0, 1)]
    return pd.DataFrame(rows)


def test_drawing_figures_leaves_matplotlib_rcparams_unchanged(tmp_path, sweep_table):
    from mnist1d_lab.figure1 import plot_dataset_construction

    before = matplotlib.rcParams.copy()
    fig = plots.metric_vs_knob(sweep_table, "model.width", "final_test_acc", hue="train.label_noise", logx=True)
    ax = fig.axes[0]
    # the style was in force while drawing: no top spine, a grid (matplotlib's defaults are the opposite)
    assert not ax.spines["top"].get_visible() and ax.xaxis.get_gridlines()[0].get_visible()
    assert [p.suffix for p in plots.save_figure(fig, tmp_path, "knob")] == [".png", ".pdf"]
    paths = plot_dataset_construction(tmp_path, dpi=30)
    assert all(p.is_file() for p in paths)
    with plots.style({"font.size": 3}):
        assert matplotlib.rcParams["font.size"] == 3 and matplotlib.rcParams["axes.spines.top"] is False
    assert changed_rc(before) == {}


def test_importing_the_figure_modules_leaves_matplotlib_settings_alone():
    """No rcParams, backend or style set at import (a notebook's inline backend survives `import`)."""
    code = ("import matplotlib; before = matplotlib.rcParams.copy()\n"
            "import mnist1d_lab.plots, mnist1d_lab.plot, mnist1d_lab.figure1\n"
            "import mnist1d_lab.experiments.benchmark, mnist1d_lab.experiments.double_descent\n"
            "after = matplotlib.rcParams\n"
            "print(sorted(k for k in dict.keys(after) if dict.get(before, k) != dict.get(after, k)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_subplots_and_save_figure_without_pyplot(tmp_path):
    fig, axes = plots.subplots(2, 3, figsize=(3, 2), sharey="row", squeeze=False)
    assert axes.shape == (2, 3) and tuple(fig.get_size_inches()) == (3, 2)
    assert fig.canvas.manager is None  # not a pyplot figure: nothing to close, no backend chosen
    out = plots.save_figure(fig, tmp_path / "new", "grid", dpi=50)
    assert [p.name for p in out] == ["grid.png", "grid.pdf"] and all(p.stat().st_size > 0 for p in out)


def test_save_figure_closes_a_pyplot_figure(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    plots.save_figure(fig, tmp_path, "py", dpi=30)
    assert not plt.fignum_exists(fig.number)


def test_plot_command(tmp_path, sweep_table, capsys):
    sweep_table.to_csv(tmp_path / "results.csv", index=False)
    assert plot.main([str(tmp_path), "x=model.width", "y=final_test_acc", "hue=seed"]) == 0
    assert (tmp_path / "plot_final_test_acc_vs_model.width.png").is_file()
    assert (tmp_path / "plot_final_test_acc_vs_model.width.pdf").is_file()
    assert plot.main([str(tmp_path / "results.csv"), "x=model.width"]) == 2  # y= missing
    assert plot.main([str(tmp_path), "x=model.depth", "y=final_test_acc"]) == 2  # no such column
    err = capsys.readouterr().err
    assert "x= and y= are required" in err and "'model.depth' not in the table" in err
