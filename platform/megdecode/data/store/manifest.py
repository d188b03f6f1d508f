"""The epoch store's manifest: what a store holds and what each of its files must be.

``store/manifest.json`` is written last (`megdecode.data.store.write_store`); a reader
trusts nothing that it does not list: per file its path, subject, rows, sha256, size and
footer sha256 (`megdecode.data.store.verify`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from megdecode import files
from megdecode.data.store.verify import Seal, StoreError

FORMAT_VERSION = 2  # 2: page checksums, per-file size + footer sha256, content digest
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
EPOCHS_DIR = "epochs"
META_COLUMNS: dict[str, pa.DataType] = {
    "subject": pa.string(), "session": pa.string(), "run": pa.string(),
    "trial_index": pa.int64(), "image_id": pa.int64(), "category_id": pa.int64(),
    "category": pa.string(), "trial_type": pa.string(), "image_path": pa.string(),
    "split": pa.string(), "repetition": pa.int64(), "onset_sample": pa.int64(),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """One Parquet file of the store, as the manifest lists it."""

    path: str  # relative to the store root, POSIX separators
    subject: str
    rows: int
    sha256: str  # of the whole file (`verify_store`)
    size: int | None = None  # bytes; None in format-1 stores
    footer_sha256: str | None = None  # of the Parquet footer (`verify.Seal`)

    @property
    def seal(self) -> Seal | None:
        if self.size is None or self.footer_sha256 is None:
            return None
        return Seal(self.size, self.footer_sha256)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything needed to interpret the shards without reopening the raw data."""

    format_version: int
    sfreq: float
    tmin: float
    times: list[float]  # (T,) seconds relative to image onset
    ch_names: list[str]  # (C,)
    pos2d: list[list[float]]  # (C, 2)
    pos3d: list[list[float]]  # (C, 3)
    preprocess: dict[str, Any]  # flat PreprocessConfig
    splits: dict[str, Any]  # flat SplitConfig
    scalers: dict[str, Any]  # subject -> scaler stats (e.g. per-channel median, iqr)
    subjects: list[str]
    counts: dict[str, dict[str, int]]  # subject -> split -> rows
    files: list[ShardFile]
    created_at: str
    megdecode_version: str
    # subject -> CTF gradient compensation grade of its recordings, kept as recorded (None:
    # no compensation in the files); {} in stores written before it was recorded
    compensation_grade: dict[str, int | None] = dataclasses.field(default_factory=dict)
    # subject -> reason ("catch", "edge", "gap") -> epochs left out by the preprocessing
    dropped: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    @property
    def n_epochs(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def row_counts(self) -> dict[str, int]:
        """Rows per subject."""
        return {s: sum(c.values()) for s, c in self.counts.items()}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format_version") not in READABLE_VERSIONS:
            version = raw.get("format_version") if isinstance(raw, dict) else None
            raise StoreError(f"store format_version {version!r} is not one of {READABLE_VERSIONS}")
        raw["files"] = [ShardFile(**f) for f in raw["files"]]
        return cls(**raw)


def read_manifest(store: str | Path) -> Manifest:
    """The store's manifest; a missing one is a FileNotFoundError, a garbled one a StoreError."""
    path = files.join(store, MANIFEST)
    if not files.exists(path):
        raise FileNotFoundError(f"no epoch store manifest at {path}")
    try:
        return Manifest.from_json(files.read_text(path))
    except StoreError as exc:
        raise StoreError(f"{path}: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:  # not JSON, or not a manifest's fields
        raise StoreError(f"{path} is not a readable store manifest: {exc}") from exc
