"""The store read row group by row group: which rows each group holds, and one group's MEG.

`load_epochs` reads a whole selection into one array; a reader that must hold only part of
it at a time (a streamed training split, `megdecode.rundata_stream`) plans its reads with
`plan_row_groups` instead, then reads one row group at a time through `RowGroupReader`.
Both go through the same checks (`megdecode.data.store.verify`): the plan reads the
metadata with every file's seal checked and its pages' CRCs verified; the reader checks the
seals again before each pass and every MEG page's CRC as it decodes it (in slices of
`DECODE_ROWS`, which bounds pyarrow's own memory), and refuses a row group that decodes to
fewer rows than its footer lists. A bad file raises `StoreError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from megdecode import files
from megdecode.data.store.manifest import Manifest, ShardFile, read_manifest
from megdecode.data.store.read import _concat, _read_metadata, _select_files, check_files
from megdecode.data.store.verify import (
    DEFAULT_CHECKS,
    ReadChecks,
    StoreError,
    open_parquet,
    reading,
)

DECODE_ROWS = 32  # rows decoded at a time: ~6 MB of THINGS epochs, ~70 MB of pyarrow peak


@dataclass(frozen=True)
class RowGroupRows:
    """The rows a reader keeps from one row group of one shard file.

    offsets: (k,) increasing positions of the kept rows within the group; `rows` is the
    group's size in the footer (what `read_rows` checks the decoded columns against).
    """

    path: str  # the file: a local path or a URI (`megdecode.files`)
    group: int
    rows: int
    offsets: np.ndarray

    @property
    def kept(self) -> int:
        return len(self.offsets)


def plan_row_groups(
    store: str | Path,
    splits: Sequence[str] | None = None,
    subjects: Sequence[str] | None = None,
    *,
    checks: ReadChecks = DEFAULT_CHECKS,
) -> tuple[pd.DataFrame, list[RowGroupRows]]:
    """The metadata `load_epochs` returns for the same selection, and the row groups that hold it.

    Row groups come in store order and only those with kept rows; their `offsets`, laid end
    to end, are the metadata's rows (N rows = sum of `kept`). No MEG page is read.
    """
    manifest = read_manifest(store)
    shards = _select_files(manifest, subjects)
    check_files(store, manifest, shards, checks)
    metas, masks = _read_metadata(store, shards, splits, checks)
    plan: list[RowGroupRows] = []
    for shard, mask in zip(shards, masks, strict=True):
        path = str(files.join(store, shard.path))
        footer = open_parquet(path, checks.pages).metadata
        start = 0
        for group in range(footer.num_row_groups):
            rows = footer.row_group(group).num_rows
            kept = np.flatnonzero(mask[start : start + rows])
            if len(kept):
                plan.append(RowGroupRows(path, group, rows, kept))
            start += rows
        if start != len(mask):
            raise StoreError(
                f"store file {path}: row groups hold {start} rows, its metadata {len(mask)}"
            )
    return _concat(metas), plan


class RowGroupReader:
    """Reads the MEG of planned row groups, at a window, through the verified readers.

    `start_pass` checks every file's seal (size, magic, footer digest: a few KB per file), so
    a file replaced between two passes is refused; `read` decodes one row group's MEG column
    with page CRCs checked. Files stay open for the pass (a URI is opened once, not once per
    group). `rows_read` counts the MEG rows returned, for tests and benchmarks.
    """

    def __init__(
        self,
        store: str | Path,
        window: slice,
        manifest: Manifest | None = None,
        subjects: Sequence[str] | None = None,
        checks: ReadChecks = DEFAULT_CHECKS,
    ) -> None:
        self.store, self.window, self.checks = store, window, checks
        self.manifest = manifest or read_manifest(store)
        self.shards: list[ShardFile] = _select_files(self.manifest, subjects)
        self._open: dict[str, pq.ParquetFile] = {}
        self.rows_read = 0

    def start_pass(self) -> None:
        """Check the files' seals and forget the files opened by the previous pass."""
        self._open.clear()
        check_files(self.store, self.manifest, self.shards, self.checks)

    def end_pass(self) -> None:
        """Close the files of the pass."""
        self._open.clear()

    def read(self, part: RowGroupRows, out: np.ndarray | None = None) -> np.ndarray:
        """(k, C, T_window) float32 of the kept rows of one row group, written into `out`
        (k rows, e.g. a slice of the caller's buffer) or a new array.

        The group is decoded `DECODE_ROWS` rows at a time: pyarrow's decode of a whole
        group peaks at ~5x its size (~250 MB for 256 THINGS epochs), a slice at a fraction.
        A group that decodes to fewer rows than its footer lists (a page skipped for a
        damaged header) is refused, as `read_rows` does.
        """
        pf = self._open.get(part.path)
        if pf is None:
            # no pre-buffering: an open file would keep its last row group's raw bytes
            pf = self._open[part.path] = open_parquet(part.path, self.checks.pages, False)
        if pf.metadata.row_group(part.group).num_rows != part.rows:
            raise StoreError(
                f"store file {part.path}: row group {part.group} holds "
                f"{pf.metadata.row_group(part.group).num_rows} rows, the plan {part.rows}"
            )
        n_times = self.window.stop - self.window.start
        shape = (part.kept, len(self.manifest.ch_names), n_times)
        if out is None:
            out = np.empty(shape, np.float32)
        elif out.shape != shape:
            raise ValueError(f"out: expected shape {shape}, got {out.shape}")
        at = seen = 0
        with reading(part.path):
            slices = pf.iter_batches(DECODE_ROWS, row_groups=[part.group], columns=["meg"])
            for batch in slices:
                n = batch.num_rows
                lo, hi = np.searchsorted(part.offsets, [seen, seen + n])
                if hi > lo:
                    tensor = batch.column(0).to_numpy_ndarray()[:, :, self.window]
                    out[at : at + hi - lo] = tensor[part.offsets[lo:hi] - seen]
                    at += int(hi - lo)
                seen += n
        if seen != part.rows or at != part.kept:
            raise StoreError(
                f"store file {part.path} is corrupt: row group {part.group} decodes to {seen} "
                f"MEG rows, its footer lists {part.rows}"
            )
        self.rows_read += len(out)
        return out
