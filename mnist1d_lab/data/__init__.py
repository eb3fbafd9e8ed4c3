"""MNIST-1D dataset layer: exact and fast generators, variants, cache, torch interop.

Drop-in for the original package (`from mnist1d_lab.data import get_dataset_args, make_dataset`), plus
the lab's entry point `load(cfg.data, device) -> DataSplit`. Modules:
    config  knobs, defaults, validation, cache key     exact  the original's stream, vectorised
    fast    modern-RNG generator for big data           store  cache, frozen pickles, .npz
    api     generate / load / DataSplit / MNIST1D / export_npz
"""

from .api import MNIST1D, DataSplit, dataset, export_npz, generate, load
from .config import DEFAULTS, GENERATOR_VERSION, cache_key, knobs, split_rows, validate
from .exact import get_dataset_args, get_templates, make_dataset, seq_permutation
from .fast import make_fast
from .store import load_frozen

__all__ = [
    "DEFAULTS", "GENERATOR_VERSION", "MNIST1D", "DataSplit", "cache_key", "dataset", "export_npz", "generate",
    "get_dataset_args", "get_templates", "knobs", "load", "load_frozen", "make_dataset", "make_fast",
    "seq_permutation", "split_rows", "validate",
]
