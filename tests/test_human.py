"""The human baseline (quiz files written here in the original format, and the real ones when present) and
Figure 8's classwise summary on records made here."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import compose_cfg, run_lab

from mnist1d_lab import human as H
from mnist1d_lab.context import RunContext
from mnist1d_lab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("MNIST1D_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
FROZEN = REFERENCE_DIR / "mnist1d_data.pkl"
SMALL = ["data.num_samples=1000"]  # 800 train / 200 test rows of the exact generator


def write_quiz(path: Path, x: np.ndarray, guess, true) -> Path:
    """A quiz file as the original wrote it: a pickle of [list of (40,) arrays, list of int, list of np.int64]."""
    with open(path, "wb") as fh:
        pickle.dump([list(np.asarray(x)), [int(g) for g in guess], [np.int64(t) for t in true]], fh)
    return path


def small_test_set(tmp_path: Path, shuffled: bool = False) -> dict:
    from mnist1d_lab.data import dataset

    cfg = compose_cfg(*SMALL, f"data.cache_dir={tmp_path / 'cache'}", f"data.shuffle_seq={str(shuffled).lower()}")
    return dataset(cfg.data)


def test_answers_count_each_test_row_once():
    g = np.random.default_rng(0)
    x_test, y_test = g.normal(size=(50, 40)), g.integers(0, 10, 50)
    guess = y_test.copy()
    guess[[3, 7]] = (guess[[3, 7]] + 1) % 10  # two wrong answers among rows 0-9
    a = H.Quiz("a.pkl", x_test[:10], guess[:10], y_test[:10])
    b = H.Quiz("b.pkl", x_test[:10], guess[:10], y_test[:10])  # the same quiz again, as human_q1 / human_q2
    c_rows = [20, 21, 22, 0]  # three new rows and row 0 again, answered differently
    c_guess = y_test[c_rows].copy()
    c_guess[3] = (c_guess[3] + 5) % 10
    c = H.Quiz("c.pkl", x_test[c_rows], c_guess, y_test[c_rows])
    ans = H.answers([a, b, c], x_test)
    assert len(ans) == 13 and ans["test_row"].tolist() == [*range(10), 20, 21, 22]
    assert ans.attrs == {"total": 24, "duplicates": 11, "conflicting_duplicates": 1, "unmatched": 0}
    assert int(ans["correct"].sum()) == 11  # the first answer to row 0 (right) counts
    s = H.stats(ans, [a, b, c])
    assert (s["n"], s["correct"]) == (13, 11) and s["acc"] == pytest.approx(11 / 13)
    assert s["original_mean_of_quizzes"] == pytest.approx(np.mean([0.8, 0.8, 0.75]))
    # without a test set the rows are deduplicated by their values
    unmatched = H.answers([a, b, c])
    assert len(unmatched) == 13 and (unmatched["test_row"] == -1).all() and unmatched.attrs["unmatched"] == 13


def test_match_rows_exact_or_within_atol():
    g = np.random.default_rng(1)
    x_test = g.normal(size=(30, 40))
    x = x_test[[5, 2]] + np.array([[0.0], [1e-15]])
    assert H.match_rows(x, x_test).tolist() == [5, -1]  # exact: the perturbed row is not found
    assert H.match_rows(x, x_test, atol=1e-12).tolist() == [5, 2]
    assert H.match_rows(x[:, :39], x_test).tolist() == [-1, -1]  # other length: nothing matches


def test_binomial_intervals_equal_their_formulas():
    from scipy.stats import beta, norm

    k, n = 383, 400
    p, z = k / n, norm.ppf(0.975)
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert H.binomial_ci(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert H.binomial_ci(k, n, method="clopper_pearson") == pytest.approx(
        (beta.ppf(0.025, k, n - k + 1), beta.ppf(0.975, k + 1, n - k)), abs=1e-9)
    lo, hi = H.binomial_ci(k, n, confidence=0.99)
    assert lo < centre - half and hi > centre + half
    with pytest.raises(ConfigError, match="human.ci_method"):
        H.binomial_ci(k, n, method="normal")


def test_class_errors_rate_and_share():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 9])
    pred = np.array([0, 1, 2, 1, 0, 2, 2, 2, 2, 9])
    e = H.class_errors(true, pred)
    assert e["n"].tolist() == [3, 2, 4, 0, 0, 0, 0, 0, 0, 1]
    assert e["errors"].tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert e["error_rate"].iloc[:3].tolist() == pytest.approx([2 / 3, 0.5, 0.0]) and np.isnan(e["error_rate"][3])
    assert e["error_share"].iloc[:2].tolist() == pytest.approx([2 / 3, 1 / 3]) and e["error_share"].sum() == 1


def test_bad_quiz_files_and_folders(tmp_path):
    with pytest.raises(ConfigError, match="human.quiz_dir"):
        H.load_quizzes(tmp_path)  # no quiz in it
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="xs, guesses, truths"):
        H.load_quizzes(tmp_path)
    with open(tmp_path / "bad.pkl", "wb") as fh:
        pickle.dump([np.zeros((3, 40)), [1, 2], [1, 2, 3]], fh)
    with pytest.raises(ConfigError, match="one length"):
        H.load_quizzes(tmp_path)


def test_human_experiment_on_quizzes_written_here(tmp_path):
    from mnist1d_lab.experiments import human

    d, ds = small_test_set(tmp_path), small_test_set(tmp_path, shuffled=True)
    y = d["y_test"]
    (tmp_path / "q").mkdir()
    (tmp_path / "s").mkdir()
    guess = y[10:30].copy()
    guess[[0, 1, 2]] = (guess[[0, 1, 2]] + 1) % 10  # rows 10, 11, 12 wrong
    write_quiz(tmp_path / "q" / "q1.pkl", d["x_test"][10:30], guess, y[10:30])
    write_quiz(tmp_path / "q" / "q2.pkl", d["x_test"][10:30], guess, y[10:30])  # a duplicate file
    write_quiz(tmp_path / "q" / "q3.pkl", d["x_test"][100:120], y[100:120], y[100:120])
    shuffled_guess = (y[50:60] + np.arange(10) % 3).astype(int) % 10  # 4 of 10 right (offsets 0 at 0, 3, 6, 9)
    write_quiz(tmp_path / "s" / "s1.pkl", ds["x_test"][50:60], shuffled_guess, y[50:60])
    cfg = compose_cfg("experiment=human", *SMALL, f"data.cache_dir={tmp_path / 'cache'}",
                      f"human.quiz_dir={tmp_path / 'q'}", f"human.shuffled_quiz_dir={tmp_path / 's'}",
                      "human.ci_method=clopper_pearson")
    ctx = RunContext(tmp_path / "run", progress=False)
    s = human.run(cfg, ctx).summary
    assert (s["human_n"], s["human_correct"], s["human_duplicates"], s["human_unmatched_rows"]) == (40, 37, 20, 0)
    assert s["human_acc"] == pytest.approx(37 / 40)
    assert (s["human_acc_ci_low"], s["human_acc_ci_high"]) == pytest.approx(H.binomial_ci(37, 40, 0.95,
                                                                                          "clopper_pearson"))
    assert (s["human_shuffled_n"], s["human_shuffled_correct"]) == (10, 4)
    rows = np.load(ctx.artifact_path("test_rows.npy"))
    assert rows.tolist() == [*range(10, 30), *range(100, 120)]
    assert np.load(ctx.artifact_path("test_rows_shuffled.npy")).tolist() == list(range(50, 60))
    table = pd.read_csv(ctx.artifact_path("human_summary.csv"))
    assert table["variant"].tolist() == ["normal", "shuffled"] and table["accuracy_pct"].tolist() == [92.5, 40.0]
    errors = pd.read_csv(ctx.artifact_path("human_class_errors.csv"))
    normal = errors[errors["variant"] == "normal"]
    assert normal["errors"].sum() == 3 and normal["error_share"].sum() == pytest.approx(1.0)
    assert "counted once" in ctx.artifact_path("human_summary.md").read_text()


def test_human_experiment_without_quizzes_shows_the_paper(tmp_path):
    from mnist1d_lab.experiments import human

    ctx = RunContext(tmp_path / "run", progress=False)
    s = human.run(compose_cfg("experiment=human"), ctx).summary
    assert (s["human_source"], s["human_acc"], s["human_shuffled_acc"]) == ("paper", 0.96, 0.30)
    assert "paper" in ctx.artifact_path("human_summary.md").read_text()
    assert not ctx.artifact_path("test_rows.npy").exists()


@pytest.mark.parametrize("knob", ["human.ci_method=normal", "human.confidence=95", "human.match_atol=-1"])
def test_human_bad_knobs(knob):
    from mnist1d_lab.experiments import human

    with pytest.raises(ConfigError, match=knob.split("=")[0]):
        human.validate(compose_cfg("experiment=human", knob).human)


def test_real_quizzes_383_of_400(tmp_path):
    if not (REFERENCE_DIR / "human_q1.pkl").is_file() or not FROZEN.is_file():
        pytest.skip(f"quiz files or frozen dataset not found in {REFERENCE_DIR} (set MNIST1D_REFERENCE_DIR)")
    quiz_dir = tmp_path / "quizzes"  # the quizzes alone (the reference folder also holds the dataset pickle)
    quiz_dir.mkdir()
    for i in range(1, 6):
        (quiz_dir / f"human_q{i}.pkl").write_bytes((REFERENCE_DIR / f"human_q{i}.pkl").read_bytes())
    proc = run_lab(tmp_path, "experiment=human", f"human.quiz_dir={quiz_dir}", "data=frozen", f"data.path={FROZEN}",
                   "progress=false")
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "complete" and (s["human_n"], s["human_correct"]) == (400, 383)
    assert 100 * s["human_acc"] == pytest.approx(95.75) and s["human_duplicates"] == 100
    assert 100 * s["human_original_mean_of_quizzes"] == pytest.approx(95.8)  # the original's pooled number
    rows = np.load(run_dir / "artifacts" / "test_rows.npy")
    assert rows.tolist() == [*range(0, 100), *range(200, 500)]
    assert "95.75" in proc.stdout + proc.stderr


# ---- Figure 8: classwise errors from records made here -------------------------------------------------


def fake_record(folder: Path, data_cfg: dict, pred: np.ndarray, true: np.ndarray, keep_true: bool = True) -> str:
    """A finished run's record as far as classwise.summarize reads it: config.yaml and the predictions."""
    import yaml

    from mnist1d_lab import records

    (folder / "artifacts").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": data_cfg, "seed": 0}))
    np.save(folder / "artifacts" / "test_pred.npy", pred)
    if keep_true:
        np.save(folder / "artifacts" / "test_true.npy", true)
    (folder / "test_confusion.csv").write_text(records.confusion_csv(records.confusion_matrix(true, pred)))
    return str(folder)


