"""The human baseline: quiz files in the original format, their test rows, accuracy and per-class errors.

A quiz file (the original repository's `static/human_q*.pkl`) is a pickle of `[xs, guesses, truths]`:
100 examples (each a (40,) array, rows of the frozen test set as the quiz showed them), the human's
guessed class and the true class of each. The known quizzes cover test rows 0-99 (twice: `human_q1.pkl`
and `human_q2.pkl` are the same file), 200-299, 300-399 and 400-499.

Each quiz row is matched to its test row (`match_rows`), and every test row counts once (`answers`):
a quiz repeated in two files, or a row shown twice, is one answer (the first, in file-name order).
Rows that match no test row are kept, deduplicated by their values.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError

log = logging.getLogger(__name__)

NUM_CLASSES = 10
# The paper's human numbers (Table 1, test accuracy %, "± " as printed): shown when no quiz files are given.
PAPER = {"normal": (96.0, 1.0), "shuffled": (30.0, 10.0)}
CI_METHODS = {"wilson": "wilson", "clopper_pearson": "exact"}  # our name -> scipy.stats' proportion_ci method


@dataclass
class Quiz:
    """One quiz file: x (n, L) float64 as shown, guess (n,) and true (n,) int64 classes."""

    name: str
    x: np.ndarray
    guess: np.ndarray
    true: np.ndarray


def load_quiz(path: str | os.PathLike) -> Quiz:
    """Read one quiz pickle `[xs, guesses, truths]` (lists or arrays); ConfigError if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core references in 2020 pickles
            xs, guesses, truths = pickle.load(fh)
        quiz = Quiz(path.name, np.asarray(xs, dtype=np.float64), np.asarray(guesses, dtype=np.int64),
                    np.asarray(truths, dtype=np.int64))
    except (OSError, pickle.UnpicklingError, ValueError, TypeError, EOFError) as exc:
        raise ConfigError("quiz file", str(path), f"a pickle of [xs, guesses, truths] ({exc})") from exc
    n = len(quiz.true)
    if quiz.x.ndim != 2 or len(quiz.x) != n or len(quiz.guess) != n:
        raise ConfigError("quiz file", str(path),
                          f"xs (n, L), guesses (n,) and truths (n,) of one length n; got shapes "
                          f"{quiz.x.shape}, {quiz.guess.shape}, {quiz.true.shape}")
    return quiz


def load_quizzes(folder: str | os.PathLike, key: str = "human.quiz_dir") -> list[Quiz]:
    """Every `*.pkl` quiz in folder, in file-name order; ConfigError if there is none."""
    folder = Path(str(folder)).expanduser()
    files = sorted(folder.glob("*.pkl")) if folder.is_dir() else []
    files = [f for f in files if f.name != "mnist1d_data.pkl"]  # the frozen dataset often sits beside them
    if not files:
        raise ConfigError(key, str(folder), "a folder holding quiz files (*.pkl of [xs, guesses, truths])")
    return [load_quiz(f) for f in files]


