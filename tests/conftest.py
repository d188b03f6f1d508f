"""Test-wide settings: offline hubs, no Ray usage stats, quiet progress bars."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MEGDECODE_PROGRESS", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one thread: test tensors are tiny, OpenMP hand-offs cost
    more than the work (several times more on a busy 2-core machine). Ray workers (Tune
    trials, Serve replicas) are other processes and set their own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """The tiny twin simulated, preprocessed to a store, with handcrafted latents.

    Built once per test session (about 15 s); tests must not modify it.
    """
    from megdecode.data.build import build_epoch_store
    from megdecode.data.simulate import TwinConfig, simulate
    from megdecode.latents.registry import build_latents, make_encoder

    root = tmp_path_factory.mktemp("tiny_run")
    simulate(TwinConfig.preset("tiny", seed=0), root / "bids")
    build_epoch_store(root / "bids", root / "store")
    build_latents(root / "store", root / "bids", root / "latents", make_encoder("handcrafted"))
    return root
