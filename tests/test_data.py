"""Dataset layer: equality with the original generator and the frozen pickle, fast generator's
distribution, variants, cache, validation, interop and Figure 1. CPU only, seconds in total."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist1d_lab import data as D
from mnist1d_lab.data import api, exact
from mnist1d_lab.errors import ConfigError

ref = pytest.importorskip("mnist1d.data")  # the original package is the oracle

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("MNIST1D_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
FROZEN = REFERENCE_DIR / "mnist1d_data.pkl"
TOL = 1e-12


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Every test caches into its own tmp folder, never into the user's home."""
    monkeypatch.setenv("MNIST1D_LAB_CACHE", str(tmp_path / "cache"))


def reference(**over):
    """The original make_dataset with knobs overridden."""
    args = ref.get_dataset_args()
    for k, v in over.items():
        setattr(args, k, v)
    return ref.make_dataset(args)


def assert_same(ours: dict, theirs: dict) -> float:
    """y, y_test, t and templates identical; x, x_test within TOL. Returns the max abs difference."""
    for k in ("y", "y_test", "t"):
        assert np.array_equal(ours[k], theirs[k]), k
        assert ours[k].dtype == theirs[k].dtype, k
    for k in ("x", "t", "y"):
        assert np.array_equal(ours["templates"][k], theirs["templates"][k]), f"templates.{k}"
    diff = 0.0
    for k in ("x", "x_test"):
        assert ours[k].shape == theirs[k].shape, k
        diff = max(diff, float(np.abs(ours[k] - theirs[k]).max()))
    assert diff <= TOL
    return diff


@pytest.fixture(scope="module")
def ref_default():
    return reference()


# ---------------------------------------------------------------- exact generator and drop-in API

def test_defaults_match_yaml_and_original():
    from omegaconf import OmegaConf

    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "mnist1d.yaml"))
    assert yaml == D.DEFAULTS
    ours, theirs = D.get_dataset_args(as_dict=True), ref.get_dataset_args(as_dict=True)
    assert ours == theirs
    view = D.get_dataset_args()
    view.num_samples = 20
    assert view.__dict__["num_samples"] == 20 and D.get_dataset_args().num_samples == 5000


def test_exact_default_matches_reference(ref_default):
    theirs = ref_default
    ours = D.make_dataset(D.get_dataset_args())
    assert_same(ours, theirs)
    # same numpy and scipy in one process: bit-identical (the frozen file is only within 1e-15, see below)
    assert np.array_equal(ours["x"], theirs["x"])


KNOB_SETS = [  # together they move every knob
    dict(num_samples=503, seed=1, shuffle_seq=True),
    dict(num_samples=400, padding=[0, 0], template_len=5, final_seq_length=17),
    dict(num_samples=300, padding=[60, 60], max_translation=1, seed=3),
    dict(num_samples=300, corr_noise_scale=0.0, iid_noise_scale=0.0, shear_scale=0.0, scale_coeff=0.0),
    dict(num_samples=310, padding=[10, 20], max_translation=100, seed=7),  # shifts >= L: the original's quirk
    dict(num_samples=1003, train_split=0.5, scale_coeff=1.5, shear_scale=2.0, seed=123456),
    dict(num_samples=200, template_len=30, final_seq_length=100, corr_noise_scale=1.0, iid_noise_scale=0.5),
    dict(num_samples=250, seed=0, train_split=0.95, padding=[1, 80], final_seq_length=2, shuffle_seq=True),
    dict(num_samples=10, template_len=1, padding=[1, 1], max_translation=2, train_split=0.3),
]


