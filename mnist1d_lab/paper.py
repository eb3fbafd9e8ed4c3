"""The paper in one command: every experiment behind Table 1 and Figures 1-10, and one static report.

    python -m mnist1d_lab.paper                          # the paper's protocols (1 h 15 min on 2 CPU cores)
    python -m mnist1d_lab.paper scale=smoke              # the whole pipeline in 1-3 minutes (CI)
    python -m mnist1d_lab.paper scale=quick hydra/launcher=joblib hydra.launcher.n_jobs=2
    python -m mnist1d_lab.paper 'paper.only=[benchmark,benchmark_val]'

Each entry of conf/paper.yaml runs the lab's real entry point in a subprocess, `python -m mnist1d_lab
<entry overrides> <your overrides> hydra.sweep.dir=<paper>/runs/<entry>` (hydra.run.dir too, for
single-run experiments), so every run is looked up in the result store first and a finished one is never
trained twice. An entry whose experiment is not in the lab (yet) is skipped with a note. A small state
file (<paper>/state.json) records the entries that finished with the same command, so a killed paper
run started again goes straight to the first unfinished entry, and that entry's finished runs come from
the store. Writes into <paths.output_dir>/paper/ (`paper.dir`): figures/<entry>/*.png|pdf,
tables/<entry>/*.csv|md, claims.csv/.md (paper vs ours, verdicts computed by report.claims), provenance,
and index.html (report.html: opens from file://, no server, no network).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import experiments, paths
from .clock import hms
from .errors import ConfigError
from .report.outputs import gather, noise_shear_table

log = logging.getLogger("mnist1d_lab.paper")
STATE_FILE = "state.json"   # entries finished, with the command each finished with
RUNS_DIR = "runs"           # <paper>/runs/<entry>/: the entry's sweep (or run) folder and its log


@dataclass
class Entry:
    """One entry of conf/paper.yaml."""

    name: str
    overrides: list[str] = field(default_factory=list)
    builtin: str | None = None
    command: str | None = None
    seconds: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    smoke: bool = True

    def expected(self, scale: str) -> float:
        """Expected wall time (s) at a scale (full when none is given)."""
        return float(self.seconds.get(scale, self.seconds.get("full", 60)))

    def group_choice(self, group: str) -> str | None:
        """The entry's own `group=choice` (experiment=..., sweep=...)."""
        for o in self.overrides:
            key, _, value = o.partition("=")
            if key == group:
                return value
        return None

    @property
    def experiment(self) -> str:
        """The experiment whose summary step reads the entry's runs (train for a saved sweep)."""
        return self.group_choice("experiment") or "train"


def load_config(argv: list[str]) -> tuple[DictConfig, list[str]]:
    """conf/paper.yaml with the `paper.*` overrides of argv merged in; the other overrides pass through."""
    cfg = OmegaConf.create(resources.files("mnist1d_lab.conf").joinpath("paper.yaml").read_text())
    own = [a for a in argv if a.startswith("paper.")]
    passed = [a for a in argv if not a.startswith("paper.")]
    if own:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(own))
    unknown = set(cfg.paper) - {"dir", "only", "skip", "rerun", "timeout_s"}
    if unknown:
        raise ConfigError(f"paper.{sorted(unknown)[0]}", "?", "one of dir, only, skip, rerun, timeout_s")
    return cfg, passed


def entries(cfg: DictConfig) -> list[Entry]:
    """Every entry of the config, in order."""
    return [Entry(name=k, **OmegaConf.to_container(v, resolve=True)) for k, v in cfg.entries.items()]


def override_value(overrides: list[str], key: str, default: str | None = None) -> str | None:
    """The value of `key=value` among overrides (the last one wins)."""
    value = default
    for o in overrides:
        k, sep, v = o.lstrip("+").partition("=")
        if sep and k == key:
            value = v
    return value


def scale_of(overrides: list[str]) -> str:
    """smoke | quick | full (no scale override)."""
    return override_value(overrides, "scale") or "full"


def paper_dir(cfg: DictConfig, overrides: list[str]) -> Path:
    """paper.dir, else <paths.output_dir>/paper (the override, $MNIST1D_LAB_OUTPUTS, or ./outputs)."""
    if cfg.paper.dir:
        return Path(cfg.paper.dir)
    out = override_value(overrides, "paths.output_dir") or os.environ.get(paths.OUTPUTS_ENV) or "outputs"
    return Path(out) / "paper"


