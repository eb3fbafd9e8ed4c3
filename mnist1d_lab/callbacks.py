"""Hydra callbacks: overall sweep progress, and the collected table + experiment figures at the end.

Progress is kept in a file in the sweep folder (one line appended per finished job), so it works the
same when jobs run in this process (basic), in worker processes (joblib) or on other machines
(submitit). Hydra skips `on_multirun_end` when a job raised; jobs here record failures instead of
raising, and `python -m mnist1d_lab.collect <sweep folder>` does the same work by hand.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .clock import hms

log = logging.getLogger("mnist1d_lab.sweep")
PROGRESS_FILE = ".progress.jsonl"
TOTAL_FILE = ".progress_total.json"
PLAN_FILE = ".progress_plan.json"  # {"start": time, "costs": {job: cost}, "together": [[job, ...], ...]}


def count_jobs(task_overrides: list[str], sweeper_params: dict | None) -> int | None:
    """Number of jobs the basic sweeper will launch (None when a sweep cannot be counted, e.g. glob)."""
    parser = OverridesParser.create()
    cli = parser.parse_overrides(list(task_overrides))
    keys = {o.key_or_group for o in cli}
    extra = [f"{k}={v}" for k, v in (sweeper_params or {}).items() if k not in keys]
    total = 1
    for o in cli + parser.parse_overrides(extra):
        if o.is_sweep_override():
            try:
                total *= len(list(o.sweep_iterator()))
            except Exception:  # glob() and friends need the config repository: not counted
                return None
    return total


class SweepCallback(Callback):
    """Logs `[done/total] skipped, failed, ETA` after each job; collects and summarises at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _LAST_SWEEP.clear()
        if config.get("dry_run") or "lab_sweeper" in str(config.hydra.sweeper.get("_target_", "")):
            return  # the lab's sweeper sets the total itself, once every job is validated (nothing before)
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        set_total(sweep, count_jobs(config.hydra.overrides.task, config.hydra.sweeper.get("params")))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not (sweep / TOTAL_FILE).is_file():
            return  # a single run, not a sweep
        ret = job_return.return_value if isinstance(getattr(job_return, "return_value", None), dict) else {}
        count_job(sweep, "skipped" if ret.get("skipped") else ret.get("status", "failed"),
                  config.hydra.job.get("num"))
        log.info(progress_line(sweep))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .collect import collect_sweep

        sweep = Path(config.hydra.sweep.dir)
        if config.get("dry_run") or not (sweep / TOTAL_FILE).is_file():
            return  # a dry run: nothing ran
        collect_sweep(sweep, config.get("experiment_name"))
        failed = sorted({e.get("num") for e in _events(sweep) if e["status"] == "failed"}, key=str)
        if failed:
            _LAST_SWEEP["failed"] = (f"{len(failed)} of {json.loads((sweep / TOTAL_FILE).read_text())['total']} "
                                     f"jobs failed (job {', '.join(map(str, failed))}), the others ran to the "
                                     f"end; collected: {sweep / 'results.csv'} (columns status, error)")


_LAST_SWEEP: dict[str, str] = {}  # what the entry point reports once the sweep is over


def last_sweep_failures() -> str | None:
    """A line on the failed jobs of the sweep that just ended in this process, or None (the entry point
    exits non-zero with it)."""
    return _LAST_SWEEP.get("failed")


def _events(sweep: Path) -> list[dict]:
    path = sweep / PROGRESS_FILE
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()] if path.is_file() else []


def set_total(sweep: Path, total: int | None) -> None:
    """Record how many jobs the sweep has (the lab's sweepers know it exactly; others are counted) and
    start its count afresh: a sweep run again into the same folder (a resumed kill) counts and times
    only itself, not the jobs and plans of the earlier run."""
    for name in (PROGRESS_FILE, PLAN_FILE):
        (sweep / name).unlink(missing_ok=True)
    (sweep / TOTAL_FILE).write_text(json.dumps({"total": total, "start": time.time()}))


def plan_jobs(sweep: Path, stacks: list[dict[int, float]]) -> None:
    """Record the estimated cost of jobs about to run, by job number, as groups of jobs that finish
    together (a stack; merged with earlier plans), so the ETA weighs the remaining jobs by cost instead
    of counting them (the batched launcher writes it)."""
    path = sweep / PLAN_FILE
    plan = json.loads(path.read_text()) if path.is_file() else {"start": time.time(), "costs": {}, "together": []}
    for stack in stacks:
        plan["costs"].update({str(num): float(c) for num, c in stack.items()})
        plan["together"].append([str(num) for num in stack])
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, path)


def count_job(sweep: Path, status: str, num: int | None = None) -> None:
    """Add one finished job (complete, diverged, failed or skipped; job number `num`) to the progress file."""
    line = json.dumps({"status": status, "t": time.time(), "num": num}) + "\n"
    fd = os.open(sweep / PROGRESS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: atomic between processes
    finally:
        os.close(fd)


def progress_line(sweep: Path) -> str:
    """`sweep: 12/40 runs done (3 skipped, 1 failed), 5:02 elapsed, ETA 11:40`."""
    meta = json.loads((sweep / TOTAL_FILE).read_text())
    events = [json.loads(s) for s in (sweep / PROGRESS_FILE).read_text().splitlines() if s.strip()]
    done, total = len(events), meta["total"]
    skipped = sum(e["status"] == "skipped" for e in events)
    failed = sum(e["status"] in ("failed", "diverged") for e in events)
    elapsed = time.time() - meta["start"]
    ran = done - skipped
    eta = "?"
    if total and ran:
        eta = hms(_remaining(sweep, events, total, meta["start"]))
    total_s = total if total is not None else "?"
    return (f"sweep: {done}/{total_s} runs done ({skipped} skipped, {failed} failed/diverged), "
            f"{hms(elapsed)} elapsed, ETA {eta}")


def _remaining(sweep: Path, events: list[dict], total: int, start: float) -> float:
    """Seconds left: by estimated cost when a plan covers every job that ran and every job still to
    come (the batched launcher writes one), at the cost per second since the plan was made (start-up
    and skipping excluded); else by count, as if the remaining runs cost what the finished ones did on
    average since the sweep started (optimistic when cheap runs finish first)."""
    ran = [e for e in events if e["status"] != "skipped"]
    path = sweep / PLAN_FILE
    if path.is_file():
        plan = json.loads(path.read_text())
        costs, finished = plan["costs"], {str(e.get("num")) for e in events}
        if all(str(e.get("num")) in costs for e in ran):  # else a job ran unplanned: count instead
            for stack in plan["together"]:  # a stack's jobs are booked one by one but all done at once
                if finished.intersection(stack):
                    finished.update(stack)
            left = [c for num, c in costs.items() if num not in finished]
            spent = sum(costs.get(num, 0.0) for num in finished)
            if len(left) == total - len(finished) and spent > 0:
                return (time.time() - plan["start"]) / spent * sum(left)
    return (time.time() - start) / len(ran) * max(0, total - len(events))
