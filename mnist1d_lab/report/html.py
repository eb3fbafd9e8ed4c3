"""The paper report: index.html (static: opens from file://, no script, no server, no network), the
claims table (claims.csv/.md), Table 1 with its three model-selection columns and the human rows, and provenance.

Figures are linked by relative paths (figures/<entry>/<name>.png, the PDF beside it), so the folder can
be copied or zipped as a whole; tables are inlined as HTML and linked as CSV and Markdown.
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import time
from pathlib import Path

import pandas as pd

from .. import paths, records
from ..experiments.benchmark import MODEL_ORDER, PAPER, to_markdown
from ..human import PAPER as HUMAN_PAPER
from .claims import CLAIMS, Missing, Results, Verdict, evaluate, verdict_table

HTML_MAX_ROWS = 60  # a table with more rows is linked, not inlined
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-bottom:.3em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1em}th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#444}
code,pre{background:#f6f6f6;font-size:.85em}pre{padding:.5em;overflow-x:auto;white-space:pre-wrap}
.reproduced{background:#dff3e0}.differs{background:#fff4d6}.not-reproduced{background:#fadddd}
.not-available{background:#eee;color:#666}.banner{background:#fff4d6;border:1px solid #e6c66a;padding:.6em 1em}
.note{color:#555;font-size:.9em}.wide{overflow-x:auto;max-width:100%}
"""


def _e(x) -> str:
    return html.escape("" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x))