def availability(entry: Entry) -> str | None:
    """None when the lab can run the entry; else why not (the experiment is not in the lab yet)."""
    if entry.builtin:
        return None
    conf = resources.files("mnist1d_lab.conf")
    for group in ("experiment", "sweep"):
        choice = entry.group_choice(group)
        if choice is not None and not conf.joinpath(group, f"{choice}.yaml").is_file():
            return f"not available: no conf/{group}/{choice}.yaml in this lab"
    choice = entry.group_choice("experiment")
    declared = OmegaConf.load(str(conf.joinpath("experiment", f"{choice}.yaml"))).get("experiment_name") \
        if choice else None  # an experiment file that extends another (double_descent_mse) declares none
    if declared is not None:
        if declared not in experiments.EXPERIMENTS:
            return f"not available: experiment {declared!r} is not in mnist1d_lab.experiments.EXPERIMENTS"
        if importlib.util.find_spec(experiments.EXPERIMENTS[declared]) is None:
            return f"not available: no module {experiments.EXPERIMENTS[declared]}"
    return None


def selected(all_entries: list[Entry], cfg: DictConfig, scale: str) -> list[tuple[Entry, str | None]]:
    """(entry, why it is skipped or None) for the entries to consider, in order."""
    only = list(cfg.paper.only) if cfg.paper.only else None
    names = {e.name for e in all_entries}
    for n in (only or []) + list(cfg.paper.skip):
        if n not in names:
            raise ConfigError("paper.only" if n in (only or []) else "paper.skip", n, f"one of {sorted(names)}")
    out = []
    for e in all_entries:
        if (only is not None and e.name not in only) or e.name in cfg.paper.skip:
            continue
        why = availability(e)
        if why is None and scale == "smoke" and not e.smoke and only is None:
            why = "left out at scale=smoke (conf/paper.yaml: smoke: false); run it with paper.only"
        out.append((e, why))
    return out


def _top_keys(relpath: str) -> set[str]:
    """Top-level keys of a YAML file of the lab's conf/ (empty when missing)."""
    path = resources.files("mnist1d_lab.conf").joinpath(relpath)
    return set(OmegaConf.load(str(path))) if path.is_file() else set()


def overrides_for(entry: Entry, overrides: list[str]) -> list[str]:
    """The passed-through overrides this entry takes: all of them, except that an override of an
    experiment's own node (human.quiz_dir=..., tsne.mnist_path=...) goes only to the entries whose
    experiment file declares that node (Hydra rejects a key the config does not have)."""
    from .__main__ import GROUPS

    shared = _top_keys("config.yaml") | set(GROUPS) | {"hydra"}
    own = _top_keys(f"experiment/{entry.experiment}.yaml")
    out = []
    for o in overrides:
        top = o.lstrip("+~").partition("=")[0].split(".")[0].split("/")[0]
        if top in shared or top in own or o.startswith("+"):
            out.append(o)
    return out


def command(entry: Entry, overrides: list[str], folder: Path | None = None) -> list[str]:
    """The entry's lab command (with its output folder when given)."""
    if entry.builtin:
        return entry.command.split()
    cmd = ["python", "-m", "mnist1d_lab", *entry.overrides, *overrides_for(entry, overrides)]
    if folder is not None:
        cmd += [f"hydra.run.dir={folder}", f"hydra.sweep.dir={folder}"]
    return cmd


def shell_line(cmd: list[str]) -> str:
    """A command as one shell line, values with parentheses or spaces quoted."""
    return " ".join(f"'{a}'" if any(c in a for c in " ()[]{}*,") and "=" in a else a for a in cmd)



class Progress:
    """`paper: 3/12 experiments, 4:10 elapsed, ETA 20:00`: ETA from the expected times of the entries
    left, scaled by how the entries run so far compared with their expected times."""

    def __init__(self, plan: list[tuple[Entry, float]]):
        self.expected = {e.name: s for e, s in plan}
        self.done: dict[str, float] = {}
        self.ran: dict[str, float] = {}  # entries that ran here (not from the state file): actual seconds
        self.start = time.time()

    def finish(self, name: str, seconds: float | None) -> None:
        self.done[name] = seconds or 0.0
        if seconds is not None:
            self.ran[name] = seconds

    def line(self) -> str:
        left = sum(s for n, s in self.expected.items() if n not in self.done)
        expected_ran = sum(self.expected[n] for n in self.ran)
        pace = min(4.0, max(0.25, sum(self.ran.values()) / expected_ran)) if expected_ran > 0 else 1.0
        return (f"paper: {len(self.done)}/{len(self.expected)} experiments, {hms(time.time() - self.start)} "
                f"elapsed, ETA {hms(left * pace)}")


def read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"finished": {}}


