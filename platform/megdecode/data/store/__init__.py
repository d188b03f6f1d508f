"""The epoch store: preprocessed MEG epochs as Parquet shards plus a manifest (DESIGN §3).

`manifest` says what a store holds and what each file must be, `write` builds stores
(each subject's Parquet files through `shards`), `read` and `ray_read` return epochs only
after `verify` has checked the bytes against the manifest. The names below are the store's public API: ``from megdecode.data import store``.
"""

from megdecode.data.store.manifest import (
    EPOCHS_DIR,
    FORMAT_VERSION,
    MANIFEST,
    META_COLUMNS,
    Manifest,
    ShardFile,
    read_manifest,
)
from megdecode.data.store.read import (
    check_files,
    load_epochs,
    load_metadata,
    read_ray_dataset,
    verify_store,
    window_slice,
)
from megdecode.data.store.shards import EpochBlockLike
from megdecode.data.store.verify import MissingShardError, ReadChecks, StoreError, sha256_file
from megdecode.data.store.write import (
    SubjectShards,
    finish_store,
    staged_store,
    write_store,
    write_subject,
)

__all__ = [
    "EPOCHS_DIR",
    "FORMAT_VERSION",
    "MANIFEST",
    "META_COLUMNS",
    "EpochBlockLike",
    "Manifest",
    "MissingShardError",
    "ReadChecks",
    "ShardFile",
    "StoreError",
    "SubjectShards",
    "check_files",
    "finish_store",
    "load_epochs",
    "load_metadata",
    "read_manifest",
    "read_ray_dataset",
    "sha256_file",
    "staged_store",
    "verify_store",
    "window_slice",
    "write_store",
    "write_subject",
]
