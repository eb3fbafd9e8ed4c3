"""Figure 8: which classes do the human and the CNN get wrong?

Question: are MNIST-1D's errors spread over the classes, and do the human and the CNN miss the same ones?
          (Paper, appendix A: both struggle most with 2s and 7s and less with 4s; the human with 9s, the
          CNN with 1s; neither errs on 3s and 6s.)
Command:  python -m mnist1d_lab experiment=classwise human.quiz_dir=<folder of human_q*.pkl>
          python -m mnist1d_lab experiment=classwise human.quiz_dir=<folder> data=frozen data.path=<mnist1d_data.pkl>
          python -m mnist1d_lab experiment=classwise         (no quizzes: the CNN's part only)
CPU time: 3 CNN runs of 3,000 steps, about 40 s on 2 cores (10-13 s each).
Expected: CNN about 92 % on the whole test set (the original's early-stopped run: 92.2 %, and 90.4 % on
          the first 500 test examples); human 95.75 % on its 400 unique quiz rows. Errors on most classes,
          most of them on 2, 7 and 4 for both.
Outputs:  classwise.csv (per class and who: n, errors, error rate, share of the errors, over seeds),
          classwise.md, figure8.png/.pdf.

Each job is a plain training run: the paper's CNN and protocol stopped at 3,000 steps (the original's
"early-stopped" CNN, a length it chose from the test curve), seeds 0, 1, 2. `summarize` reads each run's
final test predictions (artifacts/test_pred.npy) and compares them with the human on the quiz's test rows
(matched as in experiment=human) and, for the CNN, on the whole test set. All runs of the sweep are
pooled as replicates of one CNN: widen it with more seeds, not with other models or data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .. import human as H
from .. import paths
from ..records import write_texts
from .train import run  # noqa: F401  (each job is a plain training run)

log = logging.getLogger(__name__)
BATCHABLE = True
WHO = {"human": "human (quiz rows)", "cnn_quiz": "CNN (quiz rows)", "cnn_test": "CNN (whole test set)"}


def _column(table: pd.DataFrame, name: str, default=None):
    """The first non-missing value of a config column of the collected table, else default."""
    if name not in table:
        return default
    values = table[name].dropna()
    return default if values.empty else values.iloc[0]


def run_predictions(record_dir: str | Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(test_pred, test_true or None, confusion or None) kept by one run's record."""
    folder = Path(record_dir)
    pred = np.load(folder / paths.ARTIFACTS_DIR / paths.TEST_PRED_ARTIFACT)
    true_file = folder / paths.ARTIFACTS_DIR / getattr(paths, "TEST_TRUE_ARTIFACT", "test_true.npy")
    true = np.load(true_file) if true_file.is_file() else None
    conf_file = folder / paths.CONFUSION_FILE
    conf = pd.read_csv(conf_file).iloc[:, 1:].to_numpy(np.int64) if conf_file.is_file() else None
    return pred, true, conf


def whole_test_errors(pred: np.ndarray, true: np.ndarray | None, conf: np.ndarray | None) -> pd.DataFrame:
    """Per-class errors on the whole test set, from the true classes or else the confusion matrix."""
    if true is not None:
        return H.class_errors(true, pred)
    if conf is None:
        raise FileNotFoundError("the record keeps neither test_true.npy nor test_confusion.csv")
    n, errors = conf.sum(1), conf.sum(1) - np.diag(conf)
    return pd.DataFrame({"class": np.arange(len(n)), "n": n, "errors": errors,
                         "error_rate": errors / np.maximum(n, 1),
                         "error_share": errors / max(errors.sum(), 1)})


def quiz_answers(table: pd.DataFrame) -> pd.DataFrame | None:
    """The human's unique answers with their test rows (human.quiz_dir, matched to the runs' data); None
    without quizzes."""
    folder = _column(table, "human.quiz_dir")
    if folder is None:
        return None
    quizzes = H.load_quizzes(folder)
    config = yaml.safe_load((Path(table["record_dir"].iloc[0]) / paths.CONFIG_FILE).read_text())
    x_test, atol, source = H.reference_test_set(config["data"], False, float(_column(table, "human.match_atol", 1e-12)))
    ans = H.answers(quizzes, x_test, atol)
    log.info("human: %d unique answers, %d matched to test rows of the %s", len(ans), (ans["test_row"] >= 0).sum(),
             source)
    return ans


