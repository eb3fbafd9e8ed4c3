"""Paper Figure 4 (deep double descent) in one command: run the sweep(s), then draw the figure and tables.

    python scripts/figure4.py                      # experiment=double_descent (67 runs), then Figure 4
    python scripts/figure4.py --mse                # + experiment=double_descent_mse (CE vs MSE x n)
    python scripts/figure4.py --smoke              # the same at smoke size (seconds)
    python scripts/figure4.py seed=0,1,2           # extra overrides go to every sweep
    python scripts/figure4.py --from outputs/multirun/<sweep> [<sweep> ...]   # only draw, no training

Finished runs are skipped (the result store), so re-running after an interruption only trains what is
missing. Writes dd_results.csv, dd_thresholds.csv/.md, figure4.png/.pdf, dd_curves.csv and
figure4_epochs.png/.pdf (see mnist1d_lab/experiments/double_descent.py) and prints their paths.
"""

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from mnist1d_lab import paths, records
from mnist1d_lab.experiments import double_descent


def run_sweep(experiment: str, sweep_dir: Path, overrides: list[str], smoke: bool) -> None:
    """`python -m mnist1d_lab experiment=<experiment>` into sweep_dir (raises if it fails)."""
    cmd = [sys.executable, "-m", "mnist1d_lab", f"experiment={experiment}", f"hydra.sweep.dir={sweep_dir}",
           *(["scale=smoke"] if smoke else []), *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def draw(folders: list[Path], out: Path) -> list[Path]:
    """Collect the runs below folders (each run once) and write Figure 4 and the tables into out."""
    tables = [records.collect(f) for f in folders]
    table = pd.concat([t for t in tables if not t.empty], ignore_index=True)
    table = table.drop_duplicates("run_key")
    table = table[table["status"].isin(records.DONE_STATUSES)]
    if table.empty:
        raise SystemExit(f"figure4: no finished runs below {', '.join(map(str, folders))}")
    return double_descent.summarize(table, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides passed to every sweep (e.g. seed=0,1)")
    ap.add_argument("--mse", action="store_true", help="also run experiment=double_descent_mse")
    ap.add_argument("--smoke", action="store_true", help="scale=smoke: tiny data, 3 sizes per grid, 3 epochs")
    ap.add_argument("--from", dest="folders", nargs="+", type=Path, default=None,
                    help="draw from these sweep folders (or any folder of run records); no training")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the (first) sweep folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    folders = args.folders
    if folders is None:
        root = Path(os.environ.get(paths.OUTPUTS_ENV) or "outputs")
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        folders = []
        for exp in ["double_descent"] + (["double_descent_mse"] if args.mse else []):
            folders.append(root / "multirun" / f"figure4_{stamp}_{exp}")
            run_sweep(exp, folders[-1], args.overrides, args.smoke)
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        print(f"figure4: error: not a folder: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    out = args.out or (folders[0] if len(folders) == 1 else folders[0] / "figure4_all")
    for p in draw(folders, out):
        print(p)
    print((out / "dd_thresholds.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
