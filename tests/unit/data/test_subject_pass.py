"""Per-subject writing (`write_subject` + `finish_store`) equals `write_store`; stacking
runs copies straight to sorted rows; the scaler sees training epochs only; the driver's
metadata-only cache read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from megdecode.data import runcache
from megdecode.data import store as epoch_store
from megdecode.data.preprocess import EpochBlock, PreprocessConfig
from megdecode.data.scaling import apply_scaler, fit_robust_scaler
from megdecode.data.subject_pass import concat_blocks, scale_subject, stack_order

C, T = 3, 7
CH = [f"MLC{i}1-1609" for i in range(C)]


def block(
    subject: str, session: str, run: str, n: int, seed: int, first_trial: int = 0
) -> EpochBlock:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, C, T)).astype(np.float32)
    data[0, 0, :3] = [-0.0, np.float32(1e-45), np.nan]  # values a lossy path would change
    meta = pd.DataFrame({
        "subject": subject, "session": session, "run": run, "trial_index": first_trial + np.arange(n),
        "image_id": 10 + np.arange(n), "category_id": np.arange(n) % 2, "category": "cat",
        "trial_type": "exp", "image_path": "images_meg/cat/cat_01b.png",
        "split": np.where(np.arange(n) % 3 == 0, "test", "train"), "repetition": 0,
        "onset_sample": 100 * np.arange(n),
    })  # fmt: skip
    return EpochBlock(data, meta, list(CH), 100.0, -0.02, np.zeros((C, 2)), np.ones((C, 3)))


def test_subject_parts_write_the_bytes_of_write_store(tmp_path: Path) -> None:
    blocks = [block("BIGMEG1", "01", "01", 9, 0), block("BIGMEG2", "01", "01", 6, 1)]
    scalers = {"BIGMEG1": {"center": [0.0] * C}, "BIGMEG2": {"center": [1.0] * C}}
    whole = epoch_store.write_store(
        tmp_path / "whole", blocks, scalers=scalers, rows_per_file=4, row_group_rows=3
    )
    with epoch_store.staged_store(tmp_path / "parts") as staging:
        parts = [
            epoch_store.write_subject(staging, b, rows_per_file=4, row_group_rows=3)
            for b in blocks[::-1]
        ]
        parted = epoch_store.finish_store(staging, parts, scalers=scalers)
    assert parted.files == whole.files and parted.counts == whole.counts
    assert parted.subjects == whole.subjects and parted.scalers == whole.scalers
    assert epoch_store.verify_store(tmp_path / "parts").files == whole.files
    assert json.loads((tmp_path / "parts" / epoch_store.MANIFEST).read_text())["subjects"] == [
        "BIGMEG1",
        "BIGMEG2",
    ]


def test_finish_store_refuses_parts_that_do_not_match(tmp_path: Path) -> None:
    with epoch_store.staged_store(tmp_path / "store") as staging:
        first = epoch_store.write_subject(staging, block("BIGMEG1", "01", "01", 4, 0))
        other = dataclasses.replace(block("BIGMEG2", "01", "01", 4, 1), ch_names=CH[::-1])
        second = epoch_store.write_subject(staging, other)
        with pytest.raises(epoch_store.StoreError, match="BIGMEG2 cannot share") as reordered:
            epoch_store.finish_store(staging, [first, second])
        assert f"same {C} in another order (first at index 0" in str(reordered.value)
        full = block("BIGMEG3", "01", "01", 4, 1)
        fewer = dataclasses.replace(
            full,
            ch_names=CH[:-1],
            data=full.data[:, :-1],
            pos2d=full.pos2d[:-1],
            pos3d=full.pos3d[:-1],
        )
        third = epoch_store.write_subject(staging, fewer)
        with pytest.raises(epoch_store.StoreError, match=f"lacks {CH[-1]}"):
            epoch_store.finish_store(staging, [first, third])
        with pytest.raises(epoch_store.StoreError, match="written twice"):
            epoch_store.finish_store(staging, [first, first])
        with pytest.raises(epoch_store.StoreError, match="one subject per block"):
            two = block("BIGMEG1", "01", "01", 4, 2)
            two.metadata.loc[0, "subject"] = "BIGMEG3"
            epoch_store.write_subject(staging, two)


def test_staged_store_leaves_nothing_on_failure(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="task failed"),
        epoch_store.staged_store(tmp_path / "store") as staging,
    ):
        epoch_store.write_subject(staging, block("BIGMEG1", "01", "01", 4, 0))
        raise RuntimeError("task failed")
    assert list(tmp_path.iterdir()) == []


def test_concat_blocks_equals_concatenate_then_reorder() -> None:
    # runs arriving out of recording order, one of them with later trials first
    runs = [block("BIGMEG1", "02", "01", 5, 0), block("BIGMEG1", "01", "02", 4, 1),
            block("BIGMEG1", "01", "01", 6, 2, first_trial=3)]  # fmt: skip
    runs[2].metadata = runs[2].metadata.iloc[::-1].reset_index(drop=True)
    runs[2].data = runs[2].data[::-1].copy()
    stacked = concat_blocks(runs)
    meta = pd.concat([b.metadata for b in runs], ignore_index=True)
    order = meta.sort_values(["session", "run", "trial_index"], kind="stable").index.to_numpy()
    reference = np.concatenate([b.data for b in runs])[order]
    assert np.array_equal(stacked.data.view(np.uint32), reference.view(np.uint32))
    assert stacked.metadata.equals(meta.loc[order].reset_index(drop=True))
    assert stacked.metadata.equals(stack_order([b.metadata for b in runs])[0])
    assert stacked.metadata[["session", "run"]].drop_duplicates().values.tolist() == [
        ["01", "01"], ["01", "02"], ["02", "01"]]  # fmt: skip


def test_scale_subject_fits_the_scaler_on_the_training_epochs_only() -> None:
    """The subject pass of a store build (`scale_and_write` calls `scale_subject`): val and
    test epochs are shifted and widened far from the training ones, so a scaler fitted on
    every epoch would differ in both centre and scale."""
    b = block("BIGMEG1", "01", "01", 12, 0)
    b.data[0, 0, 2] = 0.5  # the NaN of `block` would stop any scaler
    split = np.array(["train", "val", "test"] * 4)
    b.metadata["split"] = split
    b.data[split != "train"] = 50.0 + 10.0 * b.data[split != "train"]
    cfg = PreprocessConfig(clip=5.0)
    scaled, scaler = scale_subject(b, cfg)
    reference = fit_robust_scaler(b.data[split == "train"], cfg.quantile_range)
    np.testing.assert_array_equal(scaler.center, reference.center)
    np.testing.assert_array_equal(scaler.scale, reference.scale)
    np.testing.assert_array_equal(scaled.data, apply_scaler(b.data, reference, cfg.clip))
    # training epochs centred per channel; the held-out ones clipped at the top
    train = scaled.data[split == "train"].transpose(1, 0, 2).reshape(C, -1)
    np.testing.assert_allclose(np.median(train, axis=1), 0.0, atol=1e-6)
    assert (scaled.data[split != "train"] == cfg.clip).mean() > 0.9
    b.metadata["split"] = "test"
    with pytest.raises(ValueError, match="BIGMEG1 has no training epochs"):
        scale_subject(b, cfg)


def test_stack_order_puts_run_2_before_run_10() -> None:
    runs = [block("BIGMEG1", "1", "10", 2, 0), block("BIGMEG1", "1", "2", 3, 1),
            block("BIGMEG1", "2", "1", 2, 2)]  # fmt: skip
    metadata, order = stack_order([b.metadata for b in runs])
    assert metadata[["session", "run"]].drop_duplicates().values.tolist() == [
        ["1", "2"], ["1", "10"], ["2", "1"]]  # fmt: skip
    np.testing.assert_array_equal(order, [2, 3, 4, 0, 1, 5, 6])


def test_load_metadata_checks_the_table_checksum(tmp_path: Path) -> None:
    b = block("BIGMEG1", "01", "01", 5, 0)
    stem = tmp_path / "run"
    runcache.save_block(b, stem, "src")
    meta = runcache.load_metadata(stem)
    assert meta is not None and meta.equals(b.metadata)
    table = stem.with_suffix(".parquet")
    table.write_bytes(table.read_bytes()[:-10])  # truncated: checksum mismatch
    assert runcache.load_metadata(stem) is None
    stem.with_suffix(".json").unlink()
    assert runcache.load_metadata(stem) is None
