"""The human baseline of Table 1: a human's accuracy on MNIST-1D quizzes, normal and spatially shuffled.

Question: how well does a person classify MNIST-1D examples (paper: 96 ± 1 %, about 30 % shuffled)?
Command:  python -m mnist1d_lab experiment=human human.quiz_dir=<folder of human_q*.pkl>
          python -m mnist1d_lab experiment=human human.quiz_dir=<folder> data=frozen data.path=<mnist1d_data.pkl>
          python -m mnist1d_lab experiment=human          (no quiz files: the paper's numbers, labelled)
CPU time: a few seconds (most of it starting Python and loading the data).
Expected: the original repository's five quiz files hold 400 unique answers (human_q1 = human_q2), 383
          right: 95.75 % (Wilson 95 % interval 93.3-97.3), beside the paper's 95.8. No shuffled quiz
          exists there; a folder of them is given as `human.shuffled_quiz_dir`.
Outputs:  artifacts human_summary.md/.csv, human_class_errors.csv (per true class: n, errors, error rate,
          share of the errors), human_answers.csv (one row per unique answer with its test row), and
          test_rows.npy (test_rows_shuffled.npy): the quiz's test rows, to compare models on them.

Each quiz row is matched to a row of the `data` config's test set: exactly for data=frozen, within
`human.match_atol` for generated data (the default data from the exact generator equals the frozen pickle
to ~1e-15). A test row answered twice (identical quiz files) counts once.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from .. import human as H
from ..errors import ConfigError
from ..protocol import TrainResult

log = logging.getLogger(__name__)
VARIANTS = {"normal": "quiz_dir", "shuffled": "shuffled_quiz_dir"}  # variant -> its quiz folder knob


def validate(h: DictConfig) -> None:
    """Raise ConfigError for an impossible `human` knob."""
    if h.get("ci_method") not in H.CI_METHODS:
        raise ConfigError("human.ci_method", h.get("ci_method"), f"one of {sorted(H.CI_METHODS)}")
    conf = h.get("confidence")
    if not isinstance(conf, float) or not 0 < conf < 1:
        raise ConfigError("human.confidence", conf, "a number between 0 and 1, e.g. 0.95")
    atol = h.get("match_atol")
    if not isinstance(atol, (int, float)) or isinstance(atol, bool) or atol < 0:
        raise ConfigError("human.match_atol", atol, "a number >= 0 (0: exact equality)")
    for knob in VARIANTS.values():
        if h.get(knob) is not None and not isinstance(h.get(knob), str):
            raise ConfigError(f"human.{knob}", h.get(knob), "null or a folder of quiz files")


def evaluate(cfg: DictConfig, variant: str) -> tuple[dict, pd.DataFrame, pd.DataFrame] | None:
    """(stats, unique answers, per-class errors) of the variant's quiz folder; None without one."""
    h = cfg.human
    folder = h.get(VARIANTS[variant])
    if folder is None:
        return None
    quizzes = H.load_quizzes(folder, key=f"human.{VARIANTS[variant]}")
    x_test, atol, source = H.reference_test_set(cfg.data, shuffled=variant == "shuffled", match_atol=h.match_atol)
    ans = H.answers(quizzes, x_test, atol)
    if ans.attrs["unmatched"]:
        log.warning("%s quizzes: %d of %d answers match no row of the %s (they still count; their test "
                    "rows are unknown)", variant, ans.attrs["unmatched"], len(ans), source)
    s = H.stats(ans, quizzes, float(h.confidence), h.ci_method)
    s.update(source=f"{len(quizzes)} quiz files in {folder}", matched_to=source)
    return s, ans, H.class_errors(ans["true"], ans["guess"])


