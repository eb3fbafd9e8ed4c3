"""Figure 1: the ten MNIST-1D templates and their step-by-step transformation (PNG + PDF).

    python scripts/figure1_dataset.py --out outputs/figures
"""

from __future__ import annotations

import argparse

from mnist1d_lab.figure1 import plot_dataset_construction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/figures", help="output folder (default: outputs/figures)")
    p.add_argument("--seed", type=int, default=0, help="seed of the example draws (default: 0)")
    args = p.parse_args()
    for path in plot_dataset_construction(args.out, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