@pytest.mark.parametrize("over", KNOB_SETS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_exact_matches_reference_for_knobs(over):
    theirs = reference(**over)
    ours = D.make_dataset({**D.get_dataset_args(as_dict=True), **over})
    assert_same(ours, theirs)
    cfg = {**over, "cache": False}
    split = D.load(cfg)  # the lab's path gives the same data as float32 tensors
    assert torch.equal(split.x, torch.as_tensor(ours["x"], dtype=torch.float32))
    assert torch.equal(split.y_test, torch.as_tensor(ours["y_test"]))


def test_exact_matches_frozen_pickle():
    if not FROZEN.is_file():
        pytest.skip(f"frozen dataset not found at {FROZEN} (set MNIST1D_REFERENCE_DIR)")
    diff = assert_same(D.make_dataset(), D.load_frozen(FROZEN))
    assert diff < 1e-15


def test_make_dataset_leaves_global_rng_alone():
    np_state, py_state = np.random.get_state(), random.getstate()
    D.make_dataset({"num_samples": 100})
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(np_state, after, strict=True)) and random.getstate() == py_state


def test_interp_rows_is_np_interp_bit_for_bit():
    rng = np.random.default_rng(0)
    for n_in, n_out in [(72, 40), (40, 72), (13, 13), (2, 7), (100, 3)]:
        y = rng.standard_normal((5, n_in))
        want = np.stack([np.interp(np.linspace(0, 1, n_out), np.linspace(0, 1, n_in), r) for r in y])
        assert np.array_equal(exact.interp_rows(y, n_out), want)


# ---------------------------------------------------------------- fast generator

def _pooled(d):
    return np.concatenate([d["x"], d["x_test"]]), np.concatenate([d["y"], d["y_test"]])


def _ridge_acc(x, y, x_eval, y_eval, lam=1.0):
    """Closed-form ridge regression on one-hot targets with quadratic features: test accuracy."""
    feats = lambda a: np.hstack([a, a**2, np.ones((len(a), 1))])  # noqa: E731
    f = feats(x)
    w = np.linalg.solve(f.T @ f + lam * np.eye(f.shape[1]), f.T @ np.eye(10)[y])
    return float((feats(x_eval) @ w).argmax(1).__eq__(y_eval).mean())


