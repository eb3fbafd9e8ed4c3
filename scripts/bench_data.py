"""Benchmark the dataset generators in one process.

1. The default dataset (5,000 examples): the original mnist1d.make_dataset vs the lab's exact generator
   (medians of --repeats runs each, interleaved), and the max abs difference between them.
2. The fast generator on --fast-n examples (default 1,000,000).

    python scripts/bench_data.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: waiting threads sleep (mnist1d_lab/cpu.py)

import argparse
import time

import numpy as np

from mnist1d_lab import cpu


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="runs per generator (median reported)")
    p.add_argument("--fast-n", type=int, default=1_000_000, help="examples for the fast generator")
    args = p.parse_args()

    import mnist1d.data as reference

    from mnist1d_lab import data as lab

    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
    ours, theirs = lab.make_dataset(lab.get_dataset_args()), reference.make_dataset(reference.get_dataset_args())
    diff = max(float(np.abs(ours[k] - theirs[k]).max()) for k in ("x", "x_test"))
    same = all(np.array_equal(ours[k], theirs[k]) for k in ("y", "y_test", "t"))
    print(f"exact vs reference: max |dx| = {diff:.3g}, y/y_test/t identical: {same}")

    t_ref, t_ours = [], []
    for _ in range(args.repeats):  # interleaved so that load changes hit both alike
        t_ref.append(_median_time(lambda: reference.make_dataset(reference.get_dataset_args()), 1))
        t_ours.append(_median_time(lambda: lab.make_dataset(lab.get_dataset_args()), 1))
    m_ref, m_ours = float(np.median(t_ref)), float(np.median(t_ours))
    print(f"reference make_dataset (5000 examples): median {m_ref * 1e3:.1f} ms over {args.repeats} runs")
    print(f"exact make_dataset     (5000 examples): median {m_ours * 1e3:.1f} ms over {args.repeats} runs")

    knobs = lab.knobs({"num_samples": args.fast_n, "generator": "fast"})
    lab.make_fast(lab.knobs({"num_samples": 10_000}))  # warm-up: imports, BLAS threads
    t0 = time.perf_counter()
    d = lab.make_fast(knobs)
    t_fast = time.perf_counter() - t0
    n = len(d["x"]) + len(d["x_test"])
    print(f"fast generator: {n} examples in {t_fast:.2f} s")
    print(f"exact speedup: {m_ref / m_ours:.1f}x")
    print(f"fast: {n / t_fast:,.0f} examples/s")


if __name__ == "__main__":
    cpu.configure_process()  # as the lab's processes: malloc keeps freed memory, fast exit
    main()
