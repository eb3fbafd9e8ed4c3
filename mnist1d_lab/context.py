"""What an experiment's `run(cfg, ctx)` gets besides its config: the run folder, the device, progress,
artifacts and checkpointed stages (the contract is in `mnist1d_lab/experiments/__init__.py`).

No torch at import: a stage result or an artifact ending in `.pt` imports it when written or read.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import paths
from .records import write_bytes_atomic

log = logging.getLogger("mnist1d_lab.run")
T = TypeVar("T")


def encode(name: str, value: Any) -> bytes:
    """The bytes of an artifact, by its file suffix.

    .npy: a numpy array; .npz: a dict of arrays (compressed); .pt: anything torch.save takes (a state dict);
    .json: JSON-able data; .csv: a pandas DataFrame (no index) or CSV text; other suffixes: str or bytes.
    """
    suffix = Path(name).suffix
    buf = io.BytesIO()
    if suffix == ".npy":
        import numpy as np

        np.save(buf, np.asarray(value), allow_pickle=False)
    elif suffix == ".npz":
        import numpy as np

        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in value.items()})
    elif suffix == ".pt":
        import torch

        torch.save(value, buf)
    elif suffix == ".json":
        return json.dumps(value, indent=2, default=str).encode()
    elif suffix == ".csv" and hasattr(value, "to_csv"):
        return value.to_csv(index=False).encode()
    else:
        return value if isinstance(value, bytes) else str(value).encode()
    return buf.getvalue()


def decode(path: Path) -> Any:
    """Read an artifact written by `encode` (the inverse, by suffix; .csv as a DataFrame)."""
    path = Path(path)
    suffix = path.suffix
    if suffix == ".npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    if suffix == ".json":
        return json.loads(path.read_text())
    if suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path)
    return path.read_bytes()


@dataclass
class RunContext:
    """One run's folder, device and progress setting, with artifacts and checkpointed stages.

    out_dir:        the run folder (its record is written there; artifacts go to out_dir/artifacts/).
    device:         where to train: "cpu", "cuda", "cuda:N" (already resolved from `device=auto`).
    progress:       show progress bars / per-stage progress lines.
    checkpoint_dir: where finished stages are kept until the record is filed into the store (the runner
                    gives outputs/partial/<run key>/, so a re-run of a killed job finds them); None: no
                    checkpoints (every stage computes).
    """

    out_dir: Path
    device: str = "cpu"
    progress: bool = True
    checkpoint_dir: Path | None = None
    stage_log: list[tuple[str, str]] = field(default_factory=list)  # (stage, "computed" | "restored")
    _last_report: float = field(default=0.0, repr=False)

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.out_dir) / paths.ARTIFACTS_DIR

    def artifact_path(self, name: str) -> Path:
        """Where artifact `name` (a relative path, e.g. "masks/round_003.npz") lives in the run folder."""
        return self.artifacts_dir / name

    def save_artifact(self, name: str, value: Any) -> Path:
        """Write artifact `name` atomically (format by suffix, see `encode`); returns its path.

        Artifacts are filed into the result store with the record and copied back when a re-run skips
        the job. Write them from what stages return: a stage's side effects are not replayed on resume.
        """
        path = self.artifact_path(name)
        write_bytes_atomic(path, encode(name, value))
        return path

    def stage(self, name: str, fn: Callable[[], T]) -> T:
        """fn()'s result, computed once: kept in checkpoint_dir (as a .pt file) when it finishes, and
        read back instead of recomputed when a killed run is started again.

        `name` is unique within the run (e.g. "round_007"). fn must not depend on random state left by
        an earlier stage: derive its generators from the seed and the stage. Its result is anything
        torch.save can write (tensors, arrays, dicts, lists, numbers).
        """
        path = self.checkpoint_dir / f"{name}.pt" if self.checkpoint_dir is not None else None
        if path is not None and path.is_file():
            try:
                value = decode(path)
            except Exception as exc:  # noqa: BLE001  a torn or foreign file: compute the stage again
                log.warning("stage %s: unreadable checkpoint (%s), computing it again", name, exc)
            else:
                self.stage_log.append((name, "restored"))
                log.info("stage %s: restored from checkpoint", name)
                return value
        start = time.perf_counter()
        value = fn()
        if path is not None:
            write_bytes_atomic(path, encode(path.name, value))
        self.stage_log.append((name, "computed"))
        log.info("stage %s: computed in %.1f s", name, time.perf_counter() - start)
        return value

    def report(self, stage: str, done: int, total: int, every_s: float = 10.0, **metrics: float) -> None:
        """A progress line `stage: done/total [metrics]`, at most every `every_s` seconds (and at the end)."""
        now = time.perf_counter()
        if not self.progress or (done < total and now - self._last_report < every_s):
            return
        self._last_report = now
        extra = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        log.info("%s: %d/%d%s", stage, done, total, f" {extra}" if extra else "")

    def discard_checkpoints(self) -> None:
        """Remove the checkpoints (the runner calls it once the finished record is in the store)."""
        if self.checkpoint_dir is not None:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
