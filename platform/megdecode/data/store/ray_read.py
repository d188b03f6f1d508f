"""The epoch store as a Ray Dataset whose read tasks check what they read.

Why a datasource of our own rather than ``ray.data.read_parquet``: Ray Data 2.60's
default (V2) Parquet reader builds its scanner with fixed ``fragment_scan_options``, so
``page_checksum_verification`` cannot reach it (only the V1 reader forwards them), and
its errors would be pyarrow's, which do not name the file. Here each read task checks
the seal of the file it is about to open (size, magic, footer digest: the file may have
changed since the driver checked it, or the task runs on another node), reads it with
page CRCs on, and turns any failure into a `StoreError` naming the file, which Ray hands
to whoever iterates the dataset.

One read task per file (or per group of files when Ray asks for fewer tasks), one block
per row group (~50 MB for 256 THINGS epochs), rows of the requested splits only, cropped
to the requested window. Imported by `megdecode.data.store.read.read_ray_dataset` only,
so reading a store locally never imports Ray.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasource

from megdecode.data.store.verify import ReadChecks, Seal, StoreError, open_parquet, read_rows

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

ShardToRead = tuple[str, Seal | None, int]  # path or URI, seal (None: format 1), rows


def read_shards(
    files: Sequence[ShardToRead],
    splits: Sequence[str] | None,
    window: slice | None,
    checks: ReadChecks,
) -> ray.data.Dataset:
    """A lazy Dataset over `files` (already checked by the caller on the driver)."""
    import ray.data

    return ray.data.read_datasource(_StoreDatasource(list(files), splits, window, checks))


def _read_files(
    files: Sequence[ShardToRead],
    splits: tuple[str, ...] | None,
    window: slice | None,
    checks: ReadChecks,
) -> Iterator[pa.Table]:
    """What one read task runs: per file, the seal, then each row group page-checked."""
    for path, seal, rows in files:
        if checks.seals and seal is not None:
            seal.check(path)
        pf = open_parquet(path, checks.pages)
        if pf.metadata.num_rows != rows:
            raise StoreError(
                f"store file {path} holds {pf.metadata.num_rows} rows, the manifest says {rows}"
            )
        for group in range(pf.num_row_groups):
            table = read_rows(pf, path, group=group)
            if splits is not None:
                table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(splits)))
            if not table.num_rows:
                continue
            if window is not None:
                table = _crop(table, window)
            yield table


def _crop(table: pa.Table, window: slice) -> pa.Table:
    """The meg column cut to samples `window` (a copy: the cropped rows are contiguous)."""
    meg = table.column("meg").combine_chunks().to_numpy_ndarray()[:, :, window]
    cropped = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(meg))
    return table.set_column(table.schema.get_field_index("meg"), "meg", cropped)


class _StoreDatasource(Datasource):
    """The `ray.data.Datasource` of `read_shards` (no projection or predicate pushdown:
    splits and the window are applied by the read tasks themselves)."""

    def __init__(
        self,
        files: list[ShardToRead],
        splits: Sequence[str] | None,
        window: slice | None,
        checks: ReadChecks,
    ) -> None:
        super().__init__()
        self._files = files
        self._splits = None if splits is None else tuple(splits)
        self._window = window
        self._checks = checks

    def get_name(self) -> str:
        return "EpochStore"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(seal.size for _, seal, _ in self._files if seal is not None) or None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[Any]:
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        tasks = []
        groups = np.array_split(
            np.arange(len(self._files)), max(1, min(parallelism, len(self._files)))
        )
        for group in groups:
            files = [self._files[i] for i in group]
            meta = BlockMetadata(
                num_rows=None if self._splits is not None else sum(rows for _, _, rows in files),
                size_bytes=sum(seal.size for _, seal, _ in files if seal is not None) or None,
                input_files=tuple(str(path) for path, _, _ in files),
                exec_stats=None,
            )
            read = functools.partial(_read_files, files, self._splits, self._window, self._checks)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks
