"""The epoch store through Ray Data: tensor column, bit-exact values, filters, window, and
the refusal of every corruption of `fixtures.stores.CORRUPTIONS`, naming the file, on the
driver (before the dataset exists) and in the read tasks (Ray worker processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures import stores
from megdecode.data import store as epoch_store

pytestmark = pytest.mark.ray

C, T = 3, 11
CH = ["MLC11-1609", "MLC12-1609", "MRO12-1609"]


class _Block:
    """Minimal `epoch_store.EpochBlockLike`."""

    def __init__(self, subject: str, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.data = rng.standard_normal((n, C, T)).astype(np.float32)
        self.data[0, 0, :3] = [-0.0, np.float32(1e-45), np.nan]
        self.metadata = pd.DataFrame({
            "subject": subject, "session": "01", "run": "01", "trial_index": np.arange(n),
            "image_id": np.arange(n), "category_id": 0, "category": "cat", "trial_type": "exp",
            "image_path": "images_meg/cat/cat_01b.png",
            "split": np.where(np.arange(n) % 3 == 0, "test", "train"), "repetition": 0,
            "onset_sample": np.arange(n),
        })  # fmt: skip
        self.ch_names, self.sfreq, self.tmin = list(CH), 100.0, -0.05
        self.pos2d, self.pos3d = np.zeros((C, 2)), np.zeros((C, 3))


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray_store") / "store"
    blocks = [_Block("BIGMEG1", 9, 0), _Block("BIGMEG2", 7, 1)]
    epoch_store.write_store(out, blocks, rows_per_file=4, row_group_rows=2)
    return out


def _collect(ds) -> tuple[np.ndarray, pd.DataFrame]:
    """All batches, sorted by (subject, trial_index): Ray does not promise file order."""
    megs, metas = [], []
    for batch in ds.iter_batches(batch_size=5, batch_format="numpy"):
        assert batch["meg"].ndim == 3 and batch["meg"].dtype == np.float32
        megs.append(batch["meg"])
        metas.append(pd.DataFrame({k: v for k, v in batch.items() if k != "meg"}))
    meta = pd.concat(metas, ignore_index=True)
    order = np.lexsort((meta["trial_index"].to_numpy(), meta["subject"].to_numpy()))
    return np.concatenate(megs)[order], meta.iloc[order].reset_index(drop=True)


def test_ray_reads_bit_identical_tensors(ray_local: None, store: Path) -> None:
    ds = epoch_store.read_ray_dataset(store)
    X, meta = _collect(ds)
    X_ref, meta_ref = epoch_store.load_epochs(store)
    assert X.shape == (16, C, T)
    assert np.array_equal(X.view(np.uint32), X_ref.view(np.uint32))
    assert meta["subject"].tolist() == meta_ref["subject"].tolist()
    assert meta["trial_index"].tolist() == meta_ref["trial_index"].tolist()


def test_ray_filters_and_window(ray_local: None, store: Path) -> None:
    ds = epoch_store.read_ray_dataset(
        store, subjects=["BIGMEG2"], splits=["test"], tmin=0.0, tmax=0.03
    )
    X, meta = _collect(ds)
    X_ref, meta_ref = epoch_store.load_epochs(
        store, subjects=["BIGMEG2"], splits=["test"], tmin=0.0, tmax=0.03
    )
    assert X.shape == (3, C, 4)  # trials 0, 3, 6; samples at 0.00..0.03 s
    assert np.array_equal(X.view(np.uint32), X_ref.view(np.uint32))
    assert set(meta["split"]) == {"test"} and set(meta["subject"]) == {"BIGMEG2"}


def _iterate(ds) -> int:
    return sum(len(b["meg"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a = stores.write_tiny_store(tmp_path / "a", seed=0)
    return a, stores.write_tiny_store(tmp_path / "b", seed=7)


PAGE_ONLY = {"flipped_meg_page", "flipped_split_page"}  # what only a page CRC can see


@pytest.mark.parametrize("corruption", sorted(stores.CORRUPTIONS))
def test_ray_refuses_a_corrupt_store_naming_the_file(
    ray_local: None, pair: tuple[Path, Path], corruption: str
) -> None:
    """Damage a footer, size or file can show is refused on the driver, before any task
    runs; a flipped page byte, which only the page CRC sees, fails the read task in its
    worker, and the iteration raises the worker's StoreError naming the file."""
    store, other = pair
    path = stores.victim(store)
    assert _iterate(epoch_store.read_ray_dataset(store)) == 16
    stores.CORRUPTIONS[corruption](store, other)
    for kwargs in ({}, {"subjects": ["BIGMEG1"], "splits": ["test"], "tmin": 0.0, "tmax": 0.03}):
        with pytest.raises(epoch_store.StoreError, match=str(path)):
            ds = epoch_store.read_ray_dataset(store, **kwargs)
            assert corruption in PAGE_ONLY, "seal damage is refused before the dataset exists"
            _iterate(ds)


@pytest.mark.parametrize("corruption", ["truncated", "from_other_store", "flipped_footer"])
def test_read_tasks_recheck_the_file_they_open(
    ray_local: None, pair: tuple[Path, Path], corruption: str
) -> None:
    """A file damaged after the driver checked it (or seen differently from a worker node)
    is refused by the worker's own seal check."""
    store, other = pair
    path = stores.victim(store)
    ds = epoch_store.read_ray_dataset(store)
    stores.CORRUPTIONS[corruption](store, other)
    with pytest.raises(epoch_store.StoreError, match=str(path)):
        _iterate(ds)


def test_tune_shared_epochs_refuse_a_corrupt_store(
    ray_local: None, tiny_run: Path, tmp_path: Path
) -> None:
    """The search's data path (`SharedEpochs.load`, Ray Data reader) fails naming the shard."""
    import shutil

    from megdecode.search.shared import SharedEpochs

    shutil.copytree(tiny_run / "store", tmp_path / "store")
    path = tmp_path / "store" / epoch_store.read_manifest(tmp_path / "store").files[-1].path
    stores.flip(path, stores.last_page_byte(path, "meg"))
    latents = tiny_run / "latents"
    for reader in ("ray", "arrow"):
        with pytest.raises(epoch_store.StoreError, match=str(path)):
            SharedEpochs.load(tmp_path / "store", latents, ["handcrafted"], reader=reader)
