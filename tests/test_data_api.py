"""The drop-in API (make_dataset, get_dataset, get_dataset_args): knobs read from any object, the
original's pickle format and caching behaviour, and a script for the original package run against both."""

from __future__ import annotations

import argparse
import logging
import pickle
import socket
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from test_data import FROZEN  # the frozen pickle's location (skips cleanly when it is absent)

from mnist1d_lab import data as D
from mnist1d_lab.data import api
from mnist1d_lab.errors import ConfigError

pytest.importorskip("mnist1d.data")  # the original package is the oracle
ORIGINAL_KEYS = ["x", "x_test", "y", "y_test", "t", "templates"]
KNOBS = {"num_samples": 200, "seed": 3, "shear_scale": 0.5}  # small and clearly not the defaults


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Cache in a tmp folder, work in another (nothing may land there), and no network at all."""
    monkeypatch.setenv("MNIST1D_LAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    def no_network(*a, **k):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(api, "_said_built_locally", False)


def _full(**over) -> dict:
    return {**D.get_dataset_args(as_dict=True), **KNOBS, **over}


def _same(a: dict, b: dict, atol: float = 0.0) -> None:
    for k in ("y", "y_test"):
        assert np.array_equal(a[k], b[k]), k
    for k in ("x", "x_test", "t"):
        assert a[k].shape == b[k].shape, k
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=k)


# ---------------------------------------------------------------- knobs from any object

class ClassKnobs:  # knobs as class attributes: the class itself and its instances must both work
    num_samples, train_split, template_len, padding, scale_coeff = 200, 0.8, 12, [36, 60], 0.4
    max_translation, corr_noise_scale, iid_noise_scale, shear_scale = 48, 0.25, 0.02, 0.5
    shuffle_seq, final_seq_length, seed = False, 40, 3
    url = "ignored"


def _holders():
    full = _full()
    from mnist1d.utils import ObjectView as OriginalView

    ns = argparse.ArgumentParser().parse_args([])
    for k, v in full.items():
        setattr(ns, k, v)
    ns.lr = 0.01  # a training script's own arguments are ignored
    return {"dict": full, "argparse": ns, "original ObjectView": OriginalView(dict(full)),
            "our ObjectView": D.ObjectView(dict(full)), "SimpleNamespace": SimpleNamespace(**full),
            "class": ClassKnobs, "instance": ClassKnobs(), "subclass instance": type("Sub", (ClassKnobs,), {})()}


@pytest.mark.parametrize("kind", list(_holders()))
def test_make_dataset_reads_knobs_from_any_holder(kind):
    want = D.make_dataset(KNOBS)
    got = D.make_dataset(_holders()[kind])
    assert len(got["x"]) == 160  # 200 examples, not the default 5000
    _same(got, want)
    assert D.cache_key(_holders()[kind]) == D.cache_key(KNOBS)


def test_unreadable_object_raises_and_partial_one_warns():
    for thing in (object(), 5, "num_samples=200", type("Empty", (), {})):
        with pytest.raises(ConfigError, match=r"^data=.*knobs as attributes") as e:
            D.make_dataset(thing)
        assert e.value.key == "data"
    with pytest.warns(UserWarning, match=r"no attribute\(s\) \['train_split'"):
        got = D.make_dataset(SimpleNamespace(num_samples=200, seed=3, shear_scale=0.5))
    _same(got, D.make_dataset(KNOBS))
    with pytest.raises(ConfigError, match=r"^data\.num_samples="):  # values are validated whatever holds them
        D.make_dataset(SimpleNamespace(**_full(num_samples=-1)))


def test_make_dataset_honours_lab_knobs():
    plain = D.make_dataset(KNOBS)
    rolled = D.make_dataset(SimpleNamespace(**_full(roll=20, reverse=True)))
    assert np.array_equal(rolled["x"], np.roll(plain["x"][:, ::-1], 20, axis=1))
    fast = D.make_dataset({**KNOBS, "generator": "fast"})
    assert fast["x"].dtype == np.float32 and len(fast["x"]) == 160
    with pytest.raises(ConfigError, match=r"^template="):
        D.make_dataset({**KNOBS, "generator": "fast"}, template=D.get_templates())


def test_exports_cover_the_originals_supported_names():
    import mnist1d
    import mnist1d.data

    unsupported = {"set_seed", "plot_signals", "transform"}  # global RNG, plotting, per-example transform
    names = {n for n in (*dir(mnist1d), *dir(mnist1d.data)) if not n.startswith("_")}
    original_api = {n for n in names if callable(getattr(mnist1d, n, None) or getattr(mnist1d.data, n, None))}
    original_api -= {"np", "os", "requests", "mnist1d"} | unsupported
    assert original_api <= set(D.__all__), original_api - set(D.__all__)
    D.to_pickle({"a": 1}, "thing.pkl")
    assert D.from_pickle("thing.pkl") == {"a": 1}


# ---------------------------------------------------------------- get_dataset

def test_get_dataset_writes_and_reads_the_originals_pickle(caplog):
    from mnist1d.utils import from_pickle as original_from_pickle

    with caplog.at_level(logging.INFO, logger="mnist1d_lab.data.api"):
        built = D.get_dataset(SimpleNamespace(**_full()), path="small.pkl", download=False)
    assert any("saved to small.pkl" in r.getMessage() for r in caplog.records)
    raw = original_from_pickle("small.pkl")  # the original reads our file
    assert list(raw) == ORIGINAL_KEYS and set(raw["templates"]) == {"x", "t", "y"}
    _same(raw, built)
    again = D.get_dataset(_full(), path="small.pkl", download=False)
    _same(again, built)
    assert not (built["x"] == D.make_dataset(_full(seed=4))["x"]).all()


def test_get_dataset_default_path_is_the_lab_cache(tmp_path):
    first = D.get_dataset(_full())
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing in the working directory
    assert len(list((tmp_path / "cache").glob("mnist1d_*.npz"))) == 1
    _same(D.get_dataset(_full()), first)
    assert np.array_equal(D.load(KNOBS).x.numpy(), first["x"].astype(np.float32))  # load() uses that file too
    assert len(list((tmp_path / "cache").glob("mnist1d_*.npz"))) == 1
    _same(D.get_dataset(_full(), regenerate=True), first)
    other = D.get_dataset(_full(num_samples=300))  # other args: another cache entry, never a stale one
    assert len(other["x"]) == 240 and len(list((tmp_path / "cache").glob("mnist1d_*.npz"))) == 2


def test_download_builds_locally_and_says_so_once(caplog):
    with caplog.at_level(logging.WARNING, logger="mnist1d_lab.data.api"):
        d = D.get_dataset(_full(), path="a.pkl")  # download=True: the original would fetch here
        D.get_dataset(_full(), path="b.pkl")
        D.get_dataset(_full(), path="a.pkl")  # present: read, nothing built
    said = [r for r in caplog.records if "never downloads" in r.getMessage()]
    assert len(said) == 1
    _same(d, D.make_dataset(KNOBS))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnist1d_lab.data.api"):
        D.get_dataset(_full(), path="c.pkl", regenerate=True)  # accepted (the original asserted)
    assert not caplog.records


def test_stale_file_is_returned_with_a_warning(caplog):
    old = D.get_dataset(_full(), path="data.pkl", download=False)
    with caplog.at_level(logging.WARNING, logger="mnist1d_lab.data.api"):
        got = D.get_dataset(_full(num_samples=300), path="data.pkl", download=False)
    _same(got, old)  # the original's behaviour: the file wins
    msgs = [r.getMessage() for r in caplog.records]
    assert any("data.pkl" in m and "num_samples=300" in m and "regenerate=True" in m for m in msgs), msgs
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnist1d_lab.data.api"):
        new = D.get_dataset(_full(num_samples=300), path="data.pkl", download=False, regenerate=True)
        D.get_dataset(_full(num_samples=300), path="data.pkl", download=False)
    assert len(new["x"]) == 240 and not caplog.records


def test_a_file_that_is_no_dataset_is_not_overwritten(tmp_path):
    bad = tmp_path / "cwd" / "notes.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match=r"^path=.*regenerate=True") as e:
        D.get_dataset(_full(), path=bad)
    assert e.value.key == "path" and bad.read_bytes() == b"not a pickle"
    with open(bad, "wb") as fh:
        pickle.dump([1, 2], fh)
    with pytest.raises(ConfigError, match=r"^path="):
        D.get_dataset(_full(), path=bad)
    D.get_dataset(_full(), path=bad, regenerate=True)
    assert len(D.from_pickle(bad)["x"]) == 160


def test_get_dataset_reads_the_frozen_pickle():
    if not FROZEN.is_file():
        pytest.skip(f"frozen dataset not found at {FROZEN} (set MNIST1D_REFERENCE_DIR)")
    d = D.get_dataset(D.get_dataset_args(), path=FROZEN)
    assert list(d) == ORIGINAL_KEYS and d["x"].shape == (4000, 40)
    _same(D.make_dataset(), d, atol=1e-15)


# ---------------------------------------------------------------- a script for the original, run on both

SCRIPT = textwrap.dedent("""
    {import_line}
    args = get_dataset_args()
    args.num_samples = 600
    args.seed = 7
    data = make_dataset(args)
    saved = get_dataset(args, path="mnist1d_small.pkl", download=False)
    loaded = get_dataset(args, path="mnist1d_small.pkl", download=False)
    args.shuffle_seq = True
    shuffled = get_dataset(args, path="mnist1d_shuffled.pkl", download=False, regenerate=True)
    result = dict(data=data, saved=saved, loaded=loaded, shuffled=shuffled)