def test_classwise_summary_on_records_made_here(tmp_path):
    from omegaconf import OmegaConf

    from mnist1d_lab.experiments import classwise

    cfg = compose_cfg(*SMALL, f"data.cache_dir={tmp_path / 'cache'}")
    d = small_test_set(tmp_path)
    y = d["y_test"].astype(np.int64)
    (tmp_path / "q").mkdir()
    guess = y[:40].copy()
    guess[y[:40] == 2] = 7  # the human misses every 2 of rows 0-39
    write_quiz(tmp_path / "q" / "q1.pkl", d["x_test"][:40], guess, y[:40])
    pred_a, pred_b = y.copy(), y.copy()
    pred_a[y == 7] = 1  # run a misses every 7 of the test set
    pred_b[:40][y[:40] == 7] = 1  # run b only the 7s among the quiz rows
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    table = pd.DataFrame({"record_dir": [fake_record(tmp_path / "a", data_cfg, pred_a, y),
                                         fake_record(tmp_path / "b", data_cfg, pred_b, y, keep_true=False)],
                          "human.quiz_dir": str(tmp_path / "q"), "seed": [0, 1]})
    out = classwise.summarize(table, tmp_path / "sweep")
    assert {p.name for p in out} == {"classwise.csv", "classwise.md", "figure8.png", "figure8.pdf"}
    t = pd.read_csv(tmp_path / "sweep" / "classwise.csv")
    human = t[t["who"] == "human"].set_index("class")
    assert human.loc[2, "error_rate"] == 1.0 and human.loc[2, "error_share"] == 1.0 and human["errors"].sum() == (
        y[:40] == 2).sum()
    quiz = t[t["who"] == "cnn_quiz"].set_index("class")  # both runs miss the quiz rows' 7s
    assert quiz.loc[7, "errors"] == (y[:40] == 7).sum() and quiz.loc[7, "errors_std"] == 0
    assert quiz.loc[7, "error_share"] == 1.0 and (quiz["runs"] == 2).all()
    whole = t[t["who"] == "cnn_test"].set_index("class")  # run a: all 7s, run b (confusion only): the quiz's
    assert whole.loc[7, "errors"] == pytest.approx(((y == 7).sum() + (y[:40] == 7).sum()) / 2)
    assert whole.loc[7, "error_rate"] == pytest.approx((1 + (y[:40] == 7).sum() / (y == 7).sum()) / 2)
    assert whole.loc[0, "errors"] == 0
    md = (tmp_path / "sweep" / "classwise.md").read_text()
    assert "human (quiz rows)" in md and "92.2" in md
    # without quizzes: the CNN's part only
    t2, acc = classwise.classwise(table.drop(columns="human.quiz_dir"))
    assert set(t2["who"]) == {"cnn_test"} and set(acc) == {"cnn_test"}


