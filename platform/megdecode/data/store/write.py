"""Writing the epoch store: preprocessed MEG epochs as Parquet shards plus a manifest.

Layout::

    store/manifest.json                                 written last (see `write_store`)
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

This module writes stores. The manifest (`megdecode.data.store.manifest`), the integrity
checks (`megdecode.data.store.verify`) and the readers (`megdecode.data.store.read`:
`load_epochs`, `load_metadata`, `read_ray_dataset`, `verify_store`) are its neighbours;
`megdecode.data.store` exports the public names of all four. Every file written carries page
checksums and a digest of its rows, and the manifest records each file's size and footer
digest: every reader refuses a file that disagrees with the manifest, naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from megdecode.data.store.manifest import (
    EPOCHS_DIR,
    FORMAT_VERSION,
    MANIFEST,
    META_COLUMNS,
    Manifest,
    ShardFile,
)
from megdecode.data.store.verify import (
    CONTENT_KEY,
    WRITER_OPTIONS,
    ContentDigest,
    Seal,
    StoreError,
    sha256_file,
)

logger = logging.getLogger(__name__)

_SAFE_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class EpochBlockLike(Protocol):
    """What `write_store` needs from a block (`megdecode.data.preprocess.EpochBlock`)."""

    data: np.ndarray  # (N, C, T) float32
    metadata: pd.DataFrame  # N rows, `META_COLUMNS` (split and repetition included)
    ch_names: list[str]
    sfreq: float
    tmin: float
    pos2d: np.ndarray  # (C, 2)
    pos3d: np.ndarray  # (C, 3)


def _flat(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "to_flat_dict"):
        return dict(config.to_flat_dict())
    return dict(config)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class _SubjectWriter:
    """Buffers one subject's rows into row groups and rolls files at `rows_per_file`.

    Every file gets page checksums and, in its key-value metadata, the digest of the rows
    it holds (`megdecode.data.store.verify.CONTENT_KEY`), so that its footer identifies its content.
    """

    def __init__(
        self, root: Path, subject: str, schema: pa.Schema, rows_per_file: int, row_group_rows: int
    ) -> None:
        self.dir = root / EPOCHS_DIR / f"subject={subject}"
        self.subject, self.schema = subject, schema
        self.rows_per_file, self.row_group_rows = rows_per_file, row_group_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.digest = ContentDigest()
        self.file_rows = 0
        self.done: list[tuple[Path, int]] = []

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
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"part-{len(self.done):05d}.parquet"
            strings = [
                k
                for k, t in zip(self.schema.names, self.schema.types, strict=True)
                if t == pa.string()
            ]
            compression = {name: "zstd" for name in self.schema.names}
            compression["meg"] = "none"
            self.writer = pq.ParquetWriter(
                path,
                self.schema,
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


def _block_table(block: EpochBlockLike, schema: pa.Schema | None, index: int) -> pa.Table:
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
class _Layout:
    """The first block's channels and time grid; kept instead of the block's data."""

    ch_names: list[str]
    sfreq: float
    tmin: float
    n_times: int
    pos2d: list[list[float]]
    pos3d: list[list[float]]

    @classmethod
    def of(cls, block: EpochBlockLike) -> _Layout:
        return cls(list(block.ch_names), float(block.sfreq), float(block.tmin),
                   int(block.data.shape[-1]), np.asarray(block.pos2d, float).tolist(),
                   np.asarray(block.pos3d, float).tolist())  # fmt: skip

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


@contextlib.contextmanager
def staged_store(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A hidden sibling directory to write a store into; renamed to `out_dir` on success.

    A crash (or an exception in the block) removes the staging directory and never
    leaves a half-written store under the real name. Writers on other processes (the
    per-subject Ray tasks of `megdecode.data.subject_pass`) write into the same folder,
    so on a multi-node cluster it must be on storage every node sees.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"store {out_dir} exists; pass overwrite=True to replace it")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_store(
    out_dir: str | Path,
    blocks: Iterable[EpochBlockLike],
    *,
    preprocess_config: Any = None,
    split_config: Any = None,
    scalers: Mapping[str, Any] | None = None,
    rows_per_file: int = 1024,
    row_group_rows: int = 256,
    overwrite: bool = False,
) -> Manifest:
    """Write `blocks` as a store at `out_dir` and return its manifest.

    Everything goes to a hidden sibling directory first, manifest last, which is then
    renamed to `out_dir` (`staged_store`). Blocks may interleave subjects (one block per
    run, as a Ray job yields them); each subject keeps one open file. Defaults: 1024 rows
    of 272 x 181 float32 ~ 200 MB/file.
    """
    with staged_store(out_dir, overwrite) as tmp:
        manifest = _write_into(
            tmp, blocks, preprocess_config, split_config, scalers, rows_per_file, row_group_rows
        )
    logger.info(
        "wrote store %s: %d epochs, %d files", out_dir, manifest.n_epochs, len(manifest.files)
    )
    return manifest


def _check_sizes(rows_per_file: int, row_group_rows: int) -> None:
    if rows_per_file < 1 or row_group_rows < 1:
        raise ValueError("rows_per_file and row_group_rows must be >= 1")


def _add_table(
    root: Path,
    table: pa.Table,
    index: int,
    writers: dict[str, _SubjectWriter],
    counts: dict[str, dict[str, int]],
    rows_per_file: int,
    row_group_rows: int,
) -> None:
    """Route one block's rows to their subjects' writers and count them per split."""
    subjects = table.column("subject").to_numpy(zero_copy_only=False)
    for subject in pd.unique(subjects):
        if not _SAFE_LABEL.match(subject):
            raise StoreError(f"block {index}: subject label {subject!r} is not path-safe")
        rows = table.filter(pa.array(subjects == subject))
        if subject not in writers:
            writers[subject] = _SubjectWriter(
                root, subject, table.schema, rows_per_file, row_group_rows
            )
        writers[subject].write(rows)
        per_split = counts.setdefault(subject, {})
        for split, n in pd.Series(rows.column("split").to_pylist()).value_counts().items():
            per_split[str(split)] = per_split.get(str(split), 0) + int(n)


def _close_writers(root: Path, writers: dict[str, _SubjectWriter]) -> list[ShardFile]:
    files: list[ShardFile] = []
    for subject in sorted(writers):
        writers[subject].close()
        for path, n in writers[subject].done:
            seal = Seal.of(path)
            files.append(
                ShardFile(
                    path.relative_to(root).as_posix(),
                    subject,
                    n,
                    sha256_file(path),
                    seal.size,
                    seal.footer_sha256,
                )
            )
    return files


def _write_into(
    root: Path,
    blocks: Iterable[EpochBlockLike],
    preprocess_config: Any,
    split_config: Any,
    scalers: Mapping[str, Any] | None,
    rows_per_file: int,
    row_group_rows: int,
) -> Manifest:
    _check_sizes(rows_per_file, row_group_rows)
    layout: _Layout | None = None
    schema: pa.Schema | None = None
    writers: dict[str, _SubjectWriter] = {}
    counts: dict[str, dict[str, int]] = {}
    for index, block in enumerate(blocks):
        if layout is None:
            layout = _Layout.of(block)
        else:
            layout.check(block, index)
        table = _block_table(block, schema, index)
        schema = table.schema
        _add_table(root, table, index, writers, counts, rows_per_file, row_group_rows)
    if layout is None:
        raise StoreError("no blocks to write")
    files = _close_writers(root, writers)
    return _write_manifest(root, layout, files, counts, preprocess_config, split_config, scalers)


@dataclasses.dataclass(frozen=True)
class SubjectShards:
    """One subject's files, written into a staging store by `write_subject` (possibly in
    another process), waiting for `finish_store` to list them in the manifest."""

    subject: str
    files: list[ShardFile]
    counts: dict[str, int]  # split -> rows
    layout: _Layout
    schema: pa.Schema


def write_subject(
    root: str | Path, block: EpochBlockLike, rows_per_file: int = 1024, row_group_rows: int = 256
) -> SubjectShards:
    """Write one subject's block into the staging store `root` (see `staged_store`).

    The files are those `write_store` writes for that subject (same rows, row groups and
    bytes), so subjects can be written in parallel and the store stays the same.
    """
    root = Path(root)
    _check_sizes(rows_per_file, row_group_rows)
    table = _block_table(block, None, 0)
    labels = pd.unique(table.column("subject").to_numpy(zero_copy_only=False))
    if len(labels) != 1:
        raise StoreError(f"write_subject needs one subject per block, got {list(labels)}")
    writers: dict[str, _SubjectWriter] = {}
    counts: dict[str, dict[str, int]] = {}
    _add_table(root, table, 0, writers, counts, rows_per_file, row_group_rows)
    subject = str(labels[0])
    return SubjectShards(subject, _close_writers(root, writers), counts[subject],
                         _Layout.of(block), table.schema)  # fmt: skip


def finish_store(
    root: str | Path,
    parts: Sequence[SubjectShards],
    *,
    preprocess_config: Any = None,
    split_config: Any = None,
    scalers: Mapping[str, Any] | None = None,
) -> Manifest:
    """The manifest over the subjects written by `write_subject`, written last into `root`.

    Refuses parts on another channel list, time grid or column schema than the first
    subject's (in label order), as `write_store` refuses such blocks.
    """
    parts = sorted(parts, key=lambda p: p.subject)
    if not parts:
        raise StoreError("no blocks to write")
    labels = [p.subject for p in parts]
    if len(set(labels)) != len(labels):
        raise StoreError(f"subjects written twice: {labels}")
    first = parts[0]
    for index, part in enumerate(parts[1:], start=1):
        if part.layout != first.layout:
            raise StoreError(
                f"subject {part.subject}: channels or time grid differ from {first.subject}'s "
                f"(block {index} vs block 0)"
            )
        if not part.schema.equals(first.schema):
            raise StoreError(
                f"subject {part.subject}: columns {part.schema} differ from {first.subject}'s "
                f"{first.schema}"
            )
    files = [f for part in parts for f in part.files]
    counts = {part.subject: dict(part.counts) for part in parts}
    root = Path(root)
    return _write_manifest(
        root, first.layout, files, counts, preprocess_config, split_config, scalers
    )


def _write_manifest(
    root: Path,
    layout: _Layout,
    files: list[ShardFile],
    counts: dict[str, dict[str, int]],
    preprocess_config: Any,
    split_config: Any,
    scalers: Mapping[str, Any] | None,
) -> Manifest:
    from megdecode import __version__

    manifest = Manifest(
        format_version=FORMAT_VERSION,
        sfreq=layout.sfreq,
        tmin=layout.tmin,
        times=[layout.tmin + i / layout.sfreq for i in range(layout.n_times)],
        ch_names=layout.ch_names,
        pos2d=layout.pos2d,
        pos3d=layout.pos3d,
        preprocess=_flat(preprocess_config),
        splits=_flat(split_config),
        scalers=_jsonable(dict(scalers or {})),
        subjects=sorted(counts),
        counts=counts,
        files=files,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        megdecode_version=__version__,
    )
    (root / MANIFEST).write_text(manifest.to_json())
    return manifest
