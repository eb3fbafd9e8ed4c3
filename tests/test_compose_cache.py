"""The lab sweeper's ComposeCache: the cached configs equal Hydra's own, the cache survives pickling
within one sweep, and without the Hydra internals it leans on it falls back to Hydra's public
composition (one warning) with the same configs."""

from __future__ import annotations

import contextlib
import logging
import pickle

import pytest
from omegaconf import OmegaConf

JOB = ["model=mlp", "model.width=7", "seed=3"]


@contextlib.contextmanager
def hydra_loader():
    """(Hydra's config loader, a joblib multirun's master config, the compose_cache module)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from mnist1d_lab.__main__ import register_plugins

    register_plugins()
    with initialize_config_module("mnist1d_lab.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "config", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"], RunMode.MULTIRUN)
        # imported after Hydra's plugin scan, which imports the module anew (pickle needs that class)
        from hydra_plugins.mnist1d_lab_launcher import compose_cache

        yield loader, master, compose_cache


def task_part(full):
    """The config without its `hydra` node, as the task function sees it."""
    return OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])


@pytest.mark.parametrize(("sweep_overrides", "bad"), [
    (JOB, False),
    (["experiment=double_descent", "model=cnn", "model.channels=5", "train.label_noise=0.15"], False),
    (["data.shear_scale=0.75", "data.corr_noise_scale=0.25", "+tag=x"], False),
    (["model.width=3"], True),  # not a key of the default model (cnn): Hydra's error
])
def test_cached_composition_equals_hydras(sweep_overrides, bad, caplog):
    """The cache gives the config Hydra composes from scratch, key for key, by its fast path."""
    from hydra.errors import ConfigCompositionException

    with hydra_loader() as (loader, master, cc):
        cache = cc.ComposeCache(loader)
        for _ in range(2):  # the first call checks itself against Hydra's composition, the second does not
            if bad:
                with pytest.raises(ConfigCompositionException):
                    loader.load_sweep_config(master, sweep_overrides)
                with pytest.raises(ConfigCompositionException):
                    cache.load_sweep_config(master, sweep_overrides)
                with pytest.raises(ConfigCompositionException):
                    cache.task_config(master, sweep_overrides)
                assert cache._checks == {}  # a bad job is no reason to distrust the cache
                return
            full = loader.load_sweep_config(master, sweep_overrides)
            assert OmegaConf.to_yaml(cache.load_sweep_config(master, sweep_overrides)) == OmegaConf.to_yaml(full)
            assert OmegaConf.to_yaml(cache.task_config(master, sweep_overrides)) == OmegaConf.to_yaml(task_part(full))
        assert cache._checks == {"task": "fast", "sweep": "fast"}  # served by the fast path, not the fallback
        assert len(cache._bases) == 1  # composed once
    assert "compose cache" not in caplog.text


def test_compose_cache_outlives_pickling_within_one_sweep():
    """joblib pickles the loader anew with every job: a worker keeps the sweep's cache between jobs,
    and a loader of another sweep starts empty."""
    with hydra_loader() as (loader, master, cc):
        full = OmegaConf.to_yaml(loader.load_sweep_config(master, JOB))
        cache = cc.ComposeCache(loader)
        cache.load_sweep_config(master, JOB)
        copy = pickle.loads(pickle.dumps(cache))  # the next job's loader in the same worker
        assert copy._bases is cache._bases and len(copy._bases) == 1 and copy._checks == {"sweep": "fast"}
        assert OmegaConf.to_yaml(copy.load_sweep_config(master, [*JOB[:2], "seed=4"])) == full.replace(
            "seed: 3", "seed: 4").replace("seed=3", "seed=4")
        assert len(cache._bases) == 1  # served from the cache, not composed again
        other = cc.ComposeCache(loader)  # another sweep: its own, empty cache
        assert other._bases == {} and other._checks == {} and other.token != cache.token
        again = pickle.loads(pickle.dumps(cache))  # the first job in a worker: the cache came with it
        assert again._bases is not cache._bases and list(again._bases) == list(cache._bases)
        assert again._checks == {"sweep": "fast"}
        assert OmegaConf.to_yaml(again.load_sweep_config(master, JOB)) == full and len(again._bases) == 1


class NoRepository:
    """Hydra's loader without its `repository` attribute (as if a release renamed it); its own methods work."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name == "repository":
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.mark.parametrize("broken", ["internals missing", "repository missing", "apply does nothing"])
def test_without_hydra_internals_the_cache_falls_back_to_hydras_composition(broken, monkeypatch, caplog):
    with hydra_loader() as (loader, master, cc):
        if broken == "internals missing":
            def gone(inner):
                raise AttributeError("module 'hydra._internal.config_loader_impl' has no attribute 'x'")

            monkeypatch.setattr(cc, "_hydra_internals", gone)
        elif broken == "apply does nothing":  # present, but no longer applies the overrides
            real = cc._hydra_internals
            monkeypatch.setattr(cc, "_hydra_internals", lambda inner: (real(inner)[0], lambda o, c: None,
                                                                       real(inner)[2]))
        monkeypatch.setattr(cc, "_WARNED", False)
        cache = cc.ComposeCache(NoRepository(loader) if broken == "repository missing" else loader)
        with caplog.at_level(logging.WARNING, logger=cc.__name__):
            for seed in (3, 4):
                job = [*JOB[:2], f"seed={seed}"]
                full = loader.load_sweep_config(master, job)
                assert OmegaConf.to_yaml(cache.task_config(master, job)) == OmegaConf.to_yaml(task_part(full))
                assert OmegaConf.to_yaml(cache.load_sweep_config(master, job)) == OmegaConf.to_yaml(full)
        assert cache._checks == {"task": "public", "sweep": "public"}
        warnings = [r for r in caplog.records if "composing every job with Hydra's load_sweep_config" in r.message]
        assert len(warnings) == 1  # one line, however many jobs
        if broken != "apply does nothing":
            assert cache._bases == {}  # the fast path never got as far as composing a base

