"""Serve tests: a causal-filter twin store, a tiny bundle trained on it, one Serve per module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import train_bundle


@pytest.fixture(scope="session")
def causal_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny twin's BIDS band-passed 0.1-40 Hz ("things-official") with
    filter_phase="causal" (what the stream computes), so the online filter is exercised."""
    from megdecode.data.build import build_epoch_store
    from megdecode.data.preprocess import PreprocessConfig

    root = tmp_path_factory.mktemp("causal_run")
    cfg = PreprocessConfig(preset="things-official", filter_phase="causal")
    build_epoch_store(tiny_run / "bids", root / "store", cfg)
    shutil.copytree(tiny_run / "latents", root / "latents")
    (root / "bids").symlink_to(tiny_run / "bids")
    return root


@pytest.fixture(scope="session")
def tiny_bundle(causal_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch brain module on the causal store, window 0..0.5 s."""
    return train_bundle(causal_run, tmp_path_factory.mktemp("bundle") / "b0")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A private loopback Ray for this module (never a bare `ray stop`)."""
    import ray
    from ray import serve

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=2)
    try:
        yield
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
