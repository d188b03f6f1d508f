"""The epochs a search shares between its trials: read once, sliced per trial as views.

The epoch store is read once per search through Ray Data (`epoch_store.read_ray_dataset`,
one read task per shard file, run by the cluster; the metadata, tiny, comes from pyarrow
and every MEG row is checked against it), at the full stored window, and shipped to the
trials with `tune.with_parameters` (one `ray.put`). Trials on a node map the same
shared-memory object store buffers (numpy arrays deserialise zero-copy, read-only), and
each trial takes its window as a view (`SharedEpochs.run_data`, through the same
`megdecode.rundata.build_run_data` as `megdecode train`), so memory does not grow with
the number of trials, and Ray moves the object to each node once. The read tasks, though,
run on any node, so on several nodes the store must be shared or a URI
(`search.cluster_storage`), and the object must fit each node's object store
(`search.epoch_memory`); both are checked before the read. A search whose epochs exceed
that budget streams them instead: each trial reads its own splits from the store a buffer
at a time (`search.streamed`), trading a read per pass for memory that does not grow with
the store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa

from megdecode.data import store as epoch_store
from megdecode.latents.targets import load_target
from megdecode.rundata import (
    SPLIT_GROUPS,
    Latents,
    RunData,
    build_run_data,
    read_groups,
    split_groups,
)
from megdecode.train_config import FitConfig

logger = logging.getLogger(__name__)


@dataclass
class SharedEpochs:
    """Every epoch of the store at the full stored window, per split group, plus latents.

    meg[group]: (N_group, C, T_full) float32, rows in store order, exactly the rows
    `rundata.load_run_data` selects for that split group; latents: target -> (ids (L,), (L, F), parts).
    """

    manifest: epoch_store.Manifest
    meg: dict[str, np.ndarray]
    meta: dict[str, pd.DataFrame]
    latents: dict[str, Latents]

    @classmethod
    def load(
        cls,
        store: str | Path,
        latents_dir: str | Path,
        latent_names: list[str],
        reader: str = "ray",
    ) -> SharedEpochs:
        """Read the store (one pass, then split in memory) and the named latents.

        reader: "ray" (Ray Data on the running cluster, the search's path) or "arrow"
        (pyarrow in this process, `rundata.read_groups`); both give the same arrays.
        """
        if reader not in ("ray", "arrow"):
            raise ValueError(f"reader: expected 'ray' or 'arrow', got {reader!r}")
        manifest = epoch_store.read_manifest(store)
        if reader == "ray":  # each Ray Data pass costs seconds of start-up: one for every group
            every = tuple(s for splits in SPLIT_GROUPS.values() for s in splits)
            meg, meta = split_groups(*_read_with_ray_data(store, every), store)
        else:
            meg, meta = read_groups(store)
        latents = {name: load_target(latents_dir, name) for name in latent_names}
        return cls(manifest, meg, meta, latents)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in self.meg.values())

    def run_data(self, cfg: FitConfig) -> RunData:
        """The `RunData` that `rundata.load_run_data(cfg)` reads from disk, as views of our arrays."""
        t = cfg.train
        if t.latent not in self.latents:
            raise KeyError(
                f"latent {t.latent!r} was not loaded for this search; loaded: {sorted(self.latents)}"
            )
        return build_run_data(
            self.manifest, self.meg, self.meta, self.latents[t.latent], t.latent, t.tmin, t.tmax
        )

    def resident_run_data(self, cfg: FitConfig) -> RunData:
        """`run_data`: the shared arrays are in memory already (`search.streamed.EpochSource`)."""
        return self.run_data(cfg)


def _read_with_ray_data(
    store: str | Path, splits: tuple[str, ...]
) -> tuple[np.ndarray, pd.DataFrame]:
    """The rows of `splits`: MEG through Ray Data, metadata (tiny) through pyarrow.

    The read is shaped for one whole-store pass: one read task per shard file (no
    splitting into many small blocks), whole blocks handed back as Arrow tables (no
    re-batching, no pandas/numpy conversion of the metadata), no progress bars. On the
    tiny store this is dominated by Ray Data's fixed start-up; per byte it costs what a
    pyarrow read costs, as the tensor column is viewed zero-copy and copied once into X.

    Ray Data may hand blocks back in any order, so every MEG row is put at the position
    of its (subject, session, run, trial_index) in the metadata; a row that is missing,
    unknown or seen twice is an error, never a silently shifted epoch/latent pairing.
    """
    meta = epoch_store.load_metadata(store, splits=splits)
    key = ["subject", "session", "run", "trial_index"]
    position = {k: i for i, k in enumerate(zip(*(meta[c].astype(str) for c in key), strict=True))}
    if len(position) != len(meta):
        raise ValueError(
            f"the store {store} holds duplicate (subject, session, run, trial_index) rows"
        )
    n_files = len(epoch_store.read_manifest(store).files)
    X: np.ndarray | None = None
    seen = np.zeros(len(meta), bool)
    with _whole_file_reads(n_files):
        ds = epoch_store.read_ray_dataset(store, splits=splits).select_columns(["meg", *key])
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            block = cast(pa.Table, batch)
            if not block.num_rows:
                continue
            rows = _tensor_rows(block.column("meg"))
            if X is None:
                X = np.empty((len(meta), *rows.shape[1:]), np.float32)
            keys = zip(
                *(block.column(c).to_numpy(zero_copy_only=False).astype(str) for c in key),
                strict=True,
            )
            at = np.array([position.get(k, -1) for k in keys])
            if (at < 0).any() or seen[at].any() or len(np.unique(at)) != len(at):
                raise RuntimeError(
                    f"Ray Data returned rows of {store} that the metadata does not list once"
                )
            X[at] = rows
            seen[at] = True
    if not seen.all():
        raise RuntimeError(
            f"Ray Data read {int(seen.sum())} rows of {store} for {splits}, the metadata has {len(meta)}"
        )
    return (X if X is not None else np.empty((0, 0, 0), np.float32)), meta


def _tensor_rows(column: Any) -> np.ndarray:
    """(B, C, T) from an Arrow tensor column: zero-copy for the store's canonical type."""
    array = column.combine_chunks()
    if hasattr(array, "to_numpy_ndarray"):  # pyarrow's canonical fixed_shape_tensor
        return array.to_numpy_ndarray()
    return np.asarray(array.to_numpy(zero_copy_only=False))  # Ray's own tensor types


@contextlib.contextmanager
def _whole_file_reads(n_files: int) -> Iterator[None]:
    """Ray Data settings for one read of a few large, known files, restored afterwards.

    - ``read_op_min_num_blocks = n_files``: one read task per file (the store's
      datasource never splits a file; the default, 200, would matter to Ray's own
      Parquet reader, which splits a few files into many small blocks).
    - no progress bars: they cost driver time and clutter the Tune output.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    settings = {"read_op_min_num_blocks": max(1, n_files), "enable_progress_bars": False}
    saved = {k: getattr(ctx, k) for k in settings}
    for key, value in settings.items():
        setattr(ctx, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(ctx, key, value)
