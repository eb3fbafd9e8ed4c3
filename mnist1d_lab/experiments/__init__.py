"""The experiment registry and the contract every experiment follows.

An experiment is one module here, one YAML file in `conf/experiment/`, and one line in EXPERIMENTS
(docs/experiments.md walks through adding one). The module provides:

run(cfg, ctx) -> protocol.TrainResult
    One Hydra job. `cfg` is the job's resolved config (the experiment's own knobs live in its own
    top-level node, e.g. `cfg.lottery`); `ctx` is a `context.RunContext`: the run folder, the device,
    the progress setting, `ctx.save_artifact(name, value)`, `ctx.stage(name, fn)` and
    `ctx.report(stage, done, total)`. The result carries
    - `summary`: a flat dict of numbers and strings (one row of the sweep's results.csv);
    - `columns`, `rows`: tidy curves, one row per evaluation, step first (curves.csv; may be empty);
    - `stages`: several result rows per run (one per pruning round, outer step, training size...) as a
      list of flat dicts (stages.csv; `collect` concatenates them, with each run's key columns, into
      the sweep's stages.csv beside results.csv);
    - `test_pred`, `test_true`: the final predicted and true class of every test row (the record keeps
      them as the artifact test_pred.npy and the 10 x 10 count matrix test_confusion.csv, so per-class
      errors on any subset of test rows come from any run without retraining);
    - `model`: the final model; with `save_model=true` its weights become the artifact model.pt and
      `records.load_model(record_dir)` builds it back.
    Raise `errors.ConfigError` for bad input; any other exception records the run as `failed`.

Artifacts: files under `<run folder>/artifacts/` (masks, weights, per-round tables, learned functions),
    written atomically with `ctx.save_artifact` before the summary, filed into the result store with
    the record and copied back when a re-run skips the job. Find them with
    `records.artifact_path(record_dir, name)` from a row of a collected table (`record_dir` column).

Stages: a long run wraps each unit of work in `ctx.stage(name, fn)`. A finished stage's result is kept
    under `outputs/partial/<run key>/` until the record is filed, so a killed run started again resumes
    after its last finished stage and ends with the same numbers as an uninterrupted one. A stage must
    not depend on random state left by an earlier one (derive generators from the seed and the stage),
    and artifacts are written from what stages return (a stage's side effects are not replayed).

Optional module attributes:
    BATCHABLE = True   jobs may be trained stacked by `hydra/launcher=batched` (plain training runs that
                       differ in seed, width or nested train size: train, benchmark, classwise,
                       double_descent, pooling). Any other
                       experiment's jobs run through its own `run`, one at a time, under every launcher.
    summarize(table, out_dir) -> list[Path]
                       the sweep's tables and figures from the collected runs (`table`: results.csv's
                       rows of finished runs; `records.collect_stages(table)` gives their stages).
    CONFIG_NODE = "lottery"
                       the experiment's own top-level config node. Before any work (in a sweep, before
                       any job launches) `runner.validate` rejects a key of that node that its YAML file
                       does not have (`+lottery.roundz=3`: one line naming the nearest key, exit 2), then
                       calls the module's `validate(node)` with `cfg.lottery` if it defines one (raise
                       `errors.ConfigError`; `runner.check_keys` checks a nested node's keys the same way).
    CONFIG_FILE = path the YAML file that declares the node's keys, when it is not
                       `conf/experiment/<experiment_name>.yaml` (an experiment outside the package).

Run keys hash the resolved config without paths, threads, device, progress, save_model, dry_run and the
dotted keys an experiment's YAML lists under `neutral_keys` (what only its summary reads, e.g. classwise's
`human`); a learned activation counts by its file's content (`records.run_key`). So a finished run is
found again by any launcher on any machine.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError

EXPERIMENTS = {
    "train": "mnist1d_lab.experiments.train",
    "benchmark": "mnist1d_lab.experiments.benchmark",
    "double_descent": "mnist1d_lab.experiments.double_descent",
    "pooling": "mnist1d_lab.experiments.pooling",
    "spatial_priors": "mnist1d_lab.experiments.spatial_priors",
    "metalearn_lr": "mnist1d_lab.experiments.metalearn_lr",
    "metalearn_activation": "mnist1d_lab.experiments.metalearn_activation",
    "lottery": "mnist1d_lab.experiments.lottery",
    "human": "mnist1d_lab.experiments.human",
    "classwise": "mnist1d_lab.experiments.classwise",
    "tsne": "mnist1d_lab.experiments.tsne",
}


def get(name: str) -> ModuleType:
    """The experiment module registered under name; a dotted name outside the registry
    (`experiment_name=mypkg.my_experiment`) is imported as the module itself."""
    if name in EXPERIMENTS:
        return importlib.import_module(EXPERIMENTS[name])
    if isinstance(name, str) and "." in name:
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = None
        if module is not None and callable(getattr(module, "run", None)):
            return module
    raise ConfigError("experiment_name", name,
                      f"one of {sorted(EXPERIMENTS)}, or an importable module path with a run(cfg, ctx)")


def batchable(name: str) -> bool:
    """Whether the experiment's jobs may be trained stacked by the batched launcher."""
    return bool(getattr(get(name), "BATCHABLE", False))
