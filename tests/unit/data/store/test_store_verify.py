"""Readers of the epoch store refuse files that disagree with the manifest, naming them.

Each corruption of `fixtures.stores.CORRUPTIONS` is refused by `load_epochs`, and by every
reader that goes through it (`megdecode train`, the serving example windows); the Ray Data
reader has the same cases in tests/integration/test_shards_ray.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fixtures import stores
from megdecode.data import store as epoch_store
from megdecode.data.store.verify import CONTENT_KEY


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A store and another one of the same shapes built with another seed."""
    return stores.write_tiny_store(tmp_path / "a", seed=0), stores.write_tiny_store(
        tmp_path / "b", seed=7
    )


def test_a_clean_store_reads_with_every_check(pair: tuple[Path, Path]) -> None:
    store, _ = pair
    manifest = epoch_store.read_manifest(store)
    assert manifest.format_version == 2
    for f in manifest.files:
        path = store / f.path
        assert f.size == path.stat().st_size and f.seal is not None
        assert CONTENT_KEY.encode() in pq.read_metadata(path).metadata
    X, meta = epoch_store.load_epochs(store)
    assert X.shape == (16, stores.C, stores.T) and len(epoch_store.load_metadata(store)) == 16
    full, _ = epoch_store.load_epochs(store, checks=epoch_store.ReadChecks(full=True))
    assert np.array_equal(full.view(np.uint32), X.view(np.uint32))


@pytest.mark.parametrize("corruption", sorted(stores.CORRUPTIONS))
def test_load_epochs_refuses_and_names_the_file(pair: tuple[Path, Path], corruption: str) -> None:
    store, other = pair
    path = stores.victim(store)
    stores.CORRUPTIONS[corruption](store, other)
    with pytest.raises(epoch_store.StoreError, match=str(path)):
        epoch_store.load_epochs(store)
    with pytest.raises(epoch_store.StoreError, match=str(path)):
        epoch_store.load_epochs(store, subjects=["BIGMEG1"], splits=["test"], tmin=0.0, tmax=0.03)
    with pytest.raises(epoch_store.StoreError, match=str(path)):
        epoch_store.verify_store(store)


@pytest.mark.parametrize("corruption", sorted(set(stores.CORRUPTIONS) - {"flipped_meg_page"}))
def test_load_metadata_refuses_and_names_the_file(pair: tuple[Path, Path], corruption: str) -> None:
    store, other = pair
    path = stores.victim(store)
    stores.CORRUPTIONS[corruption](store, other)
    with pytest.raises(epoch_store.StoreError, match=str(path)):
        epoch_store.load_metadata(store)


def test_metadata_reads_do_not_pay_for_meg_pages(pair: tuple[Path, Path]) -> None:
    """A damaged MEG page is refused by whatever reads MEG; metadata alone stays readable
    (and correct: none of its bytes changed)."""
    store, other = pair
    before = epoch_store.load_metadata(store)
    stores.flip_meg_page(store, other)
    assert epoch_store.load_metadata(store).equals(before)


def test_the_page_crc_is_what_catches_a_flipped_data_page(pair: tuple[Path, Path]) -> None:
    """Without page checksums pyarrow returns the flipped value; with them the read fails
    with pyarrow's CRC error, mapped to a StoreError naming the file."""
    store, other = pair
    path = stores.victim(store)
    clean = pq.read_table(path).column("meg").combine_chunks().to_numpy_ndarray()
    stores.flip_meg_page(store, other)
    silent = pq.read_table(path).column("meg").combine_chunks().to_numpy_ndarray()
    assert (clean.view(np.uint32) != silent.view(np.uint32)).sum() == 1
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        pq.read_table(path, page_checksum_verification=True)
    with pytest.raises(epoch_store.StoreError, match=rf"{path} is corrupt: .*CRC checksum"):
        epoch_store.load_epochs(store)


def test_a_shard_with_the_same_layout_and_statistics_is_told_apart_by_its_rows(
    tmp_path: Path,
) -> None:
    """Two stores whose only difference is two MEG rows swapped (a silent epoch/label
    mix-up): same sizes, offsets and column statistics; only the content digest in the
    footer differs, and with it the footer digest the manifest holds."""
    a = stores.block("BIGMEG1", 4, 0)
    b = stores.block("BIGMEG1", 4, 0)
    b.data = b.data[[1, 0, 2, 3]].copy()
    epoch_store.write_store(tmp_path / "a", [a], rows_per_file=4, row_group_rows=2)
    epoch_store.write_store(tmp_path / "b", [b], rows_per_file=4, row_group_rows=2)
    relative = epoch_store.read_manifest(tmp_path / "a").files[0].path
    path_a, path_b = tmp_path / "a" / relative, tmp_path / "b" / relative
    meta_a, meta_b = pq.read_metadata(path_a), pq.read_metadata(path_b)
    assert path_a.stat().st_size == path_b.stat().st_size
    assert meta_a.to_dict() == meta_b.to_dict()  # row groups, offsets, sizes, statistics
    assert meta_a.metadata[CONTENT_KEY.encode()] != meta_b.metadata[CONTENT_KEY.encode()]
    shutil.copyfile(path_b, path_a)
    with pytest.raises(
        epoch_store.StoreError, match=rf"{path_a} is corrupt or comes from another store"
    ):
        epoch_store.load_epochs(tmp_path / "a")