def test_classwise_skips_quiz_rows_of_another_test_set(tmp_path, caplog):
    from omegaconf import OmegaConf

    from mnist1d_lab.experiments import classwise

    cfg = compose_cfg(*SMALL, f"data.cache_dir={tmp_path / 'cache'}")
    d = small_test_set(tmp_path)
    y = d["y_test"].astype(np.int64)
    (tmp_path / "q").mkdir()
    write_quiz(tmp_path / "q" / "q1.pkl", d["x_test"][:20], y[:20], y[:20])
    other = (y + 1) % 10  # a run whose test labels are not the quiz's
    table = pd.DataFrame({"record_dir": [fake_record(tmp_path / "a", OmegaConf.to_container(cfg.data), other, other)],
                          "human.quiz_dir": str(tmp_path / "q")})
    t, acc = classwise.classwise(table)
    assert set(t["who"]) == {"human", "cnn_test"} and "not the quiz's" in caplog.text
    (tmp_path / "a" / "artifacts" / "test_pred.npy").unlink()  # a record without predictions is left out
    t, acc = classwise.classwise(table)
    assert set(t["who"]) == {"human"} and "left out" in caplog.text
    with pytest.raises(FileNotFoundError, match="nothing to compare"):
        classwise.classwise(table.drop(columns="human.quiz_dir"))