""")


def _run_script(import_line: str, folder) -> tuple[dict, dict]:
    folder.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        scope: dict = {}
        exec(compile(SCRIPT.format(import_line=import_line), "original_script.py", "exec"), scope)  # noqa: S102
        files = {name: D.from_pickle(folder / name) for name in ("mnist1d_small.pkl", "mnist1d_shuffled.pkl")}
    return scope["result"], files


def test_a_script_for_the_original_runs_with_only_its_import_changed(tmp_path, capsys):
    theirs, their_files = _run_script("from mnist1d.data import get_dataset_args, make_dataset, get_dataset",
                                      tmp_path / "original")
    ours, our_files = _run_script("from mnist1d_lab.data import get_dataset_args, make_dataset, get_dataset",
                                  tmp_path / "lab")
    for name in theirs:  # shapes, labels exactly, x within 1e-15 (in fact equal in one process)
        _same(ours[name], theirs[name], atol=1e-15)
        assert list(ours[name]) == list(theirs[name]) == ORIGINAL_KEYS, name
    assert len(ours["data"]["x"]) == 480
    assert not np.array_equal(ours["shuffled"]["x"], ours["data"]["x"])
    for name in their_files:  # the files on disk have the same format and content
        assert list(our_files[name]) == list(their_files[name]) == ORIGINAL_KEYS
        _same(our_files[name], their_files[name], atol=1e-15)