def test_fast_matches_exact_distribution():
    cfg = {"num_samples": 20000}
    xe, ye = _pooled(D.make_dataset(cfg))
    fast = D.make_fast(D.knobs(cfg))
    xf, yf = _pooled(fast)
    assert xf.dtype == np.float32 and np.array_equal(np.bincount(yf), np.bincount(ye))
    # per-class mean signal: z-scores of the difference (400 values, |z| < 5 almost surely under H0)
    for c in range(10):
        a, b = xe[ye == c], xf[yf == c]
        z = (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
        assert np.abs(z).max() < 5.0, (c, np.abs(z).max())
    # per-position std within 3 % (standard error ~0.5 %)
    np.testing.assert_allclose(xf.std(0), xe.std(0), rtol=0.03)
    # a classifier trained on one scores the same on the other (within noise; chance = 0.1)
    n = 16000
    acc_ee = _ridge_acc(xe[:n], ye[:n], xe[n:], ye[n:])
    acc_ef = _ridge_acc(xe[:n], ye[:n], xf[n:], yf[n:])
    acc_fe = _ridge_acc(xf[:n], yf[:n], xe[n:], ye[n:])
    assert acc_ee > 0.3
    assert abs(acc_ee - acc_ef) < 0.04 and abs(acc_ee - acc_fe) < 0.04, (acc_ee, acc_ef, acc_fe)


def test_fast_is_deterministic_and_independent_of_threads():
    a = D.knobs({"num_samples": 70000, "generator": "fast"})
    one, two = D.make_fast(a, workers=1), D.make_fast(a, workers=2)
    assert np.array_equal(one["x"], two["x"]) and np.array_equal(one["y_test"], two["y_test"])
    other = D.make_fast({**a, "seed": 43}, workers=2)
    assert not np.array_equal(one["x"][:10], other["x"][:10])
    x, _ = _pooled(one)
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4


def test_fast_per_example_path_matches_cell_path(monkeypatch):
    a = D.knobs({"num_samples": 20000, "generator": "fast"})
    cells = _pooled(D.make_fast(a))[0]
    monkeypatch.setattr("mnist1d_lab.data.fast.TABLE_LIMIT", 0)  # forces the path used for extreme knobs
    examples = _pooled(D.make_fast(a))[0]
    np.testing.assert_allclose(examples.std(0), cells.std(0), rtol=0.03)
    np.testing.assert_allclose(examples.mean(0), cells.mean(0), atol=0.05)


def test_fast_handles_odd_knobs():
    for over in (dict(padding=[0, 0], template_len=5, final_seq_length=17, max_translation=100),
                 dict(shuffle_seq=True, num_samples=37, corr_noise_scale=0.0, iid_noise_scale=0.0)):
        d = D.generate({**over, "generator": "fast"})
        n = over.get("num_samples", 5000) // 10 * 10
        assert len(d["x"]) + len(d["x_test"]) == n and np.isfinite(d["x"]).all()


# ---------------------------------------------------------------- variants

def test_shuffle_is_the_originals_fixed_permutation():
    perm = D.seq_permutation({"num_samples": 300})
    assert sorted(perm) == list(range(40)) and not np.array_equal(perm, np.arange(40))
    plain, shuffled = D.make_dataset({"num_samples": 300}), D.make_dataset({"num_samples": 300, "shuffle_seq": True})
    np.testing.assert_allclose(shuffled["x"], plain["x"][:, perm], rtol=0, atol=TOL)
    np.testing.assert_array_equal(shuffled["t"], plain["t"])  # t is not permuted (as in the original)


def test_reverse():
    plain, rev = D.load({"num_samples": 100, "cache": False}), D.load({"num_samples": 100, "reverse": True})
    assert torch.equal(rev.x, plain.x.flip(1)) and torch.equal(rev.x_test, plain.x_test.flip(1))
    assert torch.equal(rev.y, plain.y)


def test_roll_is_np_roll_applied_last():
    base = {"num_samples": 100, "cache": False}
    plain, half = D.generate(base), D.generate({**base, "roll": 20})
    for k in ("x", "x_test"):  # roll=20 of 40 swaps the two halves
        assert np.array_equal(half[k], np.roll(plain[k], 20, axis=1))
        assert np.array_equal(half[k], np.concatenate([plain[k][:, 20:], plain[k][:, :20]], axis=1))
    assert np.array_equal(half["y"], plain["y"]) and np.array_equal(half["t"], plain["t"])
    # after shuffle_seq and reverse, in that order; negative shifts are np.roll's left shifts
    both = D.generate({**base, "shuffle_seq": True, "reverse": True, "roll": -3})
    want = np.roll(plain["x"][:, D.seq_permutation(base)][:, ::-1], -3, axis=1)
    np.testing.assert_allclose(both["x"], want, rtol=0, atol=TOL)
    # the cached path and the drop-in make_dataset agree with generate
    assert torch.equal(D.load({"num_samples": 100, "roll": 20}).x, torch.as_tensor(half["x"], dtype=torch.float32))
    assert np.array_equal(D.make_dataset({"num_samples": 100, "roll": 20})["x"], half["x"])
    fast = {"num_samples": 100, "generator": "fast", "cache": False}
    assert np.array_equal(D.generate({**fast, "roll": 5})["x"], np.roll(D.generate(fast)["x"], 5, axis=1))


def test_roll_range_and_cache_key():
    assert D.cache_key({"roll": 20}) != D.cache_key({"roll": 0}) != D.cache_key({"roll": -20})
    D.validate({"roll": 39})
    D.validate({"roll": -39})
    D.validate({"roll": np.int64(7)})
    with pytest.raises(ConfigError, match=r"^data\.roll=17: .*final_seq_length") as e:
        D.validate({"roll": 17, "final_seq_length": 17})
    assert e.value.key == "data.roll"


def test_frozen_source_and_its_shuffle():
    if not FROZEN.is_file():
        pytest.skip(f"frozen dataset not found at {FROZEN}")
    frozen = D.load_frozen(FROZEN)
    split = D.load({"source": "frozen", "path": str(FROZEN)})
    assert torch.equal(split.x, torch.as_tensor(frozen["x"], dtype=torch.float32))
    shuf = D.generate({"source": "frozen", "path": str(FROZEN), "shuffle_seq": True})
    assert np.array_equal(shuf["x"], frozen["x"][:, D.seq_permutation()])
    # the exact generator's shuffled data is the original's (test_exact_matches_reference_for_knobs)
    np.testing.assert_allclose(shuf["x"], D.make_dataset({"shuffle_seq": True})["x"], rtol=0, atol=1e-15)
    rolled = D.generate({"source": "frozen", "path": str(FROZEN), "roll": 20})
    assert np.array_equal(rolled["x_test"], np.roll(frozen["x_test"], 20, axis=1))
    with pytest.raises(ConfigError, match=r"^data\.roll=40: "):  # the file's length bounds the shift
        D.generate({"source": "frozen", "path": str(FROZEN), "roll": 40})


# ---------------------------------------------------------------- cache

def test_cache_roundtrip_and_key(tmp_path):
    cfg = {"num_samples": 200, "seed": 5}
    first = D.load(cfg)
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))
    assert torch.equal(D.load(cfg).x, first.x)
    other = D.load({**cfg, "seed": 6})  # other knobs: another file, other data
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2 and not torch.equal(other.x, first.x)
    explicit = tmp_path / "elsewhere"
    D.load({**cfg, "cache_dir": str(explicit)})
    assert len(list(explicit.glob("*.npz"))) == 1


