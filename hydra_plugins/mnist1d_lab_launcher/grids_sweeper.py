"""`hydra/sweeper=grids`: a sweep that is a union of cartesian grids (e.g. MLP widths and CNN channels).

Hydra's basic sweeper runs ONE cartesian product. Figure 4 needs three different grids (MLP clean,
MLP noisy over widths; CNN noisy over channels), so an experiment file names them:

    hydra:
      sweeper:
        grids:                                  # name -> {key: value or sweep string}
          mlp_clean: {model: mlp, train.label_noise: 0.0, model.width: "2,3,4"}
          cnn_noisy: {model: cnn, train.label_noise: 0.15, model.channels: "2,4,6"}
        params: {seed: 0}                       # ordinary params, added to every grid
        scales:                                 # per `scale=<name>` choice: values replacing grid values
          smoke: {mlp_clean: {model.width: "2,3"}}

Command-line overrides (`expand_grids`), key by key:
  * a key no grid mentions applies to every grid (`seed=0,1`, `train.epochs=10`);
  * a key some grids mention keeps only those grids (`model.width=range(1,200)` drops the CNN grid);
  * among those, a plain value equal to some grids' fixed value selects them (`model=cnn`,
    `train.label_noise=0`); otherwise the value (or sweep) replaces the key in each grid.
Identical jobs from different grids run once. All jobs go to the launcher in one call (so the batched
launcher can fuse them), or in chunks of `max_batch_size`.
"""

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class GridsSweeperConf:
    _target_: str = "hydra_plugins.mnist1d_lab_launcher.grids_sweeper.GridsSweeper"
    max_batch_size: Any = None  # jobs per launcher call; null = all at once (lets the batched launcher fuse)
    grids: Any = None           # {grid name: {key: value or sweep string}}: the sweep is their union
    params: Any = None          # {key: value or sweep string} added to every grid (like the basic sweeper's)
    scales: Any = None          # {scale choice: {grid name: {key: value}}}: applied when `scale=<choice>`


ConfigStore.instance().store(group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="mnist1d_lab")


def _value_str(v: Any) -> str:
    """A YAML value as override text (bool -> true/false, None -> null)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


def _parse(key: str, value: Any, parser: OverridesParser) -> Override:
    return parser.parse_overrides([f"{key}={_value_str(value)}"])[0]


def _values(o: Override) -> list[str]:
    """Override -> list of `key=value` strings (one per swept value)."""
    key = o.get_key_element()
    if not o.is_sweep_override():
        return [f"{key}={o.get_value_element_as_str()}"]
    if not o.is_discrete_sweep():
        raise HydraException(f"grids sweeper does not support sweep type {o.value_type.name} ({key})")
    return [f"{key}={v}" for v in o.sweep_string_iterator()]


def expand_grids(grids: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any] | None,
                 arguments: Sequence[str], parser: OverridesParser | None = None) -> tuple[list[list[str]], list[str]]:
    """The union of the grids after `params` and command-line `arguments`: (job override lists, grid names kept)."""
    parser = parser or OverridesParser.create()
    # every grid gets the params it does not set itself: {name: {key: Override}}
    work = {name: {k: _parse(k, v, parser) for k, v in {**(params or {}), **dict(g)}.items()}
            for name, g in grids.items()}
    for o in parser.parse_overrides(list(arguments)):
        key = o.get_key_element()
        having = [n for n, g in work.items() if key in g]
        if not having:  # no grid mentions it: applies to all
            for g in work.values():
                g[key] = o
            continue
        work = {n: work[n] for n in having}  # a key some grids mention keeps only those grids
        if not o.is_sweep_override():
            same = [n for n in having if not work[n][key].is_sweep_override()
                    and work[n][key].value() == o.value()]
            if same:  # a plain value equal to some grids' fixed value selects them
                work = {n: work[n] for n in same}
                continue
        for g in work.values():
            g[key] = o
    jobs, seen = [], set()
    for g in work.values():
        for combo in itertools.product(*(_values(o) for o in g.values())):
            ident = tuple(sorted(combo))
            if ident not in seen:  # the same job from two grids runs once
                seen.add(ident)
                jobs.append(list(combo))
    return jobs, list(work)


class GridsSweeper(BasicSweeper):
    """The basic sweeper's launch loop over a union of cartesian grids instead of one product."""

    def __init__(self, max_batch_size: int | None = None, grids: Mapping | None = None,
                 params: Mapping | None = None, scales: Mapping | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=None)
        to_plain = lambda x: OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else dict(x or {})  # noqa: E731
        self.grids = {n: g for n, g in to_plain(grids).items() if g}  # `name: null` removes a grid
        self.grid_params, self.scales = to_plain(params), to_plain(scales)
        if not self.grids:
            raise HydraException("hydra/sweeper=grids needs hydra.sweeper.grids: {name: {key: sweep}}")

    def _scaled_grids(self) -> dict:
        """The grids with the values of `scales[<scale choice>]` swapped in."""
        choice = OmegaConf.select(self.config, "hydra.runtime.choices.scale") if self.config else None
        grids = {n: dict(g) for n, g in self.grids.items()}
        for name, changes in (self.scales.get(choice) or {}).items() if choice else ():
            if name in grids and changes:
                grids[name].update(changes)
        return grids

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs, kept = expand_grids(self._scaled_grids(), self.grid_params, arguments, parser)
        if not jobs:
            raise HydraException(f"grids sweeper: no grid left after the overrides {arguments}")
        log.info("grids sweeper: %d jobs from grids %s", len(jobs), ", ".join(kept))
        n = self.max_batch_size or len(jobs)
        self.overrides = [jobs[i:i + n] for i in range(0, len(jobs), n)]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        _fix_progress_total(sweep_dir, len(jobs))
        returns, idx = [], 0
        while not self.is_done():
            batch = self.get_job_batch()  # composed (and checked) by the launcher, job by job
            results = self.launcher.launch(batch, initial_job_idx=idx)
            for r in results:
                _ = r.return_value  # raises if a job raised
            idx += len(batch)
            returns.append(results)
        return returns


def _fix_progress_total(sweep_dir: Path, total: int) -> None:
    """SweepCallback counted jobs as the basic sweeper would; give it the true total for its ETA."""
    try:
        from mnist1d_lab.callbacks import TOTAL_FILE
    except ImportError:
        return
    f = sweep_dir / TOTAL_FILE
    if f.is_file():
        meta = json.loads(f.read_text())
        meta["total"] = total
        f.write_text(json.dumps(meta))