def match_rows(x: np.ndarray, x_test: np.ndarray, atol: float = 0.0) -> np.ndarray:
    """(n,) index of the test row equal to each row of x (largest |difference| <= atol), -1 where none.

    atol = 0 is exact equality (the frozen test set); the exact generator's default data equals the frozen
    pickle to ~1e-15, so a tiny atol finds the same rows in it.
    """
    x, x_test = np.asarray(x, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
    if x.shape[1] != x_test.shape[1]:
        return np.full(len(x), -1, dtype=np.int64)
    out = np.full(len(x), -1, dtype=np.int64)
    for i, row in enumerate(x):  # (n_test, L) per quiz row: 100 x 1000 x 40 values, instant
        dist = np.abs(x_test - row).max(axis=1)
        j = int(dist.argmin())
        if dist[j] <= atol:
            out[i] = j
    return out


def answers(quizzes: list[Quiz], x_test: np.ndarray | None = None, atol: float = 0.0) -> pd.DataFrame:
    """One row per unique answer: quiz, item, test_row (-1: unmatched / no test set), guess, true, correct.

    Rows are matched to x_test when given; an answer whose test row (or, unmatched, whose values) was
    already answered in an earlier quiz (file-name order) is dropped. `attrs` keep the counts: total
    answers, duplicates dropped, duplicates whose guess differed from the kept one.
    """
    frames = []
    for q in quizzes:
        rows = match_rows(q.x, x_test, atol) if x_test is not None else np.full(len(q.true), -1, dtype=np.int64)
        frames.append(pd.DataFrame({"quiz": q.name, "item": np.arange(len(q.true)), "test_row": rows,
                                    "guess": q.guess, "true": q.true,
                                    "_key": [f"r{r}" if r >= 0 else x.tobytes().hex() for r, x in zip(rows, q.x,
                                                                                              strict=True)]}))
    every = pd.concat(frames, ignore_index=True)
    dup = every.duplicated("_key", keep="first")
    kept = every[~dup]
    first_guess = kept.set_index("_key")["guess"]
    conflicts = int((every.loc[dup, "guess"].to_numpy() != first_guess.loc[every.loc[dup, "_key"]].to_numpy()).sum())
    out = kept.drop(columns="_key").reset_index(drop=True)
    out["correct"] = out["guess"] == out["true"]
    out.attrs.update(total=len(every), duplicates=int(dup.sum()), conflicting_duplicates=conflicts,
                     unmatched=int((out["test_row"] < 0).sum()))
    if conflicts:
        log.warning("%d repeated quiz rows got a different guess; the first answer counts", conflicts)
    return out


def binomial_ci(k: int, n: int, confidence: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Confidence interval of the proportion k/n: Wilson score or Clopper-Pearson (exact), via scipy."""
    from scipy.stats import binomtest

    if method not in CI_METHODS:
        raise ConfigError("human.ci_method", method, f"one of {sorted(CI_METHODS)}")
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method=CI_METHODS[method])
    return float(ci.low), float(ci.high)


def class_errors(true: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> pd.DataFrame:
    """Per true class: n, errors, error_rate (errors / n) and error_share (errors / all errors), fractions."""
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    n = np.bincount(true, minlength=num_classes)
    errors = np.bincount(true[true != pred], minlength=num_classes)
    total = errors.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, errors / np.maximum(n, 1), np.nan)
    share = errors / total if total else np.zeros(num_classes)
    return pd.DataFrame({"class": np.arange(num_classes), "n": n, "errors": errors, "error_rate": rate,
                         "error_share": share})


def per_quiz(quizzes: list[Quiz]) -> pd.DataFrame:
    """Accuracy of each quiz file as it is (duplicates included): quiz, n, correct, accuracy."""
    return pd.DataFrame([{"quiz": q.name, "n": len(q.true), "correct": int((q.guess == q.true).sum()),
                          "accuracy": float((q.guess == q.true).mean())} for q in quizzes])


def stats(ans: pd.DataFrame, quizzes: list[Quiz], confidence: float = 0.95, method: str = "wilson") -> dict:
    """Accuracy of the unique answers with its binomial interval, beside the original's statistic.

    The original notebook pools every file (duplicates included) and reports the mean of the quiz
    accuracies ± their np.std / sqrt(number of quizzes) (95.8 ± 0.44 on the five known files).
    """
    n, k = len(ans), int(ans["correct"].sum())
    lo, hi = binomial_ci(k, n, confidence, method)
    accs = per_quiz(quizzes)["accuracy"].to_numpy()
    return {"n": n, "correct": k, "acc": k / n if n else float("nan"), "acc_ci_low": lo, "acc_ci_high": hi,
            "ci_method": method, "confidence": confidence, "quiz_files": len(quizzes),
            "answers_total": ans.attrs.get("total", n), "duplicates": ans.attrs.get("duplicates", 0),
            "conflicting_duplicates": ans.attrs.get("conflicting_duplicates", 0),
            "unmatched_rows": ans.attrs.get("unmatched", 0),
            "original_mean_of_quizzes": float(accs.mean()),
            "original_sem_of_quizzes": float(accs.std() / np.sqrt(len(accs)))}


def reference_test_set(data_cfg, shuffled: bool = False, match_atol: float = 1e-12) -> tuple[np.ndarray, float, str]:
    """(x_test, atol, description) to match quiz rows against: the `data` config's test set, spatially
    shuffled or not as the quiz was, compared exactly for a frozen pickle and within match_atol for
    generated data (the exact generator's default dataset equals the frozen one to ~1e-15)."""
    from omegaconf import OmegaConf

    from .data import dataset

    plain = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    plain["shuffle_seq"] = bool(shuffled)
    frozen = plain.get("source") == "frozen"
    what = f"frozen pickle {plain.get('path')}" if frozen else \
        f"generated data (data.seed={plain.get('seed')}, {plain.get('generator')} generator)"
    return np.asarray(dataset(plain)["x_test"]), 0.0 if frozen else float(match_atol), what


def markdown_table(table: pd.DataFrame) -> str:
    """A Markdown table of a DataFrame (no extra dependency); floats with 2 decimals, missing values as -."""
    def fmt(v) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
