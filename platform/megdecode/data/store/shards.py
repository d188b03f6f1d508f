"""One subject's Parquet shards: the row layout, a block as a table, the subject writer.

Layout::

    store/epochs/subject=<label>/part-00000.parquet     rows_per_file epochs per part

One row per epoch. ``meg`` is a C x T float32 tensor column; the other columns are the
epoch metadata (`META_COLUMNS`, plus any extra columns of the blocks).

Why the canonical ``arrow.fixed_shape_tensor`` extension type for ``meg`` (and not Ray's
own ``ArrowTensorType``/``ArrowTensorTypeV2``): Ray Data 2.60 reads both as a tensor
column (numpy batches of shape (B, C, T)), but Ray's types are only known to processes
that imported ``ray.data``. Plain pyarrow reads them back as an untyped
``large_list<float>`` whose shape hides in Ray's JSON field metadata. The canonical type
is built into pyarrow (>= 12), so ``FixedShapeTensorArray.to_numpy_ndarray()`` gives
(N, C, T) zero-copy without Ray, and other Arrow readers (DuckDB, polars) keep the shape.

Files are large on purpose: every Ray Data read task has a fixed cost (scheduling,
opening, metadata), so thousands of tiny files read at a few hundred rows per second,
while files of ~200 MB (1024 THINGS epochs) amortise it. The meg
column is stored uncompressed: zstd saves ~7% on filtered MEG but slows reads by ~30%.

Every file written carries page checksums and a digest of its rows; the store-level
writing (staging, the manifest last) is `megdecode.data.store.write`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from megdecode import files
from megdecode.data.store.manifest import EPOCHS_DIR, META_COLUMNS, ShardFile
from megdecode.data.store.verify import (
    CONTENT_KEY,
    WRITER_OPTIONS,
    ContentDigest,
    Seal,
    StoreError,
    sha256_file,
)

SAFE_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class EpochBlockLike(Protocol):
    """What `write_store` needs from a block (`megdecode.data.preprocess.EpochBlock`)."""

    data: np.ndarray  # (N, C, T) float32
    metadata: pd.DataFrame  # N rows, `META_COLUMNS` (split and repetition included)
    ch_names: list[str]
    sfreq: float
    tmin: float
    pos2d: np.ndarray  # (C, 2)
    pos3d: np.ndarray  # (C, 3)


class SubjectWriter:
    """Buffers one subject's rows into row groups and rolls files at `rows_per_file`.

    Every file gets page checksums and, in its key-value metadata, the digest of the rows
    it holds (`megdecode.data.store.verify.CONTENT_KEY`), so that its footer identifies its content.
    """

    def __init__(
        self,
        root: str | Path,
        subject: str,
        schema: pa.Schema,
        rows_per_file: int,
        row_group_rows: int,
    ) -> None:
        self.root = root  # a local folder or an object-store URI (`megdecode.files`)
        self.dir = f"{EPOCHS_DIR}/subject={subject}"  # relative to root, POSIX
        self.subject, self.schema = subject, schema
        self.rows_per_file, self.row_group_rows = rows_per_file, row_group_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.digest = ContentDigest()
        self.file_rows = 0
        self.done: list[tuple[str, int]] = []  # (path relative to root, rows)

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= min(self.row_group_rows, self.rows_per_file - self.file_rows):
            self._flush(min(self.row_group_rows, self.rows_per_file - self.file_rows))

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)
        self._close_file()

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        chunk, rest = table.slice(0, n), table.slice(n)
        self.pending, self.pending_rows = [rest], rest.num_rows
        if self.writer is None:
            path = f"{self.dir}/part-{len(self.done):05d}.parquet"
            fs, where = files.resolve(files.join(self.root, path))
            if not files.is_uri(self.root):
                Path(where).parent.mkdir(parents=True, exist_ok=True)
            strings = [
                k
                for k, t in zip(self.schema.names, self.schema.types, strict=True)
                if t == pa.string()
            ]
            compression = {name: "zstd" for name in self.schema.names}
            compression["meg"] = "none"
            self.writer = pq.ParquetWriter(
                where,
                self.schema,
                filesystem=fs,
                compression=compression,
                use_dictionary=strings,
                **WRITER_OPTIONS,
            )
            self.digest = ContentDigest()
            self.done.append((path, 0))
        self.writer.write_table(chunk, row_group_size=n)
        self.digest.update(chunk)
        self.file_rows += n
        if self.file_rows >= self.rows_per_file:
            self._close_file()

    def _close_file(self) -> None:
        if self.writer is not None:
            self.writer.add_key_value_metadata({CONTENT_KEY: self.digest.hexdigest()})
            self.writer.close()
            self.done[-1] = (self.done[-1][0], self.file_rows)
            self.writer, self.file_rows = None, 0


def block_table(block: EpochBlockLike, schema: pa.Schema | None, index: int) -> pa.Table:
    """One block as a table: meg tensor column + metadata cast to the store schema."""
    meta = block.metadata.reset_index(drop=True)
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise StoreError(f"block {index}: metadata lacks column(s) {missing}")
    data = block.data
    if data.dtype != np.float32 or data.ndim != 3 or data.shape[0] != len(meta):
        raise StoreError(
            f"block {index}: data must be (N={len(meta)}, C, T) float32, "
            f"got {data.shape} {data.dtype}"
        )
    columns: dict[str, pa.Array] = {
        "meg": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(data))
    }
    for name, typ in META_COLUMNS.items():
        values = meta[name].astype(str) if typ == pa.string() else meta[name].astype("int64")
        columns[name] = pa.array(values, type=typ)
    for name in meta.columns.difference(list(META_COLUMNS), sort=False):
        columns[name] = pa.array(meta[name])
    table = pa.table(columns)
    if schema is None:
        return table
    if table.schema.names != schema.names:
        raise StoreError(
            f"block {index}: columns {table.schema.names} differ from the first "
            f"block's {schema.names}"
        )
    return table.cast(schema)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The first block's channels and time grid; kept instead of the block's data."""

    ch_names: list[str]
    sfreq: float
    tmin: float
    n_times: int
    pos2d: list[list[float]]
    pos3d: list[list[float]]

    @classmethod
    def of(cls, block: EpochBlockLike) -> Layout:
        return cls(list(block.ch_names), float(block.sfreq), float(block.tmin),
                   int(block.data.shape[-1]), np.asarray(block.pos2d, float).tolist(),
                   np.asarray(block.pos3d, float).tolist())  # fmt: skip

    def differences(self, other: Layout) -> list[str]:
        """What differs from `other`, each as a phrase naming the values (empty: same layout).

        Channels are compared by name and order: sensors only one side has are listed
        (`megdecode.data.sensors`), and a same-set list in another order says so.
        """
        out: list[str] = []
        if self.ch_names != other.ch_names:
            mine, theirs = set(self.ch_names), set(other.ch_names)
            missing = [c for c in other.ch_names if c not in mine]
            extra = [c for c in self.ch_names if c not in theirs]
            if missing or extra:
                out.append(
                    f"channels: {len(self.ch_names)} vs {len(other.ch_names)}"
                    + (f"; lacks {_shown(missing)}" if missing else "")
                    + (f"; has in addition {_shown(extra)}" if extra else "")
                )
            else:
                at = next(
                    i
                    for i, (a, b) in enumerate(zip(self.ch_names, other.ch_names, strict=True))
                    if a != b
                )
                out.append(
                    f"channels: the same {len(self.ch_names)} in another order (first at index "
                    f"{at}: {self.ch_names[at]!r} vs {other.ch_names[at]!r})"
                )
        for name in ("sfreq", "tmin", "n_times"):
            a, b = getattr(self, name), getattr(other, name)
            if not np.isclose(a, b):
                out.append(f"{name}: {a} vs {b}")
        if self.ch_names == other.ch_names and not np.allclose(self.pos2d, other.pos2d):
            out.append("sensor positions (pos2d) differ")
        return out

    def check(self, block: EpochBlockLike, index: int) -> None:
        """Refuse a block on another channel list or time grid, naming what differs."""
        if list(block.ch_names) != self.ch_names:
            pairs = zip(self.ch_names, block.ch_names, strict=False)
            diff = [(i, a, b) for i, (a, b) in enumerate(pairs) if a != b][:3]
            raise StoreError(
                f"block {index}: channel list differs from block 0 ({len(block.ch_names)} vs "
                f"{len(self.ch_names)} channels; first differences (index, block0, block): {diff})"
            )
        if not np.isclose(block.sfreq, self.sfreq) or not np.isclose(block.tmin, self.tmin):
            raise StoreError(
                f"block {index}: sfreq/tmin {block.sfreq}/{block.tmin} differ from "
                f"block 0's {self.sfreq}/{self.tmin}"
            )
        if block.data.shape[-1] != self.n_times:
            raise StoreError(
                f"block {index}: {block.data.shape[-1]} time samples, block 0 has {self.n_times}"
            )


