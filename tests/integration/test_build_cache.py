"""Rerunning the preprocessing stage reuses finished runs and rebuilds broken ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megdecode.data import store as epoch_store
from megdecode.data.build import build_epoch_store


def test_rerun_reuses_valid_runs_and_rebuilds_corrupt_or_partial_ones(
    tiny_run: Path, tmp_path: Path
) -> None:
    bids_root, cache = tiny_run / "bids", tmp_path / "cache"
    first = build_epoch_store(bids_root, tmp_path / "a", cache_dir=cache)
    assert first.n_runs_reused == 0
    X0, meta0 = epoch_store.load_epochs(tmp_path / "a")

    second = build_epoch_store(bids_root, tmp_path / "b", cache_dir=cache)
    assert second.n_runs_reused == first.n_runs
    X1, meta1 = epoch_store.load_epochs(tmp_path / "b")
    assert np.array_equal(X0, X1) and meta0.equals(meta1)

    arrays = sorted(cache.glob("*.npz"))
    raw = bytearray(arrays[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte: checksum mismatch
    arrays[0].write_bytes(bytes(raw))
    sorted(cache.glob("*.json"))[1].unlink()  # a run whose commit marker never got written
    third = build_epoch_store(bids_root, tmp_path / "b", cache_dir=cache)  # overwrites b
    assert third.n_runs_reused == first.n_runs - 2
    X2, meta2 = epoch_store.load_epochs(tmp_path / "b")
    assert np.array_equal(X0, X2) and meta0.equals(meta2)
    epoch_store.verify_store(tmp_path / "b")


def test_a_changed_config_does_not_reuse_the_cache(tiny_run: Path, tmp_path: Path) -> None:
    from megdecode.data.preprocess import PreprocessConfig

    cache = tmp_path / "cache"
    build_epoch_store(tiny_run / "bids", tmp_path / "a", cache_dir=cache)
    other = build_epoch_store(
        tiny_run / "bids", tmp_path / "b", cache_dir=cache, preprocess=PreprocessConfig(h_freq=30.0)
    )
    assert other.n_runs_reused == 0


def test_rewritten_input_files_invalidate_the_cache(tmp_path: Path) -> None:
    """A dataset simulated again (new files) must not reuse epochs of the old one."""
    from megdecode.twin.config import TwinConfig
    from megdecode.twin.simulate import simulate

    cfg = TwinConfig.preset("tiny", seed=0).replace(n_subjects=1, n_sessions=2, n_runs=1)
    simulate(cfg, tmp_path / "bids")
    cache = tmp_path / "cache"
    build_epoch_store(tmp_path / "bids", tmp_path / "a", cache_dir=cache)
    simulate(cfg.replace(seed=1), tmp_path / "bids")
    again = build_epoch_store(tmp_path / "bids", tmp_path / "b", cache_dir=cache)
    assert again.n_runs_reused == 0
    X_a, _ = epoch_store.load_epochs(tmp_path / "a")
    X_b, _ = epoch_store.load_epochs(tmp_path / "b")
    assert not np.array_equal(X_a, X_b)
