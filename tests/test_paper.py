"""The paper command: claims' verdicts computed from tables, entries skipped when the lab lacks them, the
progress line, one smoke-scale paper run (resumed from its state file), and its report in a real browser."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import lab_env

from mnist1d_lab import paper
from mnist1d_lab.report import claims as C


def _benchmark(accs: dict[tuple[str, bool], list[float]]) -> C.Results:
    """A fake benchmark results.csv: final test accuracies (fractions) per (model, shuffled), one per seed."""
    rows = [{"model.name": m, "data.shuffle_seq": s, "seed": i, "final_test_acc": a, "status": "complete"}
            for (m, s), values in accs.items() for i, a in enumerate(values)]
    return C.Results(frames={"benchmark": {"results.csv": pd.DataFrame(rows)}})


def _claim(claim_id: str) -> C.Claim:
    return next(c for c in C.CLAIMS if c.id == claim_id)


def _verdict(results: C.Results, claim_id: str) -> C.Verdict:
    return C.evaluate(results, [_claim(claim_id)])[0]


MLP = {("logistic", False): [0.31, 0.32, 0.32], ("mlp", False): [0.64, 0.66, 0.65]}


def test_cnn_claim_met_missed_and_direction_only():
    met = _verdict(_benchmark({**MLP, ("cnn", False): [0.93, 0.94, 0.95]}), "table1_cnn")
    assert met.verdict == "reproduced"
    assert math.isclose(met.measurement.ours, 94.0) and met.measurement.n == 3
    assert math.isclose(met.measurement.error, 1.0 / math.sqrt(3))  # std 1 point over 3 seeds

    size_off = _verdict(_benchmark({**MLP, ("cnn", False): [0.84, 0.85, 0.86]}), "table1_cnn")
    assert size_off.verdict == "differs"  # CNN > MLP holds, 85 is 9 points from 94 (> 2, > 2 SE)

    missed = _verdict(_benchmark({**MLP, ("cnn", False): [0.60, 0.61, 0.62]}), "table1_cnn")
    assert missed.verdict == "not reproduced" and not missed.measurement.direction_ok


def test_wide_error_bars_count_as_reproduced():
    # 3 points off, beyond the paper's +-2, but within 2 standard errors of our noisy seeds
    v = _verdict(_benchmark({**MLP, ("cnn", False): [0.80, 0.91, 1.0]}), "table1_cnn")
    assert 2 < abs(v.measurement.ours - 94) <= 2 * v.measurement.error
    assert v.verdict == "reproduced"


def test_shuffle_drop_and_missing_tables():
    r = _benchmark({("cnn", False): [0.94, 0.94], ("cnn", True): [0.56, 0.57]})
    assert _verdict(r, "figure2_cnn_shuffle_drop").verdict == "reproduced"
    r = _benchmark({("cnn", False): [0.60, 0.60], ("cnn", True): [0.70, 0.70]})
    assert _verdict(r, "figure2_cnn_shuffle_drop").verdict == "not reproduced"
    gone = _verdict(_benchmark({("cnn", False): [0.94]}), "table1_cnn_shuffled")
    assert gone.verdict == "not available" and "shuffled" in gone.reason
    nothing = C.evaluate(C.Results(), [_claim("table1_cnn")], available=set())[0]
    assert nothing.verdict == "not available" and "did not run" in nothing.reason


def test_pooling_and_threshold_claims():
    rows = [{"n_train": n, "model.pool": pool, "model.stride": 1, "seed": s, "status": "complete",
             "final_test_acc": acc + 0.002 * s}
            for n, accs in ((1000, {"none": 0.59, "max": 0.78, "avg": 0.78, "l2": 0.77}),
                            (50000, {"none": 0.96, "max": 0.98, "avg": 0.97, "l2": 0.97}))
            for pool, acc in accs.items() for s in range(3)]
    r = C.Results(frames={"pooling": {"results.csv": pd.DataFrame(rows)}})
    small, large = C.evaluate(r, [_claim("figure7_pooling_1k"), _claim("figure7_pooling_50k")])
    assert small.verdict == "reproduced" and math.isclose(small.measurement.ours, 18.67, abs_tol=0.01)
    assert large.verdict == "reproduced" and large.measurement.direction_ok

    def thresholds(ce: float, mse: float) -> C.Results:
        rows = [{"model.name": "mlp", "train.loss": loss, "train.label_noise": 0.15, "n": 4000, "seeds": 1,
                 "threshold_params": p} for loss, p in (("cross_entropy", ce), ("mse", mse))]
        return C.Results(frames={"double_descent_mse": {"dd_thresholds.csv": pd.DataFrame(rows)}})

    assert _verdict(thresholds(6000, 38000), "mse_threshold_nK").verdict == "reproduced"
    assert _verdict(thresholds(6000, 12000), "mse_threshold_nK").verdict == "differs"  # beyond CE, far from nK
    assert _verdict(thresholds(6000, 5000), "mse_threshold_nK").verdict == "not reproduced"


def test_learned_lr_from_both_sides():
    def lr(summary: dict) -> C.Verdict:
        return _verdict(C.Results(frames={"metalearn_lr": {"results.csv": pd.DataFrame([summary])}}),
                        "figure5_learned_lr")

    v = lr({"initial_lr_0": 0.15, "final_lr_0": 0.6203, "initial_lr_1": 1.5, "final_lr_1": 0.6243})
    assert v.verdict == "reproduced" and v.measurement.n == 2
    assert lr({"final_lr_from_0.15": 0.50, "final_lr_from_1.5": 0.52}).verdict == "differs"
    assert lr({"initial_lr_0": 0.15, "final_lr_0": 0.10, "initial_lr_1": 1.5, "final_lr_1": 1.6}).verdict \
        == "not reproduced"  # both moved away from each other
    assert lr({"status": "complete"}).verdict == "not available"


def test_unavailable_entry_is_skipped_with_a_note(monkeypatch):
    monkeypatch.delitem(paper.experiments.EXPERIMENTS, "tsne")  # a conf file whose module is not registered
    assert "not in mnist1d_lab.experiments.EXPERIMENTS" in paper.availability(
        paper.Entry("tsne", overrides=["experiment=tsne"]))
    assert paper.availability(paper.Entry("x", overrides=["experiment=no_such_experiment"])).startswith(
        "not available")
    assert paper.availability(paper.Entry("benchmark", overrides=["experiment=benchmark"])) is None


def test_experiment_knobs_go_only_to_experiments_that_have_them():
    passed = ["scale=smoke", "human.quiz_dir=/quizzes", "hydra/launcher=joblib", "data.seed=1"]
    human = paper.command(paper.Entry("human", overrides=["experiment=human"]), passed)
    bench = paper.command(paper.Entry("benchmark", overrides=["experiment=benchmark"]), passed)
    assert human[3:] == ["experiment=human", *passed]
    assert bench[3:] == ["experiment=benchmark", "scale=smoke", "hydra/launcher=joblib", "data.seed=1"]


def test_progress_line_has_count_elapsed_and_eta():
    a, b = paper.Entry("a"), paper.Entry("b")
    progress = paper.Progress([(a, 10.0), (b, 30.0)])
    progress.finish("a", 20.0)  # twice as slow as expected: the 30 s left become about 60 s
    assert re.fullmatch(r"paper: 1/2 experiments, 0:\d\d elapsed, ETA 1:00", progress.line())


def test_bad_paper_key_fails_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mnist1d_lab.paper", "paper.only=[no_such_entry]"],
                          cwd=tmp_path, env=lab_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "paper.only='no_such_entry'" in proc.stderr


@pytest.fixture(scope="module")
def smoke_paper(tmp_path_factory) -> tuple[Path, list[str]]:
    """One smoke-scale paper of two experiments, then the same command again (resumed)."""
    tmp = tmp_path_factory.mktemp("paper")
    args = [sys.executable, "-m", "mnist1d_lab.paper", "scale=smoke", "paper.only=[benchmark,double_descent]"]
    logs = []
    for _ in range(2):
        proc = subprocess.run(args, cwd=tmp, env=lab_env(tmp), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs.append(proc.stderr)
    return tmp / "outputs" / "paper", logs


def test_smoke_paper_writes_figures_tables_claims_and_resumes(smoke_paper):
    out, (first, second) = smoke_paper
    for rel in ("index.html", "claims.csv", "claims.md", "provenance.csv", "provenance_runs.csv",
                "figures/benchmark/figure2.png", "figures/benchmark/figure2.pdf", "figures/double_descent/figure4.png",
                "tables/benchmark/table1.csv", "tables/benchmark/table1.md", "tables/table1_paper.csv",
                "tables/double_descent/dd_thresholds.md", "state.json"):
        assert (out / rel).is_file(), rel
    assert "paper: 2/2 experiments" in first and "ETA" in first
    assert second.count("finished before with the same command") == 2  # state.json: nothing launched again
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["verdict"]) <= set(C.VERDICTS)
    ran = claims[claims["entry"] == "benchmark"]
    assert (ran["verdict"] != "not available").all() and (ran["n"] == 3).all()  # computed from 3 smoke seeds
    assert (claims.loc[claims["entry"] == "lottery", "verdict"] == "not available").all()
    prov = pd.read_csv(out / "provenance_runs.csv")
    assert len(prov[prov["entry"] == "benchmark"]) == 24 and prov["run_key"].notna().all()


def test_report_in_a_real_browser(smoke_paper):
    from mnist1d_lab.report import browser

    if browser.chromium() is None:
        pytest.skip("no chromium on PATH (CI installs it: apt-get install chromium)")
    pytest.importorskip("playwright", reason="playwright for Python is a test dependency")
    out, _ = smoke_paper
    result = browser.check(out / "index.html", out / "screenshot.png")
    assert result["console_errors"] == [] and result["page_errors"] == [] and result["failed_requests"] == []
    srcs = [src for src, _ in result["images"]]
    assert {"figures/benchmark/figure2.png", "figures/double_descent/figure4.png"} <= set(srcs)
    assert all(width > 0 for _, width in result["images"]), result["images"]
    assert {"claims", "table1", "provenance", "benchmark-table1", "double_descent-dd_thresholds"} <= set(
        result["table_ids"])
    assert (out / "screenshot.png").stat().st_size > 10_000


def test_docs_list_every_claim_and_entry():
    text = (Path(__file__).resolve().parents[1] / "docs" / "paper.md").read_text()
    cfg, _ = paper.load_config([])
    missing = [c.id for c in C.CLAIMS if f"`{c.id}`" not in text]
    missing += [e.name for e in paper.entries(cfg) if f"`{e.name}`" not in text]
    assert not missing, f"docs/paper.md lacks {missing}"
    assert "## Where we differ" in text and "## Table 1" in text  # the claims' `doc` anchors


def test_killed_paper_resumes_from_state_and_store(smoke_paper):
    out, _ = smoke_paper
    state = json.loads((out / "state.json").read_text())
    del state["finished"]["double_descent"]  # as if killed during double_descent
    (out / "state.json").write_text(json.dumps(state))
    shutil.rmtree(out / "runs" / "double_descent" / "0")  # and half its folder gone
    tmp = out.parent.parent
    proc = subprocess.run([sys.executable, "-m", "mnist1d_lab.paper", "scale=smoke",
                           "paper.only=[benchmark,double_descent]"], cwd=tmp, env=lab_env(tmp),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "benchmark: finished before with the same command" in proc.stderr
    assert "double_descent: python -m mnist1d_lab experiment=double_descent scale=smoke" in proc.stderr
    log = (out / "runs" / "double_descent.log").read_text()
    assert re.search(r"sweep: 9/9 runs done \(9 skipped", log), log[-2000:]  # every run from the store
    assert (out / "figures" / "double_descent" / "figure4.png").is_file()
    assert "double_descent" in json.loads((out / "state.json").read_text())["finished"]


def test_noise_shear_sweep_gets_its_table_and_figure(tmp_path):
    """Accuracy by model, shear and correlated noise: the table (mean, std, seeds) and one panel per model."""
    from mnist1d_lab.report.outputs import noise_shear_table

    rows = [{"model.name": m, "data.shear_scale": sh, "data.corr_noise_scale": nz, "seed": k, "status": "complete",
             "final_test_acc": 0.9 - 0.1 * sh - 0.2 * nz - (0.3 if m == "mlp" else 0) + 0.01 * k}
            for m in ("mlp", "cnn") for sh in (0, 0.75, 1.5) for nz in (0, 0.25) for k in (0, 1)]
    rows.append({**rows[0], "status": "failed", "final_test_acc": 0.0})  # failed runs are left out
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    noise_shear_table(tmp_path)
    table = pd.read_csv(tmp_path / "noise_shear.csv")
    assert len(table) == 12 and set(table["seeds"]) == {2}
    cnn = table[(table["model.name"] == "cnn") & (table["data.shear_scale"] == 0) & (table["data.corr_noise_scale"] == 0)]
    assert cnn["final_test_acc_mean"].item() == pytest.approx(90.5)
    assert (tmp_path / "noise_shear.png").stat().st_size > 0 and (tmp_path / "noise_shear.pdf").stat().st_size > 0


def test_table1_has_the_human_rows_labelled_by_source():
    """The quizzes' accuracy where quiz files were given, else the paper's number, said so in the note."""
    from mnist1d_lab.report.html import paper_table1

    bench = pd.DataFrame([{"model.name": m, "data.shuffle_seq": sh, "final_test_acc": 0.9, "best_test_acc": 0.91,
                           "status": "complete", "seed": k} for m in ("cnn", "mlp") for sh in (False, True) for k in (0, 1)])
    human = pd.DataFrame([{"status": "complete", "human_source": "quizzes", "human_acc": 0.9575, "human_n": 400,
                           "human_correct": 383, "human_acc_ci_low": 0.933, "human_acc_ci_high": 0.9733,
                           "human_shuffled_source": "paper", "human_shuffled_acc": 0.3}])
    t1 = paper_table1(C.Results(frames={"benchmark": {"results.csv": bench}, "human": {"results.csv": human}}))
    rows = t1[t1["model"] == "human"].set_index("data")
    assert rows.loc["normal", "final_test_acc"] == 95.75 and "383 of 400" in rows.loc["normal", "note"]
    assert rows.loc["shuffled", "final_test_acc"] == 30 and "paper's number" in rows.loc["shuffled", "note"]
    assert list(rows["paper"]) == [96, 30] and t1["seeds"].dtype == "Int64"
    assert "human" not in set(paper_table1(C.Results(frames={"benchmark": {"results.csv": bench}}))["model"])
