"""Writing the epoch store: staging, the subjects' shards, the manifest written last.

Layout::

    store/manifest.json                                 written last (see `write_store`)
    store/epochs/subject=<label>/part-00000.parquet     one subject's shards (`shards`)

`write_store` writes a whole store in one process; `write_subject` and `finish_store`
write the same store with one task per subject (`megdecode.data.subject_pass`). The
Parquet layout and the per-subject writer are `megdecode.data.store.shards`.

The manifest (`megdecode.data.store.manifest`), the integrity checks
(`megdecode.data.store.verify`) and the readers (`megdecode.data.store.read`:
`load_epochs`, `load_metadata`, `read_ray_dataset`, `verify_store`) are its neighbours;
`megdecode.data.store` exports the public names of all of them. The manifest records
each file's size and footer digest: every reader refuses a file that disagrees with the
manifest, naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from megdecode import files as storage
from megdecode.data.store.manifest import FORMAT_VERSION, MANIFEST, Manifest, ShardFile
from megdecode.data.store.shards import (
    EpochBlockLike,
    Layout,
    SubjectWriter,
    add_table,
    block_table,
    check_sizes,
    close_writers,
)
from megdecode.data.store.verify import StoreError

logger = logging.getLogger(__name__)


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


@contextlib.contextmanager
def staged_store(out_dir: str | Path, overwrite: bool = False) -> Iterator[str | Path]:
    """A hidden sibling directory to write a store into; renamed to `out_dir` on success.

    A crash (or an exception in the block) removes the staging directory and never
    leaves a half-written store under the real name. Writers on other processes (the
    per-subject Ray tasks of `megdecode.data.subject_pass`) write into the same folder,
    so on a multi-node cluster it must be on storage every node sees (an object-store URI
    is: `_staged_uri`).
    """
    if storage.is_uri(out_dir):
        with _staged_uri(str(out_dir), overwrite) as staging:
            yield staging
        return
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


@contextlib.contextmanager
def _staged_uri(out_dir: str, overwrite: bool) -> Iterator[str]:
    """`staged_store` on an object store, which has no rename: a sibling prefix, then a
    server-side copy to `out_dir` with the manifest last (readers trust only what the
    manifest lists, so a reader never sees a half-copied store as complete)."""
    if storage.exists(storage.join(out_dir, MANIFEST)) and not overwrite:
        raise FileExistsError(f"store {out_dir} exists; pass overwrite=True to replace it")
    parent, name = out_dir.rstrip("/").rsplit("/", 1)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        storage.delete_dir(out_dir)
        storage.copy_dir(tmp, out_dir, last=MANIFEST)
    finally:
        storage.delete_dir(tmp)


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


def _write_into(
    root: str | Path,
    blocks: Iterable[EpochBlockLike],
    preprocess_config: Any,
    split_config: Any,
    scalers: Mapping[str, Any] | None,
    rows_per_file: int,
    row_group_rows: int,
) -> Manifest:
    check_sizes(rows_per_file, row_group_rows)
    layout: Layout | None = None
    schema: pa.Schema | None = None
    writers: dict[str, SubjectWriter] = {}
    counts: dict[str, dict[str, int]] = {}
    for index, block in enumerate(blocks):
        if layout is None:
            layout = Layout.of(block)
        else:
            layout.check(block, index)
        table = block_table(block, schema, index)
        schema = table.schema
        add_table(root, table, index, writers, counts, rows_per_file, row_group_rows)
    if layout is None:
        raise StoreError("no blocks to write")
    files = close_writers(root, writers)
    return _write_manifest(root, layout, files, counts, preprocess_config, split_config, scalers)


@dataclasses.dataclass(frozen=True)
class SubjectShards:
    """One subject's files, written into a staging store by `write_subject` (possibly in
    another process), waiting for `finish_store` to list them in the manifest."""

    subject: str
    files: list[ShardFile]
    counts: dict[str, int]  # split -> rows
    layout: Layout
    schema: pa.Schema


def write_subject(
    root: str | Path, block: EpochBlockLike, rows_per_file: int = 1024, row_group_rows: int = 256
) -> SubjectShards:
    """Write one subject's block into the staging store `root` (see `staged_store`).

    The files are those `write_store` writes for that subject (same rows, row groups and
    bytes), so subjects can be written in parallel and the store stays the same.
    """
    check_sizes(rows_per_file, row_group_rows)
    table = block_table(block, None, 0)
    labels = pd.unique(table.column("subject").to_numpy(zero_copy_only=False))
    if len(labels) != 1:
        raise StoreError(f"write_subject needs one subject per block, got {list(labels)}")
    writers: dict[str, SubjectWriter] = {}
    counts: dict[str, dict[str, int]] = {}
    add_table(root, table, 0, writers, counts, rows_per_file, row_group_rows)
    subject = str(labels[0])
    return SubjectShards(subject, close_writers(root, writers), counts[subject],
                         Layout.of(block), table.schema)  # fmt: skip


def finish_store(
    root: str | Path,
    parts: Sequence[SubjectShards],
    *,
    preprocess_config: Any = None,
    split_config: Any = None,
    scalers: Mapping[str, Any] | None = None,
    compensation_grade: Mapping[str, int | None] | None = None,
    dropped: Mapping[str, Mapping[str, int]] | None = None,
) -> Manifest:
    """The manifest over the subjects written by `write_subject`, written last into `root`.

    `compensation_grade` and `dropped` (per subject) are recorded as given.

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
    for part in parts[1:]:
        if part.layout != first.layout:
            what = "; ".join(part.layout.differences(first.layout)) or "layout differs"
            raise StoreError(
                f"subject {part.subject} cannot share a store with {first.subject}: {what} "
                f"(subject {part.subject} vs {first.subject}); preprocess them into separate "
                "stores or with the same channels and window"
            )
        if not part.schema.equals(first.schema):
            raise StoreError(
                f"subject {part.subject}: columns {part.schema} differ from {first.subject}'s "
                f"{first.schema}"
            )
    files = [f for part in parts for f in part.files]
    counts = {part.subject: dict(part.counts) for part in parts}
    return _write_manifest(
        root, first.layout, files, counts, preprocess_config, split_config, scalers,
        recording={
            "compensation_grade": dict(compensation_grade or {}),
            "dropped": {k: dict(v) for k, v in (dropped or {}).items()},
        },
    )  # fmt: skip


def _write_manifest(
    root: str | Path,
    layout: Layout,
    files: list[ShardFile],
    counts: dict[str, dict[str, int]],
    preprocess_config: Any,
    split_config: Any,
    scalers: Mapping[str, Any] | None,
    recording: Mapping[str, Any] | None = None,
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
        **dict(recording or {}),
    )
    storage.write_text(storage.join(root, MANIFEST), manifest.to_json())
    return manifest
