"""The epoch store: bit-exact round trip, windows, manifest, checksums, refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megdecode import __version__
from megdecode.config import FlatConfig
from megdecode.data import store as epoch_store

C, T, SFREQ, TMIN = 4, 13, 10.0, -0.2
CH = [f"MLC{i}1-1609" for i in range(C)]


@dataclasses.dataclass
class Block:
    """Stand-in satisfying `epoch_store.EpochBlockLike` (the real EpochBlock has more fields)."""

    data: np.ndarray
    metadata: pd.DataFrame
    ch_names: list[str]
    sfreq: float = SFREQ
    tmin: float = TMIN
    pos2d: np.ndarray = dataclasses.field(
        default_factory=lambda: np.linspace(0, 1, C * 2).reshape(C, 2)
    )
    pos3d: np.ndarray = dataclasses.field(
        default_factory=lambda: np.linspace(-0.1, 0.1, C * 3).reshape(C, 3)
    )


@dataclasses.dataclass(frozen=True)
class _Cfg(FlatConfig):
    l_freq: float = 0.1
    baseline: tuple[float, float] = (-0.5, 0.0)


def make_block(subject: str, run: str, n: int, seed: int) -> Block:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, C, T)).astype(np.float32)
    # values that a lossy path (float64 round trip, compression bugs, NaN canonicalisation)
    # would change: -0.0, a subnormal, NaN, inf
    data[0, 0, :4] = [-0.0, np.float32(1e-45), np.nan, np.inf]
    splits = np.array(["train", "val", "test", "test_large"])[np.arange(n) % 4]
    meta = pd.DataFrame({
        "subject": subject, "session": "01", "run": run, "trial_index": np.arange(n),
        "image_id": 100 + np.arange(n), "category_id": np.arange(n) % 3,
        "category": [f"cat{i % 3}" for i in range(n)], "trial_type": "exp",
        "image_path": [f"images_meg/x/x_{i:02d}b.png" for i in range(n)], "split": splits,
        "repetition": 0, "onset_sample": 1000 + 150 * np.arange(n),
    })  # fmt: skip
    return Block(data, meta, list(CH))


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint32)


@pytest.fixture()
def blocks() -> list[Block]:
    # interleaved subjects, as a Ray job yields runs
    return [
        make_block("BIGMEG1", "01", 7, 0),
        make_block("BIGMEG2", "01", 5, 1),
        make_block("BIGMEG1", "02", 6, 2),
    ]


@pytest.fixture()
def store(tmp_path: Path, blocks: list[Block]) -> Path:
    epoch_store.write_store(
        tmp_path / "store",
        blocks,
        preprocess_config=_Cfg(),
        split_config={"val_fraction": 0.1, "seed": 0},
        scalers={"BIGMEG1": {"median": np.arange(C, dtype=float)}},
        rows_per_file=4,
        row_group_rows=3,
    )
    return tmp_path / "store"


def expected(blocks: list[Block]) -> tuple[np.ndarray, pd.DataFrame]:
    """Subjects in sorted order, rows in arrival order within a subject."""
    order = [blocks[0], blocks[2], blocks[1]]
    return (
        np.concatenate([b.data for b in order]),
        pd.concat([b.metadata for b in order], ignore_index=True),
    )


def test_round_trip_is_bit_identical(store: Path, blocks: list[Block]) -> None:
    X, meta = epoch_store.load_epochs(store)
    X_ref, meta_ref = expected(blocks)
    assert X.dtype == np.float32 and X.shape == X_ref.shape
    assert np.array_equal(bits(X), bits(X_ref))
    pd.testing.assert_frame_equal(meta[list(epoch_store.META_COLUMNS)], meta_ref, check_dtype=False)
    assert meta["trial_index"].dtype == np.int64 and meta["session"].iloc[0] == "01"


def test_files_are_sized_by_rows_per_file(store: Path) -> None:
    manifest = epoch_store.read_manifest(store)
    by_subject = {s: [f.rows for f in manifest.files if f.subject == s] for s in manifest.subjects}
    assert by_subject == {"BIGMEG1": [4, 4, 4, 1], "BIGMEG2": [4, 1]}
    first = store / manifest.files[0].path
    assert first.parent.name == "subject=BIGMEG1" and first.name == "part-00000.parquet"
    assert [pq.ParquetFile(first).metadata.row_group(i).num_rows for i in range(2)] == [3, 1]


def test_meg_column_is_a_canonical_tensor_for_plain_pyarrow(store: Path) -> None:
    path = store / epoch_store.read_manifest(store).files[0].path
    column = pq.read_table(path).column("meg")
    assert isinstance(column.type, pa.FixedShapeTensorType)
    assert column.type.shape == [C, T] and column.type.value_type == pa.float32()
    assert column.combine_chunks().to_numpy_ndarray().shape == (4, C, T)


def test_filters_by_subject_and_split(store: Path, blocks: list[Block]) -> None:
    X, meta = epoch_store.load_epochs(store, subjects=["BIGMEG2"], splits=["train", "test"])
    keep = blocks[1].metadata["split"].isin(["train", "test"]).to_numpy()
    assert np.array_equal(bits(X), bits(blocks[1].data[keep]))
    assert set(meta["split"]) == {"train", "test"} and set(meta["subject"]) == {"BIGMEG2"}
    val = epoch_store.load_metadata(store, splits=["val"])
    assert len(val) == 5 and set(val["split"]) == {"val"}
    with pytest.raises(KeyError, match="BIGMEG9"):
        epoch_store.load_epochs(store, subjects=["BIGMEG9"])


def test_time_window_slices_inclusive_bounds(store: Path, blocks: list[Block]) -> None:
    X, _ = epoch_store.load_epochs(store, tmin=0.0, tmax=0.5)
    X_ref, _ = expected(blocks)
    # times = -0.2, -0.1, 0.0, ..., 1.0 -> 0.0..0.5 are samples 2..7
    assert X.shape == (len(X_ref), C, 6)
    assert np.array_equal(bits(X), bits(X_ref[:, :, 2:8]))
    assert X.flags.c_contiguous
    X_open, _ = epoch_store.load_epochs(store, tmin=0.95)
    assert np.array_equal(bits(X_open), bits(X_ref[:, :, 12:]))
    with pytest.raises(ValueError, match="holds no samples"):
        epoch_store.load_epochs(store, tmin=2.0, tmax=3.0)


def test_manifest_contents(store: Path, blocks: list[Block]) -> None:
    manifest = epoch_store.read_manifest(store)
    assert manifest.format_version == epoch_store.FORMAT_VERSION
    assert manifest.sfreq == SFREQ and manifest.tmin == TMIN
    assert np.allclose(manifest.times, TMIN + np.arange(T) / SFREQ)
    assert manifest.ch_names == CH
    assert np.array_equal(manifest.pos2d, blocks[0].pos2d)
    assert np.array_equal(manifest.pos3d, blocks[0].pos3d)
    assert _Cfg.from_flat_dict(manifest.preprocess) == _Cfg()
    assert manifest.splits == {"val_fraction": 0.1, "seed": 0}
    assert manifest.scalers == {"BIGMEG1": {"median": [0.0, 1.0, 2.0, 3.0]}}
    assert manifest.subjects == ["BIGMEG1", "BIGMEG2"]
    assert manifest.counts == {
        "BIGMEG1": {"train": 4, "val": 4, "test": 3, "test_large": 2},
        "BIGMEG2": {"train": 2, "val": 1, "test": 1, "test_large": 1},
    }
    assert manifest.row_counts == {"BIGMEG1": 13, "BIGMEG2": 5} and manifest.n_epochs == 18
    assert manifest.megdecode_version == __version__ and manifest.created_at
    assert sorted(f.path for f in manifest.files) == sorted(
        p.relative_to(store).as_posix() for p in store.rglob("*.parquet")
    )
    assert json.loads((store / epoch_store.MANIFEST).read_text())["ch_names"] == CH


def test_verify_store_names_the_corrupt_file(store: Path) -> None:
    manifest = epoch_store.verify_store(store)
    victim = store / manifest.files[2].path
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(epoch_store.StoreError, match=str(victim)):
        epoch_store.verify_store(store)
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=str(victim)):
        epoch_store.verify_store(store)


def test_verify_store_refuses_files_missing_from_manifest(store: Path) -> None:
    stray = store / "epochs" / "subject=BIGMEG1" / "part-00099.parquet"
    stray.write_bytes((store / epoch_store.read_manifest(store).files[0].path).read_bytes())
    with pytest.raises(epoch_store.StoreError, match="part-00099"):
        epoch_store.verify_store(store)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ch_names": CH[::-1]}, "channel list differs"),
        ({"sfreq": 12.0}, "sfreq"),
        ({"data": np.zeros((6, C, T), np.float64)}, "float32"),
    ],
)
def test_mismatched_blocks_are_refused_and_leave_nothing(
    tmp_path: Path, blocks: list[Block], change: dict, message: str
) -> None:
    blocks[2] = dataclasses.replace(blocks[2], **change)
    with pytest.raises(epoch_store.StoreError, match=message):
        epoch_store.write_store(tmp_path / "store", blocks)
    assert list(tmp_path.iterdir()) == []


def test_missing_metadata_column_is_named(tmp_path: Path, blocks: list[Block]) -> None:
    blocks[0].metadata = blocks[0].metadata.drop(columns=["repetition"])
    with pytest.raises(epoch_store.StoreError, match="repetition"):
        epoch_store.write_store(tmp_path / "store", blocks)


def test_existing_store_needs_overwrite(store: Path, blocks: list[Block]) -> None:
    with pytest.raises(FileExistsError):
        epoch_store.write_store(store, blocks[:1])
    manifest = epoch_store.write_store(store, blocks[1:2], overwrite=True)
    assert manifest.subjects == ["BIGMEG2"]
    assert epoch_store.load_epochs(store)[0].shape[0] == 5
    assert [p.name for p in store.parent.iterdir()] == ["store"]
