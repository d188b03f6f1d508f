"""Streamed splits (`megdecode.rundata_stream`) against the in-memory `RunData` of the tiny twin.

A buffer that holds a split gives exactly the in-memory batches (same rows, same
permutation from the same generator); a small one reads every row once per pass, holds at
most its size and shuffles otherwise; validation and test predictions come back in store
order; a damaged shard fails the stream naming the file; `fit` on streamed data with a full
buffer is the in-memory run, metric for metric.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.configs import SMALL_BRAIN
from fixtures.stores import flip, last_page_byte
from megdecode.data import store as epoch_store
from megdecode.data.preprocess import EpochBlock
from megdecode.losses import CombinedLoss
from megdecode.rundata import RunData, load_run_data
from megdecode.rundata_stream import StreamConfig, StreamedSplit
from megdecode.search.streamed import StreamedEpochs
from megdecode.train import build_model, fit, predict
from megdecode.train_config import FitConfig, TrainConfig

GROUPS = ("train", "val", "test")
BATCH = 16


@pytest.fixture(scope="module")
def small_groups(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny twin's store rewritten with row groups of 8 rows (the twin's are whole files),
    so a split spans many row groups of mixed splits; latents linked from the twin."""
    store = tiny_run / "store"
    manifest = epoch_store.read_manifest(store)
    run = tmp_path_factory.mktemp("small_groups")
    blocks = []
    for subject in manifest.subjects:
        X, meta = epoch_store.load_epochs(store, subjects=[subject])
        blocks.append(
            EpochBlock(X, meta, list(manifest.ch_names), manifest.sfreq, manifest.tmin,
                       np.asarray(manifest.pos2d), np.asarray(manifest.pos3d))
        )  # fmt: skip
    epoch_store.write_store(
        run / "store", blocks, preprocess_config=manifest.preprocess,
        split_config=manifest.splits, scalers=manifest.scalers, rows_per_file=24,
        row_group_rows=8,
    )  # fmt: skip
    (run / "latents").symlink_to(tiny_run / "latents")
    return run


def _cfg(run: Path, **train: object) -> FitConfig:
    options = {"max_epochs": 2, "batch_size": 32, "patience": 5, "tmin": 0.0, "tmax": 0.5}
    return FitConfig(
        store=str(run / "store"),
        latents_dir=str(run / "latents"),
        model=SMALL_BRAIN,
        train=TrainConfig(**(options | train)),  # type: ignore[arg-type]
    )


def _streamed(cfg: FitConfig, buffer_rows: int) -> RunData[StreamedSplit]:
    source = StreamedEpochs.load(
        cfg.store, cfg.latents_dir, [cfg.train.latent], StreamConfig(buffer_rows)
    )
    return source.run_data(cfg)


def _same_batches(a: list, b: list) -> bool:
    fields = ("meg", "subject", "target", "image")
    return len(a) == len(b) and all(
        torch.equal(getattr(x, f), getattr(y, f)) for x, y in zip(a, b, strict=True) for f in fields
    )


def test_a_buffer_that_holds_the_split_streams_the_in_memory_batches(small_groups: Path) -> None:
    cfg = _cfg(small_groups)
    memory, streamed = load_run_data(cfg), _streamed(cfg, buffer_rows=10_000)
    for group in GROUPS:
        mem, st = getattr(memory, group), getattr(streamed, group)
        assert st.n_times == mem.n_times and torch.equal(st.target, mem.target)
        for seed in (0, 1):
            shuffled = [
                list(split.batches(BATCH, torch.Generator().manual_seed(seed)))
                for split in (mem, st)
            ]
            assert _same_batches(*shuffled), (group, seed)
        assert _same_batches(list(mem.batches(BATCH)), list(st.batches(BATCH))), group
        assert st.reader.rows_read == len(mem.meta)  # read once: a split that fits is kept


def _row_numbers(batches: list, memory_meg: torch.Tensor) -> np.ndarray:
    """The in-memory row of every streamed row, matched by its bytes."""
    where = {row.numpy().tobytes(): i for i, row in enumerate(memory_meg)}
    return np.array([where[row.numpy().tobytes()] for b in batches for row in b.meg])


