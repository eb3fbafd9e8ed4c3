"""Figure 10: the MNIST file loader (IDX and .npz files written here) and the t-SNE experiment at small size."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import compose_cfg

from mnist1d_lab.context import RunContext
from mnist1d_lab.errors import ConfigError
from mnist1d_lab.mnist_files import load_mnist, read_idx


def write_idx(path: Path, a: np.ndarray, code: int = 0x08) -> Path:
    """An IDX file: magic 0 0 <type> <ndim>, big-endian uint32 dims, big-endian data (gzip for .gz)."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def fake_mnist(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images of 10 well-separated blobs (one bright square per class) and their labels."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = g.integers(0, 30, size=(n, 28, 28))
    for i, c in enumerate(y):
        r, col = divmod(int(c), 5)
        x[i, 4 + 10 * r:12 + 10 * r, 1 + 5 * col:5 + 5 * col] = 255
    return x.astype(np.uint8), y.astype(np.uint8)


def test_read_idx_roundtrip_plain_and_gz(tmp_path):
    x, y = fake_mnist(12)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx3-ubyte", x)), x)
    assert np.array_equal(read_idx(write_idx(tmp_path / "b-idx1-ubyte.gz", y)), y)
    ints = np.array([[-5, 70000], [3, 1]])
    assert np.array_equal(read_idx(write_idx(tmp_path / "c-ubyte", ints, 0x0C)), ints)
    floats = np.array([0.5, -2.25], dtype=np.float32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "d-ubyte", floats, 0x0D)), floats)


def test_read_idx_rejects_foreign_and_truncated_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ConfigError, match="IDX"):
        read_idx(tmp_path / "junk")
    path = write_idx(tmp_path / "t-idx3-ubyte", fake_mnist(5)[0])
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ConfigError, match="fills its shape"):
        read_idx(path)


def test_load_mnist_from_idx_folder_train_and_test(tmp_path):
    (xa, ya), (xb, yb) = fake_mnist(20, 1), fake_mnist(7, 2)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xa)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", ya)
    write_idx(tmp_path / "t10k-images.idx3-ubyte", xb)  # the other common spelling, uncompressed
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", yb)
    x, y = load_mnist(tmp_path)
    assert x.shape == (27, 784) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(y, np.concatenate([ya, yb]))  # train rows first, then test rows
    assert np.allclose(x[20], xb[0].reshape(-1) / 255.0) and x.max() == 1.0 and x.min() >= 0.0


def test_load_mnist_train_only_folder_and_missing_labels(tmp_path):
    x, y = fake_mnist(10)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    with pytest.raises(ConfigError, match="train-labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    assert load_mnist(tmp_path)[0].shape == (10, 784)  # the test files are optional


def test_load_mnist_from_npz_like_keras(tmp_path):
    (xa, ya), (xb, yb) = fake_mnist(15, 3), fake_mnist(5, 4)
    np.savez(tmp_path / "mnist.npz", x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    x, y = load_mnist(tmp_path / "mnist.npz")
    assert x.shape == (20, 784) and np.array_equal(y, np.concatenate([ya, yb]))
    np.savez(tmp_path / "other.npz", images=xa)
    with pytest.raises(ConfigError, match="x_train"):
        load_mnist(tmp_path / "other.npz")
    with pytest.raises(ConfigError, match="tsne.mnist_path"):
        load_mnist(tmp_path / "nowhere.bin")


def test_tsne_knobs_are_validated():
    from mnist1d_lab.experiments.tsne import validate

    cfg = compose_cfg("experiment=tsne")
    validate(cfg.tsne)
    for key, value in [("max_iter", 250), ("perplexity", 0), ("max_points", 50), ("mnist_max", 1.5)]:
        bad = compose_cfg("experiment=tsne", f"tsne.{key}={value}")
        with pytest.raises(ConfigError, match=f"tsne.{key}"):
            validate(bad.tsne)


def test_tsne_run_mnist1d_beside_mnist(tmp_path):
    from mnist1d_lab.experiments import tsne

    x, y = fake_mnist(200, 5)
    np.savez(tmp_path / "mnist.npz", x_train=x[:150], y_train=y[:150], x_test=x[150:], y_test=y[150:])
    cfg = compose_cfg("experiment=tsne", "scale=smoke", "tsne.max_iter=300", "tsne.max_points=150",
                      f"tsne.mnist_path={tmp_path / 'mnist.npz'}", "tsne.mnist_max=120",
                      f"data.cache_dir={tmp_path / 'cache'}")
    ctx = RunContext(tmp_path / "run", progress=False)
    result = tsne.run(cfg, ctx)
    s = result.summary
    assert s["tsne_n_mnist1d"] == 150 and s["tsne_total_mnist1d"] == 1000  # scale=smoke: 800 + 200 examples
    assert s["tsne_n_mnist"] == 120 and s["tsne_total_mnist"] == 200
    assert 0 < s["tsne_kl_mnist1d"] < 10 and 0 < s["tsne_kl_mnist"] < 10
    assert "generated" in s["tsne_source_mnist1d"]
    emb = pd.read_csv(ctx.artifact_path("tsne_embedding.csv"))
    assert emb.groupby("dataset").size().to_dict() == {"mnist": 120, "mnist1d": 150}
    assert set(emb["split"]) == {"train", "test"} and emb[["tsne_x", "tsne_y"]].notna().all().all()
    mnist = emb[emb["dataset"] == "mnist"]
    assert np.array_equal(mnist["label"].to_numpy(), y[mnist["row"].to_numpy()])  # rows point at their labels
    for name in ("figure10.png", "figure10.pdf"):
        assert ctx.artifact_path(name).stat().st_size > 1000
    assert ctx.artifact_path("figure10.png").read_bytes()[:4] == b"\x89PNG"
    # the separated fake MNIST clusters better than MNIST-1D: the class medians lie further apart
    spread = {}
    for name, sub in emb.groupby("dataset"):
        med = sub.groupby("label")[["tsne_x", "tsne_y"]].median().to_numpy()
        within = np.mean([np.linalg.norm(g[["tsne_x", "tsne_y"]].to_numpy() - m, axis=1).mean()
                          for (_, g), m in zip(sub.groupby("label"), med, strict=True)])
        spread[name] = np.linalg.norm(med[:, None] - med[None], axis=-1).mean() / within
    assert spread["mnist"] > spread["mnist1d"]


def test_tsne_through_the_entry_point(tmp_path):
    from helpers import run_lab, summaries

    run_lab(tmp_path, "experiment=tsne", "scale=smoke", "tsne.max_iter=300", "tsne.max_points=120")
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    (s,) = summaries(run_dir)
    assert s["status"] == "complete" and s["tsne_n_mnist1d"] == 120 and s["tsne_kl_mnist1d"] > 0
    for name in ("figure10.png", "figure10.pdf", "tsne_embedding.csv"):
        assert (run_dir / "artifacts" / name).is_file(), name
