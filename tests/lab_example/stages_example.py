"""A minimal multi-stage experiment: n stages of seeded random numbers, an artifact, a stages table.

Question: does the lab's experiment contract hold (artifacts, stages, resume, skips) under every launcher?
Command:  python -m mnist1d_lab experiment=example 'hydra.searchpath=[file://tests/lab_example/conf]'
          (with tests/ on PYTHONPATH)
CPU time: milliseconds per stage (`example.stage_seconds` adds a pause).
Expected: one stages.csv row per stage; artifacts/values.npz with every stage's numbers.
Set LAB_EXAMPLE_KILL_AFTER=k to SIGKILL the process after stage k (the resume test);
`example.fail_seed=s` makes the run of seed s raise (the fault-injection tests).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from mnist1d_lab.protocol import TrainResult

CONFIG_NODE = "example"  # its own knobs: the keys of `example` in its YAML file are the only ones allowed
CONFIG_FILE = Path(__file__).parent / "conf" / "experiment" / "example.yaml"


def run(cfg, ctx) -> TrainResult:
    """Stage i draws `rows_per_stage` numbers from a generator seeded by (seed, i)."""
    n, rows = int(cfg.example.stages), int(cfg.example.rows_per_stage)
    kill_after = int(os.environ.get("LAB_EXAMPLE_KILL_AFTER", "0"))
    if cfg.example.fail_seed is not None and int(cfg.seed) == int(cfg.example.fail_seed):
        raise RuntimeError(f"example.fail_seed={cfg.example.fail_seed}: this run fails on purpose")
    values = []
    for i in range(1, n + 1):
        def stage(i: int = i) -> np.ndarray:
            time.sleep(float(cfg.example.stage_seconds))
            return np.random.default_rng([int(cfg.seed), i]).standard_normal(rows)
        values.append(ctx.stage(f"stage_{i:02d}", stage))
        ctx.report("example", i, n)
        if i == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    ctx.save_artifact("values.npz", {f"stage_{i:02d}": v for i, v in enumerate(values, 1)})
    stages = [{"stage": i, "mean": float(v.mean()), "max": float(v.max())} for i, v in enumerate(values, 1)]
    return TrainResult(summary={"final_mean": stages[-1]["mean"], "stages_done": n}, stages=stages)
