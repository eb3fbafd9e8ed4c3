"""MNIST-1D dataset layer: exact and fast generators, variants, cache, torch interop.

Drop-in for the original package: a script written for `mnist1d` runs with its import line changed
to `from mnist1d_lab.data import get_dataset_args, make_dataset, get_dataset` (also exported: get_templates,
ObjectView, to_pickle, from_pickle). The lab's entry point is `load(cfg.data, device) -> DataSplit`. Modules:
    config  knobs, defaults, validation, cache key     exact  the original's stream, vectorised
    fast    modern-RNG generator for big data           store  cache, original-format pickles, .npz
    api     make_dataset / get_dataset / generate / load / DataSplit / MNIST1D / export_npz
"""

from .api import MNIST1D, DataSplit, dataset, export_npz, generate, get_dataset, load, make_dataset
from .config import DEFAULTS, GENERATOR_VERSION, cache_key, knobs, split_rows, validate
from .exact import ObjectView, get_dataset_args, get_templates, seq_permutation
from .fast import make_fast
from .store import from_pickle, load_frozen, to_pickle

__all__ = [
    "DEFAULTS", "GENERATOR_VERSION", "MNIST1D", "DataSplit", "ObjectView", "cache_key", "dataset", "export_npz",
    "from_pickle", "generate", "get_dataset", "get_dataset_args", "get_templates", "knobs", "load", "load_frozen",
    "make_dataset", "make_fast", "seq_permutation", "split_rows", "to_pickle", "validate",
]
