"""`hydra/launcher=batched`: fuse the jobs of a sweep that differ only in seed, width and nested training
size into one program.

    python -m mnist1d_lab -m hydra/launcher=batched model=mlp model.width='range(1,200)' seed=0,1

Jobs of experiments that declare `BATCHABLE = True` (train, benchmark, classwise, double_descent, pooling)
are grouped by `mnist1d_lab.batched.schedule.group_key` (the resolved config without seed, width/channels
and, where `batched.nested_size` allows, train_size); each
group trains as stacked models (`mnist1d_lab.batched`), planned within `memory_budget_mb`. Every job
still gets its own Hydra job folder (.hydra/ files, callbacks) and its own record, identical in form
to the basic launcher's, so `collect` cannot tell the difference. Groups that cannot batch (the GRU, a
knob the stacked path does not implement, a single job) and every job of any other experiment run one
at a time, through the experiment's own run. Finished jobs are skipped member by member.
"""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from mnist1d_lab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.mnist1d_lab_launcher.batched_launcher.BatchedLauncher"
    memory_budget_mb: int = 2048  # a stacked group never needs more (estimated); bigger sweeps are chunked
    side_by_side: bool = True  # MLP stacks train side by side, one torch thread each (false: one after another)


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf,
                             provider="mnist1d_lab")


class BatchedLauncher(Launcher):
    """Groups batchable jobs and trains each group at once; Hydra bookkeeping per job as usual."""

    takes_job_nums = True  # the lab sweeper may pass explicit job numbers (skipped jobs leave gaps)

    def __init__(self, memory_budget_mb: int = 2048, side_by_side: bool = True) -> None:
        self.memory_budget_mb, self.side_by_side = memory_budget_mb, side_by_side
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _job_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
            cfg.hydra.job.num = idx
        return cfg

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
               job_nums: Sequence[int] | None = None) -> Sequence[JobReturn]:
        from mnist1d_lab import callbacks
        from mnist1d_lab.batched import schedule

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        nums = job_nums or range(initial_job_idx, initial_job_idx + len(job_overrides))
        configs = [self._job_config(o, num) for o, num in zip(job_overrides, nums, strict=True)]
        groups: dict[str, list[int]] = {}
        for i, cfg in enumerate(configs):
            key = schedule.group_key(_task_part(cfg))  # None: the job trains alone (not a batchable experiment)
            groups.setdefault(key if key is not None else f"alone {i}", []).append(i)
        log.info("Batched launcher: %d jobs in %d groups", len(configs), len(groups))
        fused = [members for members in groups.values() if len(members) > 1]  # a lone job: task function
        returns: list[JobReturn | None] = [None] * len(configs)
        lone = {configs[i].hydra.job.num: schedule.single_cost(_task_part(configs[i]))
                for members in groups.values() if len(members) == 1 for i in members}
        if None not in lone.values():  # the ETA's plan (execute_groups adds the stacked jobs)
            callbacks.plan_jobs(Path(str(self.config.hydra.sweep.dir)), [{num: c} for num, c in lone.items()])

        def done(group: int, member: int, summary: dict) -> None:  # each stack's jobs, as it finishes
            i = fused[group][member]
            returns[i] = self._bookkeep(configs[i], summary)

        results = self._train_groups([[configs[i] for i in members] for members in fused], done)
        precomputed = {i: s for members, group in zip(fused, results, strict=True)
                       for i, s in zip(members, group, strict=True)}
        for i, cfg in enumerate(configs):  # skipped, one-at-a-time and lone jobs
            if returns[i] is None:
                returns[i] = self._bookkeep(cfg, precomputed.get(i))
        return returns

    def _train_groups(self, groups: list[list[DictConfig]], done) -> list[list[dict]]:
        """Train the groups (stacks of several groups may run side by side), writing each record into
        the job folder Hydra will use; done(group, member, summary) as each stack finishes."""
        from mnist1d_lab import callbacks
        from mnist1d_lab.batched import schedule

        if not groups:
            return []
        HydraConfig.instance().set_config(groups[0][0])
        jobs = [([_task_part(c) for c in cfgs], [Path(str(c.hydra.sweep.dir)) / str(c.hydra.sweep.subdir)
                                                 for c in cfgs]) for cfgs in groups]

        def planned(stacks: list[dict[tuple[int, int], float]]) -> None:  # for the sweep's cost-weighted ETA
            callbacks.plan_jobs(Path(str(self.config.hydra.sweep.dir)),
                                [{groups[g][i].hydra.job.num: c for (g, i), c in s.items()} for s in stacks])

        try:
            return schedule.execute_groups(jobs, memory_budget_mb=self.memory_budget_mb, done=done,
                                         side_by_side=self.side_by_side, planned=planned)
        except ConfigError as exc:  # bad input: one line, exit 2, as the single-job path does
            print(f"mnist1d_lab: error: {exc}", file=sys.stderr)
            sys.exit(2)

    def _bookkeep(self, cfg: DictConfig, summary: dict | None) -> JobReturn:
        """Hydra's per-job steps (folder, .hydra files, logging, callbacks) around the precomputed result."""
        HydraConfig.instance().set_config(cfg)
        task = self.task_function if summary is None else (lambda _cfg: summary)
        return run_job(hydra_context=self.hydra_context, task_function=task, config=cfg,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _task_part(cfg: DictConfig) -> DictConfig:
    """The job config without the `hydra` node (what the task function sees)."""
    task = cfg.copy()
    with open_dict(task):
        task.pop("hydra", None)
    return task
