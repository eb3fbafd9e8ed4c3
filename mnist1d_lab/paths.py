"""Every folder and file name the lab writes, defined in one place."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MNIST1D_LAB_CACHE"      # overrides the dataset cache folder
OUTPUTS_ENV = "MNIST1D_LAB_OUTPUTS"  # overrides the outputs folder (Hydra's `paths.output_dir`)

# Files of one run record (in the run folder and in the result store).
CONFIG_FILE = "config.yaml"    # resolved config
SUMMARY_FILE = "summary.json"  # final/best metrics, status, wall time; written last: its presence = complete
CURVES_FILE = "curves.csv"     # one row per evaluation
ENV_FILE = "env.json"          # package versions, git revision, device, seeds
STAGES_FILE = "stages.csv"     # several result rows of one run (one per round / outer step / size), optional
CONFUSION_FILE = "test_confusion.csv"  # final test confusion matrix: rows = true class, columns = predicted
ARTIFACTS_DIR = "artifacts"    # masks, weights, learned functions... (context.RunContext.save_artifact)
TEST_PRED_ARTIFACT = "test_pred.npy"  # final predicted class of every test row, in test-set order
TEST_TRUE_ARTIFACT = "test_true.npy"  # the test rows' true classes, in the same order
MODEL_ARTIFACT = "model.pt"    # final weights (state dict), written with save_model=true

# Files of a collected sweep.
TABLE_FILE = "results.csv"
TABLE_PARQUET = "results.parquet"
STAGES_TABLE = "stages.csv"    # every run's stages.csv, with the run's key columns


def partial_dir(output_dir: str | os.PathLike, key: str) -> Path:
    """Finished stages of a run not yet filed into the store (removed once it is)."""
    return Path(output_dir) / "partial" / key


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Dataset cache folder: explicit override > $MNIST1D_LAB_CACHE > ~/.cache/mnist1d_lab."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist1d_lab"


def store_dir(output_dir: str | os.PathLike) -> Path:
    """The result store: one folder per run key, below the outputs folder."""
    return Path(output_dir) / "store"
