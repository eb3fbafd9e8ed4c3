"""Sweeps that are a union of cartesian grids (e.g. MLP widths and CNN channels), for the lab sweeper.

Hydra's basic sweeper runs ONE cartesian product. Figure 4 needs three different grids (MLP clean,
MLP noisy over widths; CNN noisy over channels), so an experiment file names them for the lab's
sweeper (`hydra/sweeper=lab`, the default; see lab_sweeper.py):

    hydra:
      sweeper:
        grids:                                  # name -> {key: value or sweep string}
          mlp_clean: {model: mlp, train.label_noise: 0.0, model.width: "2,3,4"}
          cnn_noisy: {model: cnn, train.label_noise: 0.15, model.channels: "2,4,6"}
        params: {seed: 0}                       # ordinary params, added to every grid
        scales:                                 # per `scale=<name>` choice: values replacing grid values
          smoke: {mlp_clean: {model.width: "2,3"}, cnn_noisy: null}   # null: the grid is left out

Command-line overrides (`expand_grids`), key by key:
  * a key no grid mentions applies to every grid (`seed=0,1`, `train.epochs=10`);
  * a key some grids mention keeps only those grids (`model.width=range(1,200)` drops the CNN grid);
  * among those, a plain value equal to some grids' fixed value selects them (`model=cnn`,
    `train.label_noise=0`); otherwise the value (or sweep) replaces the key in each grid.
Identical jobs from different grids run once.
"""

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException


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


def scaled(grids: Mapping[str, Mapping[str, Any]], scales: Mapping | None, choice: str | None) -> dict:
    """The grids (`name: null` removed) with the values of `scales[choice]` swapped in (a grid the scale
    sets to null is left out)."""
    out = {n: dict(g) for n, g in grids.items() if g}
    for name, changes in ((scales or {}).get(choice) or {}).items() if choice else ():
        if changes is None:
            out.pop(name, None)
        elif name in out:
            out[name].update(changes)
    return out