def test_cache_key_covers_every_knob(monkeypatch):
    base = D.cache_key(None)
    changed = dict(num_samples=5001, train_split=0.7, template_len=13, padding=[36, 61], scale_coeff=0.5,
                   max_translation=47, corr_noise_scale=0.3, iid_noise_scale=0.03, shear_scale=0.7,
                   shuffle_seq=True, final_seq_length=41, seed=43, generator="fast", reverse=True, roll=20)
    keys = {D.cache_key({k: v}) for k, v in changed.items()}
    assert base not in keys and len(keys) == len(changed)
    monkeypatch.setattr("mnist1d_lab.data.config.GENERATOR_VERSION", D.GENERATOR_VERSION + 1)
    assert D.cache_key(None) != base


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_bad_cache_file_is_detected_and_regenerated(tmp_path, caplog, damage):
    cfg = {"num_samples": 100, "seed": 9}
    want = D.load({**cfg, "cache": False}).x
    from mnist1d_lab.data.store import cache_path

    target = cache_path(D.knobs(cfg))
    if damage == "foreign":  # a valid cache file of other knobs, renamed: must not be handed back
        D.load({**cfg, "seed": 10})
        cache_path(D.knobs({**cfg, "seed": 10})).rename(target)
    else:
        D.load(cfg)
        raw = target.read_bytes()
        target.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else raw[:-200] + b"\0" * 200)
    with caplog.at_level(logging.WARNING, logger="mnist1d_lab.data.store"):
        got = D.load(cfg).x
    assert torch.equal(got, want)
    assert any("invalid" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnist1d_lab.data.store"):
        assert torch.equal(D.load(cfg).x, want)  # rewritten: valid again
    assert not caplog.records


# ---------------------------------------------------------------- validation

BAD = [
    ("num_samples", 0), ("num_samples", -5), ("num_samples", 9), ("num_samples", 100.0), ("num_samples", True),
    ("template_len", 0), ("padding", [60, 36]), ("padding", [-1, 5]), ("padding", [36]), ("padding", "36,60"),
    ("train_split", 0.0), ("train_split", 1.0), ("train_split", 1.5), ("train_split", "0.8"),
    ("max_translation", 0), ("final_seq_length", 1), ("corr_noise_scale", -0.1), ("iid_noise_scale", -1),
    ("shear_scale", -0.5), ("scale_coeff", -1), ("shuffle_seq", "yes"), ("seed", -1), ("seed", 1.5),
    ("generator", "slow"), ("source", "web"), ("reverse", 1), ("cache", "no"), ("bogus_knob", 1),
    ("roll", 1.5), ("roll", True), ("roll", "20"), ("roll", 40), ("roll", -40),
]


@pytest.mark.parametrize(("key", "value"), BAD, ids=[f"{k}={v!r}" for k, v in BAD])
def test_impossible_knobs_fail_before_any_work(monkeypatch, key, value):
    def boom(*a, **k):
        raise AssertionError("generation started")

    monkeypatch.setattr(api, "make_exact", boom)
    monkeypatch.setattr(api, "make_fast", boom)
    with pytest.raises(ConfigError) as e:
        D.load({key: value})
    assert e.value.key == f"data.{key}" and "\n" not in str(e.value)


def test_dropin_validates_and_accepts_numpy_scalars():
    with pytest.raises(ConfigError, match=r"^data\.num_samples="):
        D.make_dataset({"num_samples": 0})
    args = D.get_dataset_args()
    args.extra_attribute = "ignored"  # the original ignores unknown attributes: so does the drop-in
    args.num_samples, args.padding = np.int64(100), [np.int64(30), np.int64(40)]
    assert len(D.make_dataset(args)["x"]) == 80 and D.cache_key(vars(args))


def test_error_message_and_frozen_path(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.padding=\[60, 36\]: "):
        D.validate({"padding": [60, 36]})
    for path in (None, str(tmp_path / "missing.pkl"), str(tmp_path)):
        with pytest.raises(ConfigError, match=r"^data\.path="):
            D.validate({"source": "frozen", "path": path})
    D.validate(None)
    D.validate({"num_samples": 10, "train_split": 0.5})


def test_hydra_variants_compose():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf" / "data"), version_base=None):
        for name, want in [("mnist1d", {}), ("shuffled", {"shuffle_seq": True}), ("fast", {"generator": "fast"}),
                           ("frozen", {"source": "frozen"})]:
            cfg = OmegaConf.to_container(compose(config_name=name))
            assert cfg == {**D.DEFAULTS, **want}, name
        small = compose(config_name="shuffled", overrides=["num_samples=100"])
    split = D.load(small)
    assert split.input_len == 40 and split.n_train == 80


# ---------------------------------------------------------------- interop

def test_datasplit_dataset_and_npz(tmp_path):
    split = D.load({"num_samples": 100})
    assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
    assert (split.n_train, split.input_len, len(split.x_test)) == (80, 40, 20)
    moved = split.to("cpu")
    assert torch.equal(moved.x, split.x) and moved.t is split.t
    train, test = D.MNIST1D(split), D.MNIST1D({"num_samples": 100}, train=False)
    assert len(train) == 80 and len(test) == 20
    x0, y0 = train[0]
    assert x0.shape == (40,) and int(y0) == int(split.y[0])
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=8)))
    assert batch[0].shape == (8, 40)
    out = D.export_npz({"num_samples": 100}, tmp_path / "d.npz")
    with np.load(out) as z:
        assert np.allclose(z["x"], split.x.numpy()) and np.array_equal(z["y_test"], split.y_test.numpy())
        assert z["templates_x"].shape == (10, 12)
    d = D.make_dataset({"num_samples": 50})
    with np.load(D.export_npz(d, tmp_path / "e.npz")) as z:
        assert np.array_equal(z["x"], d["x"])


def test_figure1(tmp_path):
    from mnist1d_lab.figure1 import plot_dataset_construction

    paths = plot_dataset_construction(tmp_path, dpi=60)
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    assert all(p.is_file() and p.stat().st_size > 5000 for p in paths)
