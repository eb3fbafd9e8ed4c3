"""Dataset knobs: the paper's defaults, normalisation of a `data` config subtree, and validation.

Every check runs before any work and raises ConfigError("data.<key>", value, allowed).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError

# The paper's defaults (= original get_dataset_args()) plus the lab's own keys; mirrors conf/data/mnist1d.yaml.
DEFAULTS: dict[str, Any] = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 0.02,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
    "generator": "exact",
    "reverse": False,
    "roll": 0,
    "source": "generate",
    "path": None,
    "cache": True,
    "cache_dir": None,
}
# The knobs of the original generator, in the original's order.
GENERATOR_KNOBS = tuple(list(DEFAULTS)[:12])
GENERATORS = ("exact", "fast")
SOURCES = ("generate", "frozen")
# Bump whenever the output of either generator changes: it is part of every cache key.
GENERATOR_VERSION = 1


def knobs(cfg: Mapping | Any | None) -> dict[str, Any]:
    """The full knob dict: defaults overridden by `cfg` (dict, DictConfig or attribute object)."""
    if cfg is None:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}
    if not isinstance(cfg, Mapping):
        cfg = attribute_knobs(cfg)
    try:  # OmegaConf containers -> plain Python (lists instead of ListConfig)
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    out = knobs(None)
    out.update({k: _plain(v) for k, v in cfg.items() if k != "url"})  # `url`: the original's download address
    if isinstance(out["padding"], tuple):
        out["padding"] = list(out["padding"])
    return out


def attribute_knobs(obj: Any) -> dict[str, Any]:
    """The knobs an attribute object defines, read with getattr: an argparse Namespace, the original's
    ObjectView, a SimpleNamespace, a class holding the knobs as class attributes, or an instance of one.

    Other attributes are ignored, as by the original. An object with none of the knobs raises
    ConfigError; one that lacks some of the original's knobs gets their defaults, with a warning (the
    original would fail on it).
    """
    found = {k: getattr(obj, k) for k in DEFAULTS if hasattr(obj, k)}
    if not found:
        raise ConfigError("data", obj, "a dict, a DictConfig or an object with the dataset knobs as attributes "
                          f"(e.g. get_dataset_args()); knobs: {list(DEFAULTS)}")
    missing = [k for k in GENERATOR_KNOBS if k not in found]
    if missing:
        name = f"class {obj.__name__}" if isinstance(obj, type) else f"{type(obj).__name__} object"
        warnings.warn(f"{name} has no attribute(s) {missing}: using their defaults", stacklevel=3)
    return found


def _plain(v: Any) -> Any:
    """numpy scalars (e.g. from a sweep grid) -> Python scalars; lists element-wise."""
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    return v.item() if isinstance(v, np.generic) else v


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg: Mapping | Any | None) -> None:
    """Raise ConfigError for the first impossible knob; does no work otherwise."""
    k = knobs(cfg)
    unknown = sorted(set(k) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"data.{unknown[0]}", k[unknown[0]], f"not a data knob; known: {sorted(DEFAULTS)}")

    def need(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"data.{key}", k[key], allowed)

    for key in ("generator", "source"):
        need(key, isinstance(k[key], str), "a string")
    need("generator", k["generator"] in GENERATORS, f"one of {list(GENERATORS)}")
    need("source", k["source"] in SOURCES, f"one of {list(SOURCES)}")
    for key in ("shuffle_seq", "reverse", "cache"):
        need(key, isinstance(k[key], bool), "true or false")
    need("roll", _is_int(k["roll"]), "an integer (circular shift of every sequence, after shuffle_seq and reverse)")
    need("cache_dir", k["cache_dir"] is None or isinstance(k["cache_dir"], (str, os.PathLike)), "null or a folder")
    need("seed", _is_int(k["seed"]) and 0 <= k["seed"] < 2**32, "an integer in [0, 2**32)")
    if k["source"] == "frozen":
        p = k["path"]
        need("path", isinstance(p, (str, os.PathLike)) and os.path.isfile(p) and os.access(p, os.R_OK),
             "a readable pickle file (required by source=frozen)")
        return  # the generator knobs are not used by a frozen dataset
    for key in ("num_samples", "template_len", "max_translation", "final_seq_length"):
        need(key, _is_int(k[key]), "an integer")
    need("num_samples", k["num_samples"] >= 10, "an integer >= 10 (num_samples // 10 examples per class)")
    need("template_len", k["template_len"] >= 1, "an integer >= 1")
    need("max_translation", k["max_translation"] >= 1, "an integer >= 1 (shift drawn from 0..max_translation-1)")
    need("final_seq_length", k["final_seq_length"] >= 2, "an integer >= 2")
    need("roll", abs(k["roll"]) < k["final_seq_length"], "an integer with |roll| < final_seq_length")
    pad = k["padding"]
    need("padding", isinstance(pad, list) and len(pad) == 2 and all(_is_int(p) for p in pad),
         "a list [low, high] of two integers")
    need("padding", 0 <= pad[0] <= pad[1], "0 <= low <= high")
    need("template_len", k["template_len"] + pad[1] >= 2, "template_len + padding[1] >= 2 (dilated length)")
    for key in ("train_split", "scale_coeff", "corr_noise_scale", "iid_noise_scale", "shear_scale"):
        need(key, _is_num(k[key]), "a number")
    need("train_split", 0 < k["train_split"] < 1, "a fraction strictly between 0 and 1")
    train, test = split_rows(k)
    need("train_split", train >= 1 and test >= 1, f"a split leaving >= 1 train and test example of {train + test}")
    for key in ("scale_coeff", "corr_noise_scale", "iid_noise_scale", "shear_scale"):
        need(key, k[key] >= 0, "a number >= 0")


def split_rows(cfg: Mapping | Any | None) -> tuple[int, int]:
    """(train, test) rows the generator makes: num_samples rounded down to whole classes, cut at train_split."""
    k = knobs(cfg)
    n = k["num_samples"] // 10 * 10
    split = int(n * k["train_split"])
    return split, n - split


def cache_key(cfg: Mapping | Any | None) -> str:
    """Hash of every knob that changes the data, plus the generator version."""
    k = knobs(cfg)
    keep = {key: k[key] for key in (*GENERATOR_KNOBS, "generator", "reverse", "roll")}
    keep = {key: (float(v) if key in ("train_split", "scale_coeff", "corr_noise_scale", "iid_noise_scale",
                                      "shear_scale") else v) for key, v in keep.items()}
    blob = json.dumps({"version": GENERATOR_VERSION, **keep}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