def summary_row(variant: str, s: dict | None) -> dict:
    """One row of human_summary.csv (percentages): from the quizzes, or the paper's number when none."""
    paper, pm = H.PAPER[variant]
    if s is None:
        return {"variant": variant, "source": "paper (Table 1; no quiz files given)", "n": None, "correct": None,
                "accuracy_pct": paper, "ci_low_pct": paper - pm, "ci_high_pct": paper + pm,
                "interval": f"± {pm:g} as printed in the paper", "original_style_pct": None, "paper_pct": paper}
    return {"variant": variant, "source": s["source"], "n": s["n"], "correct": s["correct"],
            "accuracy_pct": 100 * s["acc"], "ci_low_pct": 100 * s["acc_ci_low"], "ci_high_pct": 100 * s["acc_ci_high"],
            "interval": f"{100 * s['confidence']:g} % {s['ci_method']} (binomial, unique answers)",
            "original_style_pct": f"{100 * s['original_mean_of_quizzes']:.2f} ± "
                                  f"{100 * s['original_sem_of_quizzes']:.2f}", "paper_pct": paper}


def report(table: pd.DataFrame, results: dict) -> str:
    """human_summary.md: the table, what each number means, and the per-class errors."""
    lines = ["# Human baseline (MNIST-1D quizzes)", "", H.markdown_table(table)]
    for variant, (s, _, _) in results.items():
        lines.append(f"- {variant}: {s['answers_total']} answers in {s['quiz_files']} files, {s['duplicates']} "
                     f"repeated test rows counted once ({s['conflicting_duplicates']} with a different guess), "
                     f"{s['n']} unique, {s['unmatched_rows']} without a test row; rows matched to the "
                     f"{s['matched_to']}.")
    lines += ["- original_style_pct: the original notebook's statistic, mean of the per-file accuracies (repeated "
              "files included) ± their std / sqrt(files).",
              "- paper_pct: the paper's Table 1 (96 ± 1 normal, about 30 ± 10 shuffled)."]
    for variant, (_, _, errors) in results.items():
        errors = errors.assign(error_rate_pct=100 * errors["error_rate"], error_share_pct=100 * errors["error_share"])
        lines += ["", f"## Per-class errors ({variant})", "",
                  H.markdown_table(errors[["class", "n", "errors", "error_rate_pct", "error_share_pct"]])]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig, ctx) -> TrainResult:
    """Score the quiz folders (or show the paper's numbers); artifacts as in the module docstring."""
    validate(cfg.human)
    results = {v: r for v in VARIANTS if (r := evaluate(cfg, v)) is not None}
    table = pd.DataFrame([summary_row(v, results.get(v, (None,))[0]) for v in VARIANTS])
    table = table.astype({"n": "Int64", "correct": "Int64"})
    ctx.save_artifact("human_summary.csv", table)
    ctx.save_artifact("human_summary.md", report(table, results))
    summary = {}
    if results:
        ctx.save_artifact("human_class_errors.csv", pd.concat(
            [r[2].assign(variant=v) for v, r in results.items()])[["variant", "class", "n", "errors", "error_rate",
                                                                  "error_share"]])
        ctx.save_artifact("human_answers.csv", pd.concat([r[1].assign(variant=v) for v, r in results.items()]))
    for v in VARIANTS:
        prefix = "human_" if v == "normal" else "human_shuffled_"
        if v not in results:
            summary.update({f"{prefix}source": "paper", f"{prefix}acc": H.PAPER[v][0] / 100,
                            f"{prefix}acc_pm": H.PAPER[v][1] / 100})
            continue
        s, ans, _ = results[v]
        rows = np.sort(ans.loc[ans["test_row"] >= 0, "test_row"].to_numpy(np.int64))
        ctx.save_artifact("test_rows.npy" if v == "normal" else "test_rows_shuffled.npy", rows)
        summary.update({f"{prefix}source": "quizzes", **{f"{prefix}{k}": s[k] for k in (
            "acc", "acc_ci_low", "acc_ci_high", "n", "correct", "quiz_files", "duplicates", "unmatched_rows",
            "original_mean_of_quizzes", "original_sem_of_quizzes")}})
    for r in table.itertuples():
        log.info("human %s: %.2f %% [%.2f, %.2f] (%s)", r.variant, r.accuracy_pct, r.ci_low_pct, r.ci_high_pct,
                 r.source)
    return TrainResult(summary=summary)