def _num(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{digits}f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def table_html(table: pd.DataFrame, table_id: str | None = None) -> str:
    """A DataFrame as an HTML table (escaped), at most HTML_MAX_ROWS rows."""
    body = table.head(HTML_MAX_ROWS).to_html(index=False, na_rep="", border=0, escape=True,
                                             table_id=table_id, float_format=lambda v: f"{v:.4g}")
    body = f'<div class="wide">{body}</div>'
    more = f'<p class="note">first {HTML_MAX_ROWS} of {len(table)} rows</p>' if len(table) > HTML_MAX_ROWS else ""
    return body + more


def _acc(t: pd.DataFrame, model: str, shuffled: bool, col: str) -> pd.Series:
    """Accuracy % in `col` of every seed of one model on normal or shuffled data (empty when absent)."""
    if t.empty or col not in t:
        return pd.Series(dtype=float)
    shuf = t["data.shuffle_seq"].astype(str).str.lower() == "true"
    return 100 * t.loc[(t["model.name"] == model) & (shuf == shuffled), col].astype(float).dropna()


def paper_table1(results: Results) -> pd.DataFrame | None:
    """Table 1 as the paper prints it, with three selections: final step, best point of the test curve
    (test-selected), and the step with the best validation accuracy (runs with train.val_split=0.1)."""
    try:
        runs = results.runs("benchmark")
    except Exception:
        return None
    try:
        val = results.runs("benchmark_val")
    except Exception:
        val = pd.DataFrame()
    rows = []
    for shuffled in (False, True):
        for model in MODEL_ORDER:
            final, best, sel = (_acc(runs, model, shuffled, "final_test_acc"), _acc(runs, model, shuffled, "best_test_acc"),
                                _acc(val, model, shuffled, "val_selected_test_acc"))
            if final.empty:
                continue
            se = final.std(ddof=1) / math.sqrt(len(final)) if len(final) > 1 else float("nan")
            rows.append({"model": model, "data": "shuffled" if shuffled else "normal",
                         "final_test_acc": round(final.mean(), 2), "final_se": round(se, 2), "seeds": len(final),
                         "best_on_test_acc": round(best.mean(), 2) if len(best) else None,
                         "val_selected_test_acc": round(sel.mean(), 2) if len(sel) else None,
                         "val_seeds": len(sel), "paper": PAPER.get(model, (None, None))[int(shuffled)]})
        rows += _human_row(results, shuffled) if rows else []
    return pd.DataFrame(rows).astype({"seeds": "Int64", "val_seeds": "Int64"}) if rows else None


def _human_row(results: Results, shuffled: bool) -> list[dict]:
    """Table 1's human row from the human experiment's run: the quizzes' accuracy (unique answers, with
    its 95 % interval) where quiz files were given, else the paper's own number, labelled as such."""
    try:
        run = results.runs("human").iloc[0]
    except Missing:  # the human entry did not run
        return []
    prefix = "human_shuffled" if shuffled else "human"
    acc = run.get(f"{prefix}_acc")
    if acc is None or pd.isna(acc):
        return []
    if str(run.get(f"{prefix}_source")) == "quizzes":
        note = (f"{int(run[f'{prefix}_correct'])} of {int(run[f'{prefix}_n'])} quiz answers, 95 % interval "
                f"{100 * run[f'{prefix}_acc_ci_low']:.1f}-{100 * run[f'{prefix}_acc_ci_high']:.1f}")
    else:
        note = "the paper's number (no quiz files for this variant)"
    return [{"model": "human", "data": "shuffled" if shuffled else "normal", "final_test_acc": round(100 * float(acc), 2),
             "paper": HUMAN_PAPER["shuffled" if shuffled else "normal"][0], "note": note}]


def _first_env(folder: Path) -> dict:
    for summary in sorted(folder.rglob(paths.ENV_FILE)):
        try:
            return json.loads(summary.read_text())
        except (OSError, ValueError):
            continue
    return {}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.partition(':')[2].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def provenance(out: Path, results: Results, status: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per entry: runs, seeds, devices, git revisions, wall time; per run: entry, run key, seed, status)."""
    per_entry, per_run = [], []
    for name, st in status.items():
        row = {"entry": name, "status": st.get("status"), "wall_time_s": st.get("seconds"),
               "resumed_from_state": bool(st.get("resumed"))}
        try:
            t = results.csv(name, paths.TABLE_FILE)
        except Exception:
            t = pd.DataFrame()
        if not t.empty:
            env = _first_env(out / "runs" / name)
            row.update({"runs": len(t), "seeds": ",".join(str(s) for s in sorted(t["seed"].dropna().unique()))
                        if "seed" in t else "", "run_time_s": round(float(t.get("wall_time_s", pd.Series(
                            dtype=float)).fillna(0).sum()), 1), "device": env.get("device"),
                        "git_revision": env.get("git_revision"), "git_dirty": env.get("git_dirty")})
            for _, r in t.iterrows():
                per_run.append({"entry": name, "run_key": r.get("run_key"), "seed": r.get("seed"),
                                "status": r.get("status"), "wall_time_s": r.get("wall_time_s")})
        per_entry.append(row)
    return pd.DataFrame(per_entry), pd.DataFrame(per_run)


def _doc_link(doc: str) -> str:
    """A docs link that works from file://: the checkout's file when it exists, else the path as written."""
    path, _, anchor = doc.partition("#")
    local = Path(__file__).resolve().parents[2] / path
    return f"{local.as_uri()}#{anchor}" if local.is_file() else doc


def _verdict_rows(verdicts: list[Verdict]) -> str:
    rows = []
    for v in verdicts:
        m, c = v.measurement, v.claim
        paper = f"{_num(c.paper)} ± {_num(c.tolerance)} {c.unit}".strip()
        if m is None:
            ours = f'<span class="note">{_e(v.reason)}</span>'
        else:
            err = f" ± {_num(m.error)}" if math.isfinite(m.error) else ""
            ours = f"{_num(m.ours)}{err} {_e(c.unit)} <span class='note'>(n = {m.n}{'; ' + _e(m.note) if m.note else ''})</span>"
        link = f' <a href="{_e(_doc_link(c.doc))}">why</a>' if v.verdict in ("differs", "not reproduced") else ""
        rows.append(f'<tr class="{v.verdict.replace(" ", "-")}"><td>{_e(c.text)}<br><span class="note">{_e(c.id)}; '
                    f'direction: {_e(c.direction)}</span></td><td>{_e(paper)}<br><span class="note">{_e(c.source)}</span>'
                    f'</td><td>{ours}</td><td><b>{_e(v.verdict)}</b>{link}</td></tr>')
    return ("<table id=\"claims\"><tr><th>claim</th><th>paper</th><th>ours (mean ± standard error)</th>"
            "<th>verdict</th></tr>" + "".join(rows) + "</table>")


def _links(files: list[Path], out: Path) -> str:
    return " · ".join(f'<a href="{_e(f.relative_to(out).as_posix())}">{_e(f.name)}</a>' for f in files)


def _entry_section(entry, st: dict, out: Path, overrides: list[str]) -> str:
    from ..paper import command, shell_line

    cmd = shell_line(command(entry, overrides))
    parts = [f'<section id="{_e(entry.name)}"><h3>{_e(entry.name)}</h3>',
             f"<p>Regenerate alone: <code>{_e(cmd)}</code></p>"]
    if st.get("status") != "done":
        parts.append(f'<p class="note">{_e(st.get("status"))}: {_e(st.get("reason", ""))}</p></section>')
        return "".join(parts)
    outputs = st.get("outputs", {"figures": [], "tables": []})
    pngs = [f for f in outputs["figures"] if f.suffix == ".png"]
    for png in pngs:
        caption = entry.figures.get(png.stem, f"{entry.name}: {png.stem}")
        pdf = png.with_suffix(".pdf")
        rel = png.relative_to(out).as_posix()
        pdf_link = f' (<a href="{_e(pdf.relative_to(out).as_posix())}">PDF</a>)' if pdf.exists() else ""
        parts.append(f'<figure><img src="{_e(rel)}" alt="{_e(caption)}"><figcaption>{_e(caption)}{pdf_link}'
                     f"<br><code>{_e(cmd)}</code></figcaption></figure>")
    for name in entry.tables:
        csv = next((f for f in outputs["tables"] if f.name == name), None)
        if csv is None:
            parts.append(f'<p class="note">table {_e(name)}: not written by this run</p>')
            continue
        parts.append(f"<h4>{_e(name)}</h4>" + table_html(pd.read_csv(csv), f"{entry.name}-{csv.stem}"))
    if outputs["tables"]:
        parts.append(f'<p class="note">tables: {_links(outputs["tables"], out)}</p>')
    parts.append(f'<p class="note">runs and log: <a href="runs/{_e(entry.name)}.log">{_e(entry.name)}.log</a>; '
                 f'wall time {_e(st.get("seconds", ""))} s</p></section>')
    return "".join(parts)


def write_report(out: Path, entries: list, status: dict, overrides: list[str], scale: str) -> Path:
    """Write claims.csv/.md, tables/table1_paper.csv/.md, provenance*.csv and index.html into out."""
    from ..paper import shell_line

    out = Path(out)
    done = {n for n, st in status.items() if st.get("status") == "done"}
    results = Results({n: out / "runs" / n for n in done})
    why_not = {n: f"{st.get('status')}: {st.get('reason', '')}".rstrip(": ") for n, st in status.items()
               if n not in done}
    verdicts = evaluate(results, CLAIMS, available=done, why_not=why_not)
    claims = verdict_table(verdicts)
    records.write_atomic(out / "claims.csv", claims.to_csv(index=False))
    records.write_atomic(out / "claims.md", to_markdown(claims.drop(columns=["doc"])))
    t1 = paper_table1(results)
    if t1 is not None:
        records.write_atomic(out / "tables" / "table1_paper.csv", t1.to_csv(index=False))
        records.write_atomic(out / "tables" / "table1_paper.md", to_markdown(t1))
    prov_entries, prov_runs = provenance(out, results, status)
    records.write_atomic(out / "provenance.csv", prov_entries.to_csv(index=False))
    records.write_atomic(out / "provenance_runs.csv", prov_runs.to_csv(index=False))
    env = records.environment("-", {}, 0)
    counts = claims["verdict"].value_counts().to_dict()
    summary = ", ".join(f"{counts[k]} {k}" for k in ("reproduced", "differs", "not reproduced", "not available")
                        if k in counts)
    banner = ('<p class="banner">scale=smoke: tiny data, a few updates per run. The numbers check the '
              "pipeline, not the paper: expect most verdicts to fail.</p>") if scale == "smoke" else ""
    command = shell_line(["python", "-m", "mnist1d_lab.paper", *overrides])
    html_parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>MNIST-1D: the paper, reproduced</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Scaling down Deep Learning: the paper, reproduced with mnist1d_lab</h1>",
        banner,
        f"<p>Command: <code>{_e(command)}</code> (scale: {_e(scale)}). Written {_e(time.strftime('%Y-%m-%d %H:%M'))}. "
        f"Claims: {_e(summary)}.</p>",
        "<h2 id=\"paper-vs-ours\">Paper vs ours</h2>",
        "<p>Each verdict is computed from the runs' tables (docs/paper.md): <b>reproduced</b> when the "
        "direction holds and |ours − paper| ≤ max(2 standard errors, the paper's ±); <b>differs</b> when "
        "only the direction holds; <b>not reproduced</b> when the direction fails. "
        "<a href=\"claims.csv\">claims.csv</a> · <a href=\"claims.md\">claims.md</a></p>",
        _verdict_rows(verdicts),
    ]
    if t1 is not None:
        html_parts += ["<h2 id=\"table1\">Table 1</h2>",
                       "<p>Test accuracy %, mean over seeds: at the last step (the honest default), at the best "
                       "point of the test curve (selected on test: optimistic), and at the step with the best "
                       "validation accuracy (10 % of the training rows held out: honest early stopping); the human "
                       "rows: the quizzes' unique answers where quiz files were given, else the paper's number. "
                       "<a href=\"tables/table1_paper.csv\">CSV</a> · <a href=\"tables/table1_paper.md\">"
                       "Markdown</a></p>", table_html(t1, "table1")]
    html_parts.append("<h2 id=\"figures\">Figures and tables, by experiment</h2>")
    html_parts += [_entry_section(e, status.get(e.name, {"status": "not run"}), out, overrides) for e in entries]
    html_parts += [
        "<h2 id=\"provenance\">Provenance</h2>",
        f"<p>Report written at git revision <code>{_e(env.get('git_revision'))}</code>"
        f"{' (uncommitted changes)' if env.get('git_dirty') else ''}, Python {_e(env.get('python'))}, "
        f"{_e(env.get('platform'))}; hardware: {_e(_cpu())}.</p>",
        "<p>Packages: " + ", ".join(f"{_e(k)} {_e(v)}" for k, v in env.get("versions", {}).items()) + "</p>",
        table_html(prov_entries, "provenance"),
        "<p class=\"note\">Every run's key (the result store folder <code>outputs/store/&lt;run key&gt;</code>): "
        "<a href=\"provenance_runs.csv\">provenance_runs.csv</a>.</p>",
        "</body></html>"]
    index = out / "index.html"
    records.write_atomic(index, "\n".join(html_parts))
    return index