def classwise(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Tidy per-class errors (who, class, n, errors, error_rate, error_share; CNN: mean and std over runs)
    and the overall accuracies."""
    ans = quiz_answers(table)
    frames, acc = [], {}
    if ans is not None:
        acc["human"] = float(ans["correct"].mean())
        frames.append(H.class_errors(ans["true"], ans["guess"]).assign(who="human", runs=1))
        ans = ans[ans["test_row"] >= 0]
    cnn = {"cnn_quiz": [], "cnn_test": []}
    for record_dir in table["record_dir"]:
        if not (Path(record_dir) / paths.ARTIFACTS_DIR / paths.TEST_PRED_ARTIFACT).is_file():
            log.warning("%s: no %s/%s (a record from before test predictions were kept?); left out", record_dir,
                        paths.ARTIFACTS_DIR, paths.TEST_PRED_ARTIFACT)
            continue
        pred, true, conf = run_predictions(record_dir)
        cnn["cnn_test"].append(whole_test_errors(pred, true, conf))
        if ans is None or len(ans) == 0:
            continue
        rows = ans["test_row"].to_numpy()
        if rows.max() >= len(pred) or (true is not None and not np.array_equal(true[rows], ans["true"].to_numpy())):
            log.warning("%s: its test set is not the quiz's (rows out of range or other labels); "
                        "no comparison on the quiz rows", record_dir)
            continue
        cnn["cnn_quiz"].append(H.class_errors(ans["true"], pred[rows]))
    for who, runs in cnn.items():
        if not runs:
            continue
        stacked = pd.concat(runs, keys=range(len(runs)), names=["run"]).reset_index(level=0)
        g = stacked.groupby("class")
        out = g[["n", "errors", "error_rate"]].mean().reset_index()
        out["errors_std"], out["error_rate_std"] = g["errors"].std().to_numpy(), g["error_rate"].std().to_numpy()
        out["error_share"] = g["errors"].sum().to_numpy() / max(stacked["errors"].sum(), 1)  # pooled over runs
        frames.append(out.assign(who=who, runs=len(runs)))
        acc[who] = 1 - stacked["errors"].sum() / stacked["n"].sum()
    if not frames:
        raise FileNotFoundError(f"no run kept {paths.ARTIFACTS_DIR}/{paths.TEST_PRED_ARTIFACT} and no quizzes "
                                "were given (human.quiz_dir): nothing to compare")
    cols = ["who", "class", "runs", "n", "errors", "errors_std", "error_rate", "error_rate_std", "error_share"]
    return pd.concat(frames, ignore_index=True).reindex(columns=cols), acc


def figure8(t: pd.DataFrame, acc: dict):
    """Share of the errors and error rate per class, human beside the CNN (bars; CNN: std over runs)."""
    import matplotlib.pyplot as plt

    from ..plots import STYLE

    whos = [w for w in WHO if w in set(t["who"])]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        width = 0.8 / len(whos)
        for i, who in enumerate(whos):
            s = t[t["who"] == who].sort_values("class")
            x = s["class"].to_numpy() + (i - (len(whos) - 1) / 2) * width
            label = f"{WHO[who]}: {100 * acc[who]:.1f} % right"
            axes[0].bar(x, 100 * s["error_share"], width, label=label, color=f"C{i}")
            std = None if s["error_rate_std"].isna().all() else 100 * s["error_rate_std"].fillna(0)  # CNN: over runs
            axes[1].bar(x, 100 * s["error_rate"], width, yerr=std, capsize=2, label=label, color=f"C{i}")
        axes[0].set(xlabel="true class", ylabel="share of the errors (%)", title="Share of the errors")
        axes[1].set(xlabel="true class", ylabel="error rate (%)", title="Error rate (CNN: mean ± std over runs)")
        for ax in axes:
            ax.set_xticks(range(10))
        axes[0].legend(frameon=False, fontsize=8)
    return fig


def report(t: pd.DataFrame, acc: dict) -> str:
    """classwise.md: accuracies and a per-class table (errors, rate %, share %)."""
    lines = ["# Classwise errors (Figure 8)", ""]
    lines += [f"- {WHO[w]}: {100 * a:.2f} % right" + (f" (mean over {int(t[t.who == w].runs.iloc[0])} runs)"
                                                       if w != "human" else "") for w, a in acc.items()]
    lines += ["- the original's early-stopped CNN (one run, 3,000 steps): 92.2 % on the whole test set, 90.4 % on "
              "the first 500 test examples; the paper: human 96 ± 1, CNN 94 ± 2.", ""]
    wide = t.assign(rate_pct=100 * t["error_rate"], share_pct=100 * t["error_share"])
    wide = wide.pivot(index="class", columns="who", values=["errors", "rate_pct", "share_pct"])
    whos = [w for w in WHO if w in set(t["who"])]
    wide = wide[[(what, who) for who in whos for what in ("errors", "rate_pct", "share_pct")]]
    wide.columns = [f"{who} {what}" for what, who in wide.columns]
    lines.append(H.markdown_table(wide.reset_index()))
    lines.append("errors: per run (CNN: the mean over runs); rate: errors / examples of the class; share: the "
                 "class's part of all errors.")
    return "\n".join(lines) + "\n"


def summarize(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write classwise.csv, classwise.md and figure8.png/.pdf into out_dir."""
    from ..plots import save_figure

    out_dir = Path(out_dir)
    t, acc = classwise(table)
    files = {"classwise.csv": t.to_csv(index=False), "classwise.md": report(t, acc)}
    return [*write_texts(out_dir, files), *save_figure(figure8(t, acc), out_dir, "figure8")]