def _shown(names: list[str], limit: int = 5) -> str:
    head = ", ".join(names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_sizes(rows_per_file: int, row_group_rows: int) -> None:
    """Refuse sizes that would write no rows, before any file is opened."""
    if rows_per_file < 1 or row_group_rows < 1:
        raise ValueError("rows_per_file and row_group_rows must be >= 1")


def add_table(
    root: str | Path,
    table: pa.Table,
    index: int,
    writers: dict[str, SubjectWriter],
    counts: dict[str, dict[str, int]],
    rows_per_file: int,
    row_group_rows: int,
) -> None:
    """Route one block's rows to their subjects' writers and count them per split."""
    subjects = table.column("subject").to_numpy(zero_copy_only=False)
    for subject in pd.unique(subjects):
        if not SAFE_LABEL.match(subject):
            raise StoreError(f"block {index}: subject label {subject!r} is not path-safe")
        rows = table.filter(pa.array(subjects == subject))
        if subject not in writers:
            writers[subject] = SubjectWriter(
                root, subject, table.schema, rows_per_file, row_group_rows
            )
        writers[subject].write(rows)
        per_split = counts.setdefault(subject, {})
        for split, n in pd.Series(rows.column("split").to_pylist()).value_counts().items():
            per_split[str(split)] = per_split.get(str(split), 0) + int(n)


def close_writers(root: str | Path, writers: dict[str, SubjectWriter]) -> list[ShardFile]:
    """Close every subject's last file; the manifest entries of all files, in subject order.

    Sizes and digests are read back from where the files landed (on an object store: what
    the store holds, not what this process meant to send)."""
    shards: list[ShardFile] = []
    for subject in sorted(writers):
        writers[subject].close()
        for rel, n in writers[subject].done:
            path = files.join(root, rel)
            seal = Seal.of(path)
            shards.append(
                ShardFile(rel, subject, n, sha256_file(path), seal.size, seal.footer_sha256)
            )
    return shards