def _flip_every_byte(
    store: Path, stride: int, every_bit: bool
) -> tuple[int, int, list[tuple[int, int]]]:
    """(refused, unchanged, (offset, bit) returned changed) over one-bit flips of one shard:
    every `stride`-th byte, one bit each (rotating) or each of its eight bits."""
    path = stores.victim(store)
    clean = path.read_bytes()
    X0, meta0 = epoch_store.load_epochs(store)
    refused, unchanged, changed = 0, 0, []
    flips = [
        (o, b) for o in range(0, len(clean), stride) for b in (range(8) if every_bit else [o % 8])
    ]
    for offset, bit in flips:
        raw = bytearray(clean)
        raw[offset] ^= 1 << bit
        path.write_bytes(bytes(raw))
        try:
            X, meta = epoch_store.load_epochs(store)
        except epoch_store.StoreError:
            refused += 1
            continue
        if np.array_equal(X.view(np.uint32), X0.view(np.uint32)) and meta.equals(meta0):
            unchanged += 1
        else:
            changed.append((offset, bit))
    path.write_bytes(clean)
    return refused, unchanged, changed


def test_no_flipped_byte_of_a_shard_changes_what_is_read(tmp_path: Path) -> None:
    """Every 7th byte of a shard flipped in turn (a bit each, headers, pages and footer
    alike): each is refused or leaves the values unchanged (page statistics, padding)."""
    store = stores.write_tiny_store(tmp_path / "store")
    refused, unchanged, changed = _flip_every_byte(store, stride=7, every_bit=False)
    assert changed == [] and refused > 0.8 * (refused + unchanged)


@pytest.mark.slow
def test_no_flipped_bit_of_a_shard_changes_what_is_read(tmp_path: Path) -> None:
    """Each of the eight bits of every byte (~60k reads, minutes)."""
    store = stores.write_tiny_store(tmp_path / "store")
    refused, unchanged, changed = _flip_every_byte(store, stride=1, every_bit=True)
    print(f"{refused} flips refused, {unchanged} harmless, {len(changed)} changed what was read")
    assert changed == []


def _as_format_1(store: Path) -> None:
    """Rewrite the manifest as a format-1 store's: no sizes, no footer digests."""
    raw = json.loads((store / epoch_store.MANIFEST).read_text())
    raw["format_version"] = 1
    raw["files"] = [{k: f[k] for k in ("path", "subject", "rows", "sha256")} for f in raw["files"]]
    (store / epoch_store.MANIFEST).write_text(json.dumps(raw))


def test_a_format_1_store_is_hashed_in_full_with_a_warning(
    pair: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    store, other = pair
    X, _ = epoch_store.load_epochs(store)
    _as_format_1(store)
    with caplog.at_level(logging.WARNING, logger="megdecode.data.store.read"):
        again, _ = epoch_store.load_epochs(store)
    assert np.array_equal(again.view(np.uint32), X.view(np.uint32))
    assert "predates page checksums" in caplog.text and "rebuild it" in caplog.text
    path = stores.victim(store)
    stores.from_other_store(store, other)
    with pytest.raises(epoch_store.StoreError, match=rf"{path} is corrupt: sha256"):
        epoch_store.load_epochs(store)


def test_an_unreadable_manifest_is_a_store_error(pair: tuple[Path, Path]) -> None:
    store, _ = pair
    manifest = store / epoch_store.MANIFEST
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(epoch_store.StoreError, match=str(manifest)):
        epoch_store.load_epochs(store)
    manifest.write_text(json.dumps({"format_version": 3}))
    with pytest.raises(epoch_store.StoreError, match="format_version 3"):
        epoch_store.read_manifest(store)


def test_rebuilds_stay_byte_identical(tmp_path: Path) -> None:
    """The content digest is of the rows, not of the run: the same rows, the same bytes."""
    a = epoch_store.read_manifest(stores.write_tiny_store(tmp_path / "a"))
    b = epoch_store.read_manifest(stores.write_tiny_store(tmp_path / "b"))
    assert a.files == b.files
    digest = hashlib.sha256((tmp_path / "a" / a.files[0].path).read_bytes()).hexdigest()
    assert digest == a.files[0].sha256


def _corrupt_copy(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """tiny_run's store and latents copied, one shard's MEG page flipped: (run dir, shard)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "store", run / "store")
    shutil.copytree(tiny_run / "latents", run / "latents")
    path = run / "store" / epoch_store.read_manifest(run / "store").files[-1].path
    stores.flip(path, stores.last_page_byte(path, "meg"))
    return run, path


def test_megdecode_train_on_a_corrupt_store_fails_naming_the_file(
    tiny_run: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from megdecode.cli import app

    run, path = _corrupt_copy(tiny_run, tmp_path)
    argv = ["train", "--data", str(run), "--max-epochs", "1", "--no-ridge"]
    result = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "bundle")])
    assert result.exit_code != 0
    assert isinstance(result.exception, epoch_store.StoreError) and str(path) in str(
        result.exception
    )
    assert not (tmp_path / "bundle").exists()


def test_the_serving_examples_refuse_a_corrupt_store(tiny_run: Path, tmp_path: Path) -> None:
    from megdecode.serve import demo as serve_demo

    run, path = _corrupt_copy(tiny_run, tmp_path)
    subjects = epoch_store.read_manifest(run / "store").subjects
    with pytest.raises(epoch_store.StoreError, match=str(path)):
        serve_demo.test_windows(run / "store", -0.1, 0.5, subjects, 3)