def test_a_small_buffer_reads_each_row_once_a_pass_and_holds_at_most_the_buffer(
    small_groups: Path,
) -> None:
    cfg = _cfg(small_groups)
    memory, streamed = load_run_data(cfg), _streamed(cfg, buffer_rows=24)
    mem, st = memory.train, streamed.train
    n = len(mem.meta)
    assert n > 24 and len(st.parts) > 3  # several buffers of several row groups
    passes = []
    for _ in range(2):
        before = st.reader.rows_read
        batches = list(st.batches(BATCH, torch.Generator().manual_seed(0)))
        assert st.reader.rows_read - before == n  # each row read once per pass
        rows = _row_numbers(batches, mem.meg)
        assert sorted(rows.tolist()) == list(range(n))  # every row once
        targets = torch.cat([b.target for b in batches])
        assert torch.equal(targets, mem.target[rows])  # each row keeps its latent
        assert torch.equal(torch.cat([b.subject for b in batches]), mem.subject[rows])
        passes.append(rows)
    assert 0 < st.peak_rows <= 24  # the MEG the split held at once
    np.testing.assert_array_equal(passes[0], passes[1])  # deterministic for a seed
    in_memory = _row_numbers(list(mem.batches(BATCH, torch.Generator().manual_seed(0))), mem.meg)
    assert passes[0].tolist() != in_memory.tolist()  # the documented difference
    other = list(st.batches(BATCH, torch.Generator().manual_seed(1)))
    assert _row_numbers(other, mem.meg).tolist() != passes[0].tolist()


def test_a_buffer_below_a_row_group_plus_a_batch_is_refused_with_the_size_it_needs(
    small_groups: Path,
) -> None:
    streamed = _streamed(_cfg(small_groups), buffer_rows=10)
    largest = max(p.kept for p in streamed.train.parts)
    with pytest.raises(ValueError, match=f"at least {largest + BATCH - 1}"):
        next(streamed.train.batches(BATCH, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="stream_buffer_rows"):
        StreamConfig(1)


def test_validation_and_test_predictions_come_back_in_store_order(small_groups: Path) -> None:
    cfg = _cfg(small_groups)
    memory, streamed = load_run_data(cfg), _streamed(cfg, buffer_rows=24)
    torch.manual_seed(0)
    model, loss = build_model(SMALL_BRAIN, memory), CombinedLoss(cfg.loss)
    for group in ("val", "test"):
        expected = predict(model, loss, getattr(memory, group), BATCH)
        got = predict(model, loss, getattr(streamed, group), BATCH)
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_array_equal(a, b)
        assert getattr(streamed, group).peak_rows <= 24


def test_a_damaged_shard_fails_the_stream_naming_the_file(
    small_groups: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_groups / "store", run / "store")
    (run / "latents").symlink_to(small_groups / "latents")
    streamed = _streamed(_cfg(run), buffer_rows=24)  # planned from the intact store
    victim = run / "store" / epoch_store.read_manifest(run / "store").files[1].path
    flip(victim, last_page_byte(victim, "meg"))  # only the page CRC can see it
    with pytest.raises(epoch_store.StoreError, match=str(victim)):
        list(streamed.train.batches(BATCH, torch.Generator().manual_seed(0)))


def test_fit_on_streamed_data_with_a_full_buffer_is_the_in_memory_run(
    small_groups: Path, tmp_path: Path
) -> None:
    cfg = _cfg(small_groups, seed=3)
    memory = fit(cfg, data=load_run_data(cfg))
    streamed = fit(cfg, data=_streamed(cfg, buffer_rows=10_000), out_dir=tmp_path / "bundle")
    timing = {"train_seconds", "train_samples_per_s"}
    assert {k: v for k, v in memory.metrics.items() if k not in timing} == {
        k: v for k, v in streamed.metrics.items() if k not in timing
    }
    assert memory.history == streamed.history
    for key, value in memory.model.state_dict().items():
        torch.testing.assert_close(value, streamed.model.state_dict()[key], rtol=0, atol=0)
    assert streamed.bundle_path is not None and streamed.bundle_path.exists()