def write_state(folder: Path, state: dict) -> None:
    from .records import write_atomic

    write_atomic(folder / STATE_FILE, json.dumps(state, indent=2))


def _die_with_parent() -> None:
    """In the child: end with the paper process (Linux), so a killed paper run leaves no orphan writing
    into the folder the next run starts afresh."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_entry(entry: Entry, overrides: list[str], out: Path, timeout: float | None) -> int:
    """Run one entry (its runs into out/runs/<entry>/, its output into out/runs/<entry>.log); exit code."""
    folder = out / RUNS_DIR / entry.name
    logfile = out / RUNS_DIR / f"{entry.name}.log"
    if folder.exists():  # a half-run or older entry: its finished runs are in the store, the folder is redone
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if entry.builtin == "figure1":
        from .figure1 import plot_dataset_construction

        plot_dataset_construction(folder)
        logfile.write_text(f"figure1: wrote {folder}\n")
        return 0
    cmd = [sys.executable, *command(entry, overrides, folder.resolve())[1:]]
    log.info("paper: %s: %s", entry.name, shell_line(command(entry, overrides)))
    with open(logfile, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                preexec_fn=_die_with_parent)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer is not None:
            timer.start()
        try:
            for line in proc.stdout:
                f.write(line)
                if "sweep:" in line or "error" in line.lower():
                    log.info("  %s: %s", entry.name, line.rstrip().rpartition("] ")[2])
            rc = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
        if timer is not None and rc < 0:
            f.write(f"paper: killed after {timeout} s (paper.timeout_s)\n")
    if rc != 0:
        log.error("paper: %s failed (exit %d); its output: %s", entry.name, rc, logfile)
        return rc
    if not (folder / paths.TABLE_FILE).is_file():  # a single run: collect it (and its summary step, if any)
        from .collect import collect_sweep

        collect_sweep(folder, entry.experiment if entry.experiment in experiments.EXPERIMENTS else None)
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # matplotlib's PDF font subsetting, per glyph
    try:
        for a in argv:
            if a.startswith("-"):
                raise ConfigError("argument", a, "Hydra overrides only (key=value); experiments that sweep say so themselves")
        cfg, overrides = load_config(argv)
        all_entries = entries(cfg)
        scale = scale_of(overrides)
        todo = selected(all_entries, cfg, scale)
    except ConfigError as exc:
        print(f"mnist1d_lab.paper: error: {exc}", file=sys.stderr)
        return 2
    out = paper_dir(cfg, overrides)
    out.mkdir(parents=True, exist_ok=True)
    state = read_state(out)
    runnable = [(e, e.expected(scale)) for e, why in todo if why is None]
    progress = Progress(runnable)
    status: dict[str, dict] = {}
    for e, why in todo:
        if why is not None:
            log.info("paper: %s: %s", e.name, why)
            status[e.name] = {"status": "skipped", "reason": why}
    failed = 0
    for entry, _ in runnable:
        signature = shell_line(command(entry, overrides))
        done = state["finished"].get(entry.name)
        if done and done.get("command") == signature and not cfg.paper.rerun \
                and (out / RUNS_DIR / entry.name).is_dir():
            status[entry.name] = {**done, "status": "done", "resumed": True}
            progress.finish(entry.name, None)
            log.info("paper: %s: finished before with the same command (state.json)", entry.name)
            log.info(progress.line())
            continue
        state["finished"].pop(entry.name, None)
        write_state(out, state)
        t0 = time.time()
        rc = run_entry(entry, overrides, out, cfg.paper.timeout_s)
        seconds = round(time.time() - t0, 1)
        if rc == 0:
            if entry.name == "noise_shear":
                noise_shear_table(out / RUNS_DIR / entry.name)
            done = {"command": signature, "seconds": seconds, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            state["finished"][entry.name] = done
            write_state(out, state)
            status[entry.name] = {**done, "status": "done"}
        else:
            failed += 1
            status[entry.name] = {"status": "failed", "reason": f"exit {rc}; see {RUNS_DIR}/{entry.name}.log",
                                  "seconds": seconds, "command": signature}
        progress.finish(entry.name, seconds)
        log.info(progress.line())
    for entry, _ in runnable:
        if status[entry.name]["status"] == "done":
            status[entry.name]["outputs"] = gather(out / RUNS_DIR / entry.name, out, entry.name)
    from .report.html import write_report

    index = write_report(out, [e for e, _ in todo], status, overrides, scale)
    log.info("paper: report %s (%d experiments, %d failed, %s)", index, len(runnable), failed,
             hms(time.time() - progress.start))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
