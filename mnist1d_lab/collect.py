"""Collect every run record below a folder into one tidy table, and run the experiment's summary.

    python -m mnist1d_lab.collect outputs/multirun/2026-11-26_12-00-00-123456
    python -m mnist1d_lab.collect outputs/store --no-summary

Writes results.csv and results.parquet into the folder (or --out), and stages.csv (every run's several
result rows, with its key columns) when runs have stages; reports failed runs, and, when the
runs belong to one experiment with a `summarize` step (benchmark, double_descent), writes its tables
and figures too. Works on a sweep where some runs failed (Hydra's own end-of-sweep callback does not).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from . import experiments, paths, records

log = logging.getLogger("mnist1d_lab.collect")


def collect_sweep(folder: Path, experiment_name: str | None = None, out: Path | None = None,
                  summarize: bool = True) -> pd.DataFrame:
    """Collect folder's records into a table saved under out (default: folder); summarise; return it."""
    folder, out = Path(folder), Path(out or folder)
    table = records.collect(folder)
    if table.empty:
        log.warning("no run records below %s", folder)
        return table
    saved = records.save_table(table, out)
    stages = records.collect_stages(table)
    if not stages.empty:
        records.write_atomic(out / paths.STAGES_TABLE, stages.to_csv(index=False))
        saved.append(out / paths.STAGES_TABLE)
    counts = table["status"].value_counts().to_dict()
    log.info("collected %d runs (%s) -> %s", len(table), ", ".join(f"{v} {k}" for k, v in counts.items()),
             ", ".join(map(str, saved)))
    for _, row in table[table["status"] == "failed"].iterrows():
        log.warning("failed run %s: %s", row["record_dir"], row.get("error"))
    names = set(table.get("experiment_name", pd.Series(dtype=str)).dropna())
    name = experiment_name or (names.pop() if len(names) == 1 else None)
    module = experiments.get(name) if name in experiments.EXPERIMENTS else None
    if summarize and module is not None and hasattr(module, "summarize"):
        done = table[table["status"].isin(records.DONE_STATUSES)]
        for path in module.summarize(done, out):
            log.info("wrote %s", path)
    return table


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m mnist1d_lab.collect", description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="a sweep folder, a run folder, the store, or any parent")
    ap.add_argument("--out", type=Path, default=None, help="where to write the table (default: the folder)")
    ap.add_argument("--experiment", default=None, help="summarise as this experiment (default: from records)")
    ap.add_argument("--no-summary", action="store_true", help="only the table, no experiment figures")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.folder.is_dir():
        print(f"mnist1d_lab.collect: error: folder={str(args.folder)!r}: an existing folder", file=sys.stderr)
        return 2
    table = collect_sweep(args.folder, args.experiment, args.out, summarize=not args.no_summary)
    if table.empty:
        return 1
    print(table.drop(columns=["record_dir"]).head(50).to_string(max_cols=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