def test_classwise_config_is_the_early_stopped_cnn_over_three_seeds():
    from mnist1d_lab import experiments

    cfg = compose_cfg("experiment=classwise", hydra_config=True)
    assert (cfg.model.name, cfg.train.steps, cfg.experiment_name) == ("cnn", 3000, "classwise")
    assert str(cfg.hydra.sweeper.params.seed) == "0,1,2" and experiments.batchable("classwise")


def test_classwise_sweep_through_the_entry_point(tmp_path):
    """scale=smoke: 3 tiny CNN runs, then summarize reads their test_pred.npy and the quizzes written here."""
    from mnist1d_lab.data import dataset

    cfg = compose_cfg("scale=smoke", f"data.cache_dir={tmp_path / 'cache'}")
    d = dataset(cfg.data)
    (tmp_path / "q").mkdir()
    write_quiz(tmp_path / "q" / "q1.pkl", d["x_test"][:30], d["y_test"][:30], d["y_test"][:30])
    run_lab(tmp_path, "experiment=classwise", "scale=smoke", f"human.quiz_dir={tmp_path / 'q'}")
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    t = pd.read_csv(sweep / "classwise.csv")
    assert set(t["who"]) == {"human", "cnn_quiz", "cnn_test"} and (t.loc[t["who"] != "human", "runs"] == 3).all()
    assert t.loc[t["who"] == "human", "errors"].sum() == 0 and t.loc[t["who"] == "cnn_quiz", "n"].sum() == 30
    assert (sweep / "figure8.png").is_file() and (sweep / "classwise.md").is_file()


def test_missing_quiz_folder_is_bad_input_through_the_entry_point(tmp_path):
    proc = run_lab(tmp_path, "experiment=human", f"human.quiz_dir={tmp_path / 'nowhere'}", check=False)
    assert proc.returncode == 2 and "human.quiz_dir" in proc.stderr
