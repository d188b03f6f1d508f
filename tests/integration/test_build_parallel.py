"""The per-subject second pass (scale + write in one task per subject) writes the store
the driver-side serial pass wrote, byte for byte, locally and on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from megdecode.data import bids, runcache
from megdecode.data import store as epoch_store
from megdecode.data.build import build_epoch_store
from megdecode.data.preprocess import EpochBlock, PreprocessConfig
from megdecode.data.splits import SplitConfig, assign_splits
from megdecode.data.subject_pass import raw_sfreq, scale_subject


def _serial_reference(root: Path, cache: Path, out: Path) -> epoch_store.Manifest:
    """The pass as the driver ran it before: load every run, stack with a concatenate and a
    reorder, split, scale, one `write_store` call."""
    cfg, split = PreprocessConfig(), SplitConfig()
    keys = bids.find_runs(root)
    by_subject: dict[str, list[EpochBlock]] = {}
    for key in keys:
        block = runcache.load_block(runcache.cache_stem(cache, key, cfg))
        assert block is not None
        by_subject.setdefault(str(key.subject), []).append(block)
    stacked = []
    for subject in sorted(by_subject):
        blocks = by_subject[subject]
        meta = pd.concat([b.metadata for b in blocks], ignore_index=True)
        order = meta.sort_values(["session", "run", "trial_index"], kind="stable").index.to_numpy()
        data = np.concatenate([b.data for b in blocks])[order]
        first = blocks[0]
        stacked.append(
            EpochBlock(
                data,
                meta.loc[order].reset_index(drop=True),
                first.ch_names,
                first.sfreq,
                first.tmin,
                first.pos2d,
                first.pos3d,
            )
        )
    metadata = assign_splits(pd.concat([b.metadata for b in stacked], ignore_index=True), split)
    lo, scaled, scalers = 0, [], {}
    for block in stacked:
        block.metadata = metadata.iloc[lo : lo + len(block.metadata)].reset_index(drop=True)
        lo += len(block.metadata)
        out_block, scaler = scale_subject(block, cfg)
        subject = str(block.metadata["subject"].iloc[0])
        first = next(k for k in keys if str(k.subject) == subject)
        scalers[subject] = scaler.to_dict() | {"raw_sfreq": raw_sfreq(root, first)}
        scaled.append(out_block)
    return epoch_store.write_store(
        out, scaled, preprocess_config=cfg, split_config=split, scalers=scalers
    )


def _same_store(a: epoch_store.Manifest, b: epoch_store.Manifest) -> None:
    assert a.files == b.files  # paths, rows and sha256 of every shard: the same bytes
    # The serial reference's single `write_store` call records no per-subject drop counts or
    # compensation grades; `_same_drops` checks the built store's against the cached runs.
    skip = {"created_at", "dropped", "compensation_grade"}
    da, db = json.loads(a.to_json()), json.loads(b.to_json())
    assert {k: v for k, v in da.items() if k not in skip} == {
        k: v for k, v in db.items() if k not in skip
    }


def _same_drops(built: epoch_store.Manifest, root: Path, cache: Path) -> None:
    """The manifest's drop counts are the sums over each subject's cached runs."""
    cfg, expected = PreprocessConfig(), {}
    for key in bids.find_runs(root):
        block = runcache.load_block(runcache.cache_stem(cache, key, cfg))
        assert block is not None
        per = expected.setdefault(str(key.subject), {})
        for reason, n in block.dropped.items():
            per[reason] = per.get(reason, 0) + int(n)
    assert built.dropped == expected
    assert any(n > 0 for per in expected.values() for n in per.values())  # catch trials


def test_local_build_writes_the_serial_reference_bytes(tiny_run: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = build_epoch_store(tiny_run / "bids", tmp_path / "store", cache_dir=cache)
    reference = _serial_reference(tiny_run / "bids", cache, tmp_path / "reference")
    _same_store(epoch_store.verify_store(tmp_path / "store"), reference)
    _same_drops(epoch_store.verify_store(tmp_path / "store"), tiny_run / "bids", cache)
    assert built.n_epochs == reference.n_epochs
    assert set(built.phase_seconds) == {"runs", "splits", "subjects"}
    totals: dict[str, int] = {}
    for per_split in reference.counts.values():
        for name, n in per_split.items():
            totals[name] = totals.get(name, 0) + n
    assert built.split_counts == totals


def _corrupt_between_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flip a byte of one run's cached arrays after the driver planned the subjects."""
    from megdecode.data import build

    real = build._subject_jobs

    def corrupt_then_plan(*args, **kwargs):
        jobs = real(*args, **kwargs)
        arrays = Path(jobs[-1].stems[0]).with_suffix(".npz")
        raw = bytearray(arrays.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        arrays.write_bytes(bytes(raw))
        return jobs

    monkeypatch.setattr(build, "_subject_jobs", corrupt_then_plan)


def test_a_run_corrupted_between_the_passes_fails_and_keeps_the_old_store(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subject task re-checks the run cache; a failure leaves no staging folder and the
    previous store in place."""
    cache, out = tmp_path / "cache", tmp_path / "store"
    build_epoch_store(tiny_run / "bids", out, cache_dir=cache)
    before = epoch_store.verify_store(out)
    _corrupt_between_passes(monkeypatch)
    with pytest.raises(RuntimeError, match="vanished or was corrupted"):
        build_epoch_store(tiny_run / "bids", out, cache_dir=cache)
    assert epoch_store.verify_store(out).files == before.files
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".store")) == []
    monkeypatch.undo()
    again = build_epoch_store(tiny_run / "bids", out, cache_dir=cache)  # the bad run is rebuilt
    assert again.n_runs_reused == again.n_runs - 1
    assert epoch_store.verify_store(out).files == before.files


@pytest.mark.ray
def test_ray_build_equals_local_build(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from megdecode.raycluster import init_ray

    local = build_epoch_store(
        tiny_run / "bids", tmp_path / "local", cache_dir=tmp_path / "cache_local"
    )
    init_ray(num_cpus=2)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        remote = build_epoch_store(
            tiny_run / "bids", tmp_path / "ray", use_ray=True, cache_dir=tmp_path / "cache_ray"
        )
        rerun = build_epoch_store(
            tiny_run / "bids", tmp_path / "ray", use_ray=True, cache_dir=tmp_path / "cache_ray"
        )
        _corrupt_between_passes(monkeypatch)
        with pytest.raises(RuntimeError, match="vanished or was corrupted"):
            build_epoch_store(
                tiny_run / "bids", tmp_path / "ray", use_ray=True, cache_dir=tmp_path / "cache_ray"
            )
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ray.")]
    finally:
        ray.shutdown()
    assert remote.n_epochs == local.n_epochs and remote.split_counts == local.split_counts
    assert rerun.n_runs_reused == rerun.n_runs
    _same_store(
        epoch_store.verify_store(tmp_path / "ray"), epoch_store.verify_store(tmp_path / "local")
    )
    X_ray, meta_ray = epoch_store.load_epochs(tmp_path / "ray")
    X_local, meta_local = epoch_store.load_epochs(tmp_path / "local")
    assert np.array_equal(X_ray.view(np.uint32), X_local.view(np.uint32)) and meta_ray.equals(
        meta_local
    )
