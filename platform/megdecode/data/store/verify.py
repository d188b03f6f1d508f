"""Integrity of the epoch store's shard files, cheap enough to check on every read.

A full sha256 of every shard (`check_sha256`, `megdecode.data.store.verify_store`) reads
every byte: ~21 GB for THINGS-MEG, minutes before each search. Readers instead check, per
file they open (`ReadChecks`, the default):

- its size against the manifest: a truncated or appended-to file is refused before
  anything is parsed;
- the Parquet magic at both ends and the sha256 of its footer (Thrift FileMetaData, its
  length and the trailing magic: the last few KB) against the manifest. The footer holds
  the schema, every row group's offsets, sizes and statistics, and the shard's content
  digest (`CONTENT_KEY`, below);
- every page it decodes: the writers set ``write_page_checksum`` (`WRITER_OPTIONS`), so each
  data and dictionary page carries a CRC32 of its bytes, and readers open files with
  ``page_checksum_verification`` (`open_parquet`): a CRC over bytes being read anyway. A
  reader checks the pages it reads: metadata-only reads skip the MEG pages.

Why a content digest in each shard's key-value metadata rather than a random store id:
two stores built with other seeds or parameters can hold files of the same layout (same
shapes, sizes, offsets, even footer statistics). The digest of the rows a file holds
differs whenever the rows do, so the footers differ too and a file copied from another
store fails the footer check, while a rebuild from the same inputs stays byte-identical
(the build's tests compare stores byte for byte; a random id would break that).

What the cheap checks do not see: the Thrift page headers between pages (page sizes,
value counts, encodings, page statistics) carry no checksum in Parquet. A flip there
makes decoding fail, or skips the page (a damaged page type: the column comes back short,
which `read_rows` refuses), or leaves the decoded values unchanged (statistics, unused
fields). tests/unit/test_store_verify.py flips bits of a small shard one at a time (every
bit of every byte in its slow test) and finds no flip that changes what a reader returns.
`check_sha256` remains the explicit full check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from megdecode import files

MAGIC = b"PAR1"
TAIL = 8  # little-endian uint32 footer length + MAGIC
CONTENT_KEY = "megdecode.content_sha256"
WRITER_OPTIONS: dict[str, Any] = {"write_page_checksum": True}


class StoreError(ValueError):
    """The store (or a block written to it) is inconsistent; the message says where."""


class MissingShardError(StoreError, FileNotFoundError):
    """A file the manifest lists is not there (a `StoreError` and a `FileNotFoundError`)."""


@dataclasses.dataclass(frozen=True)
class ReadChecks:
    """What a store reader checks before it returns rows.

    seals: each file's size, magic and footer sha256 against the manifest (a few KB per
        file); pages: each page's CRC32 as it is decoded; full: the sha256 of every
        selected file before reading (reads everything twice: the explicit full check).
    Turning checks off exists to measure what they cost (benchmarks/store_read.py).
    """

    seals: bool = True
    pages: bool = True
    full: bool = False


DEFAULT_CHECKS = ReadChecks()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (local or a URI), read in 4 MiB chunks (shards are hundreds of MB)."""
    digest = hashlib.sha256()
    with files.open_input(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _open(path: str | Path) -> Iterator[Any]:
    """`path` open for reading (local or a URI: a seekable `pyarrow.NativeFile`)."""
    try:
        fh = files.open_input(path)
    except FileNotFoundError:
        raise MissingShardError(f"store file {path} listed in the manifest is missing") from None
    except OSError as exc:
        raise StoreError(f"store file {path} cannot be opened: {exc}") from exc
    with fh:
        yield fh


def _footer(fh: Any, size: int, path: str | Path) -> bytes:
    """The footer bytes (FileMetaData + length + magic); refuses a file that has none."""
    if size < len(MAGIC) + TAIL:
        raise StoreError(f"store file {path} is truncated: {size} bytes is no Parquet file")
    fh.seek(size - TAIL)
    tail = fh.read(TAIL)
    if tail[4:] != MAGIC:
        raise StoreError(
            f"store file {path} does not end in the Parquet magic (truncated or overwritten)"
        )
    length = int.from_bytes(tail[:4], "little")
    if length + TAIL + len(MAGIC) > size:
        raise StoreError(
            f"store file {path}: footer length {length} exceeds the file ({size} bytes)"
        )
    fh.seek(size - TAIL - length)
    return bytes(fh.read(length)) + tail


@dataclasses.dataclass(frozen=True)
class Seal:
    """What the manifest records of a file for the cheap check: its size and footer digest."""

    size: int
    footer_sha256: str

    @classmethod
    def of(cls, path: str | Path) -> Seal:
        with _open(path) as fh:
            size = fh.size()
            return cls(size, hashlib.sha256(_footer(fh, size, path)).hexdigest())

    def check(self, path: str | Path) -> None:
        """Refuse `path` unless its size, magic and footer are those the manifest recorded."""
        with _open(path) as fh:
            size = fh.size()
            if size != self.size:
                raise StoreError(
                    f"store file {path} is {size} bytes, the manifest says {self.size} "
                    "(truncated, appended to or replaced)"
                )
            if fh.read(len(MAGIC)) != MAGIC:
                raise StoreError(f"store file {path} does not start with the Parquet magic")
            if hashlib.sha256(_footer(fh, size, path)).hexdigest() != self.footer_sha256:
                raise StoreError(
                    f"store file {path} is corrupt or comes from another store: its Parquet "
                    "footer does not match the manifest"
                )


def check_sha256(path: str | Path, expected: str) -> None:
    """The full check: refuse `path` unless its sha256 is `expected`."""
    if not files.exists(path):
        raise MissingShardError(f"store file {path} listed in the manifest is missing")
    if sha256_file(path) != expected:
        raise StoreError(f"store file {path} is corrupt: sha256 does not match the manifest")


def open_parquet(path: str | Path, pages: bool = True, pre_buffer: bool = True) -> pq.ParquetFile:
    """The file for reading, every page's CRC checked as it is decoded (when `pages`).

    pre_buffer: pyarrow's coalesced reads (fewer requests to an object store); the file
    then keeps the raw bytes of the last row group it read, so a reader that holds files
    open for long passes False.
    """
    with reading(path):
        source = files.open_input(path) if files.is_uri(path) else path
        return pq.ParquetFile(source, page_checksum_verification=pages, pre_buffer=pre_buffer)


def read_rows(
    pf: pq.ParquetFile, path: str | Path, columns: list[str] | None = None, group: int | None = None
) -> pa.Table:
    """Row group `group` of `pf` (or the whole file), every column as long as the footer says.

    Why the length check: a page whose header's type field is damaged is skipped by the
    reader as an unknown page type, with no error and no CRC to fail, and the column then
    comes back short; counting rows turns that into a refusal.
    """
    with reading(path):
        table = (
            pf.read(columns=columns) if group is None else pf.read_row_group(group, columns=columns)
        )
    meta = pf.metadata
    expected = meta.num_rows if group is None else meta.row_group(group).num_rows
    short = [
        name
        for name, col in zip(table.column_names, table.columns, strict=True)
        if len(col) != expected
    ]
    if short or table.num_rows != expected:
        where = "" if group is None else f" row group {group}"
        raise StoreError(
            f"store file {path} is corrupt:{where} column(s) {short or table.column_names} do not "
            f"hold the {expected} rows its footer lists"
        )
    return table


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Errors of decoding `path` as a `StoreError` naming it.

    pyarrow reports a page whose CRC does not match as ``OSError: could not verify page
    integrity, CRC checksum verification failed`` and a damaged header or footer as
    ``ArrowInvalid``/``OSError``, none of which names the file; in a Ray worker the file
    would otherwise be lost altogether.
    """
    try:
        yield
    except StoreError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"store file {path} is corrupt: {exc}") from exc


class ContentDigest:
    """sha256 of the rows written to one file, row group by row group (`CONTENT_KEY`).

    Each row group is hashed as Arrow IPC of the combined table: the same rows give the
    same bytes however they were chunked in memory (`write_store` and `write_subject`
    slice blocks differently), other rows give other bytes.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, table: pa.Table) -> None:
        combined = table.combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, combined.schema) as writer:
            writer.write_table(combined)
        self._digest.update(sink.getvalue())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
