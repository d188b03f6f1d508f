"""Reading the epoch store: epochs into memory, metadata, a Ray Dataset; the full check.

Every reader refuses a file that disagrees with the manifest, naming it, before returning
its rows (`check_files`, then page CRCs as pages are decoded; `megdecode.data.store.verify`
says what each check covers). `verify_store` is the explicit full check (sha256 of every
byte). Stores of format 1 (no page checksums, no footer digests) are still read, after a
full sha256 of the files read and a warning to rebuild them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from megdecode import files
from megdecode.data.store.manifest import (
    EPOCHS_DIR,
    META_COLUMNS,
    Manifest,
    ShardFile,
    read_manifest,
)
from megdecode.data.store.verify import (
    DEFAULT_CHECKS,
    ReadChecks,
    StoreError,
    check_sha256,
    open_parquet,
    read_rows,
)

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)


def verify_store(store: str | Path) -> Manifest:
    """The full check: every file's sha256 against the manifest, and no unlisted files.

    Reads every byte (~21 GB for THINGS-MEG); readers check sizes, footers and page CRCs
    instead (`megdecode.data.store.verify`). Raises naming the first bad file.
    """
    manifest = read_manifest(store)
    listed = {f.path for f in manifest.files}
    fs, root = files.resolve(store)
    with files.named_errors(store):
        found = fs.get_file_info(
            pafs.FileSelector(f"{root}/{EPOCHS_DIR}", allow_not_found=True, recursive=True)
        )
    relative = (i.path[len(root) + 1 :] for i in found if i.type == pafs.FileType.File)
    extra = sorted(p for p in relative if p.endswith(".parquet") and p not in listed)
    if extra:
        raise StoreError(f"store {store} has files not in its manifest: {extra}")
    for f in manifest.files:
        check_sha256(files.join(store, f.path), f.sha256)
    return manifest


def check_files(
    store: str | Path, manifest: Manifest, shards: Sequence[ShardFile], checks: ReadChecks
) -> None:
    """What a reader checks before it opens `shards`: seals, or their sha256 (`ReadChecks`).

    A format-1 store has no seals (nor page checksums): its files are hashed in full, with
    a warning, rather than refused, so that a THINGS-size store that took hours to build
    stays usable until it is rebuilt.
    """
    legacy = [Path(store) / f.path for f in shards if f.seal is None and not files.is_uri(store)]
    if legacy and not checks.full:
        gb = sum(p.stat().st_size for p in legacy if p.is_file()) / 1e9
        logger.warning(
            "store %s predates page checksums and footer digests (format %d): each read "
            "hashes its %d file(s) (%.1f GB) in full first; rebuild it (`megdecode preprocess "
            "--bids BIDS --out %s` reuses the run cache) to read it at full speed",
            store, manifest.format_version, len(legacy), gb, store,
        )  # fmt: skip
    for f in shards:
        seal = f.seal
        if checks.full or seal is None:
            check_sha256(files.join(store, f.path), f.sha256)
        elif checks.seals:
            seal.check(files.join(store, f.path))


def _select_files(manifest: Manifest, subjects: Sequence[str] | None) -> list[ShardFile]:
    if subjects is None:
        return list(manifest.files)
    unknown = sorted(set(subjects) - set(manifest.subjects))
    if unknown:
        raise KeyError(f"subjects {unknown} not in the store; it has {manifest.subjects}")
    return [f for f in manifest.files if f.subject in set(subjects)]


def window_slice(
    times: Sequence[float] | np.ndarray, sfreq: float, tmin: float | None, tmax: float | None
) -> slice:
    """The samples of `times` with tmin <= t <= tmax (both inclusive, as mne's crop).

    `times`: (T,) sample times in seconds, increasing, `sfreq` apart; None = open end.
    Bounds are compared with a tolerance of a millionth of a sample, so a bound on the
    sample grid keeps its sample whatever float rounding the times or the bound carry,
    while a bound between two samples never picks up the outer one. The store's readers,
    `megdecode.rundata` and the window curves all cut windows with this one rule, so a
    model trained on a window and a model scored on it see the same samples.
    """
    times = np.asarray(times, dtype=np.float64)
    tol = 1e-6 / sfreq
    lo = 0 if tmin is None else int(np.searchsorted(times, tmin - tol, side="left"))
    hi = len(times) if tmax is None else int(np.searchsorted(times, tmax + tol, side="right"))
    if hi <= lo:
        span = f"[{times[0]:.4f}, {times[-1]:.4f}] s" if len(times) else "no samples"
        raise ValueError(f"window [{tmin}, {tmax}] s holds no samples; the epochs cover {span}")
    return slice(lo, hi)


def _read_metadata(
    store: str | Path, shards: list[ShardFile], splits: Sequence[str] | None, checks: ReadChecks
) -> tuple[list[pd.DataFrame], list[np.ndarray]]:
    """Per file: the kept metadata rows and the boolean mask that kept them."""
    metas, masks = [], []
    for f in shards:
        path = files.join(store, f.path)
        pf = open_parquet(path, checks.pages)
        names = [n for n in pf.schema_arrow.names if n != "meg"]
        meta = read_rows(pf, path, names).to_pandas()
        if len(meta) != f.rows:
            raise StoreError(
                f"store file {path} holds {len(meta)} rows, the manifest says {f.rows}"
            )
        mask = np.ones(len(meta), bool) if splits is None else meta["split"].isin(splits).to_numpy()
        metas.append(meta[mask])
        masks.append(mask)
    return metas, masks


def _concat(metas: list[pd.DataFrame]) -> pd.DataFrame:
    if not metas:
        return pd.DataFrame(columns=list(META_COLUMNS))
    return pd.concat(metas, ignore_index=True)


def load_metadata(
    store: str | Path,
    subjects: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    *,
    checks: ReadChecks = DEFAULT_CHECKS,
) -> pd.DataFrame:
    """The metadata rows `load_epochs` would return, without reading any MEG.

    Checks every selected file's seal and the CRC of every metadata page it reads (the MEG
    pages are not read, hence not checked); raises `StoreError` naming a bad file.
    """
    manifest = read_manifest(store)
    shards = _select_files(manifest, subjects)
    check_files(store, manifest, shards, checks)
    return _concat(_read_metadata(store, shards, splits, checks)[0])


def load_epochs(
    store: str | Path,
    subjects: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    tmin: float | None = None,
    tmax: float | None = None,
    *,
    checks: ReadChecks = DEFAULT_CHECKS,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Epochs in memory: X (N, C, T_window) float32 and their metadata (N rows).

    Rows come subject by subject (sorted labels), in the order they were written.
    Every selected file's seal is checked first, then each page's CRC as it is read;
    a bad file raises `StoreError` naming it and nothing is returned. Metadata is read
    first to size X once; meg is then read one row group at a time, so peak memory is X
    plus one row group.
    """
    manifest = read_manifest(store)
    window = window_slice(manifest.times, manifest.sfreq, tmin, tmax)
    shards = _select_files(manifest, subjects)
    check_files(store, manifest, shards, checks)
    metas, masks = _read_metadata(store, shards, splits, checks)
    n = int(sum(m.sum() for m in masks))
    X = np.empty((n, len(manifest.ch_names), window.stop - window.start), np.float32)
    at = 0
    for f, mask in zip(shards, masks, strict=True):
        path = files.join(store, f.path)
        pf = open_parquet(path, checks.pages)
        start = 0
        for group in range(pf.num_row_groups):
            col = read_rows(pf, path, ["meg"], group).column("meg").combine_chunks()
            keep = mask[start : start + len(col)]
            start += len(col)
            if keep.any():
                rows = col.to_numpy_ndarray()[keep][:, :, window]
                X[at : at + len(rows)] = rows
                at += len(rows)
        if start != len(mask):
            raise StoreError(f"store file {path} holds {start} MEG rows, its metadata {len(mask)}")
    if at != n:  # unreachable when every file holds its rows; never return unfilled rows
        raise StoreError(f"store {store}: read {at} MEG rows for {n} metadata rows")
    return X, _concat(metas)


def read_ray_dataset(
    store: str | Path,
    subjects: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    tmin: float | None = None,
    tmax: float | None = None,
    *,
    checks: ReadChecks = DEFAULT_CHECKS,
) -> ray.data.Dataset:
    """The store as a Ray Dataset; numpy batches give ``batch["meg"]`` of shape (B, C, T).

    Files come from the manifest (never a directory listing), so a stray file is never
    read. The seals are checked here, before the dataset exists, and again by each read
    task on the file it opens, which also checks every page's CRC: a bad file fails the
    iteration with a `StoreError` naming it (`megdecode.data.store.ray_read`). Splits and the
    window are applied inside the read tasks.
    """
    from megdecode.data.store.ray_read import read_shards

    manifest = read_manifest(store)
    window = window_slice(manifest.times, manifest.sfreq, tmin, tmax)
    shards = _select_files(manifest, subjects)
    if not shards:
        raise StoreError(f"no files for subjects {subjects} in store {store}")
    check_files(store, manifest, shards, checks)
    full = window == slice(0, len(manifest.times))
    return read_shards(
        [(files.join(store, f.path), f.seal, f.rows) for f in shards],
        splits=splits, window=None if full else window, checks=checks,
    )  # fmt: skip
