"""The epoch store on an object store (moto's S3 server on 127.0.0.1): the same manifest,
checksums and refusals as on local disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures import stores
from fixtures.s3 import S3Server
from megdecode import files
from megdecode.data import store as epoch_store


def _blocks(seed: int = 0) -> list:
    return [stores.block("BIGMEG1", 9, seed), stores.block("BIGMEG2", 7, seed + 100)]


def test_write_read_verify_on_s3_match_local(s3_server: S3Server, tmp_path: Path) -> None:
    local = stores.write_tiny_store(tmp_path / "store")
    uri = s3_server.uri("stores/tiny")
    remote = epoch_store.write_store(uri, _blocks(), rows_per_file=4, row_group_rows=2)
    here = epoch_store.read_manifest(local)
    assert [(f.path, f.sha256, f.size, f.footer_sha256) for f in remote.files] == [
        (f.path, f.sha256, f.size, f.footer_sha256) for f in here.files
    ]  # byte-identical shards
    assert epoch_store.read_manifest(uri).files == remote.files
    assert epoch_store.verify_store(uri).n_epochs == 16
    X, meta = epoch_store.load_epochs(uri, splits=["train"], tmin=0.0)
    X0, meta0 = epoch_store.load_epochs(local, splits=["train"], tmin=0.0)
    np.testing.assert_array_equal(X, X0)
    assert meta.equals(meta0)
    assert epoch_store.load_metadata(uri).equals(epoch_store.load_metadata(local))
    assert not [p for p in files.fsspec_fs(uri).ls(f"{s3_server.bucket}/stores") if ".tmp-" in p]
    with pytest.raises(FileExistsError, match="stores/tiny"):
        epoch_store.write_store(uri, _blocks())


def test_rewriting_an_s3_store_replaces_it(s3_server: S3Server) -> None:
    uri = s3_server.uri("stores/rewrite")
    epoch_store.write_store(uri, _blocks(), rows_per_file=4, row_group_rows=2)
    epoch_store.write_store(uri, _blocks(seed=5), rows_per_file=100, overwrite=True)
    assert len(epoch_store.verify_store(uri).files) == 2  # no file of the first store is left


@pytest.mark.parametrize("corruption", sorted(stores.CORRUPTIONS))
def test_a_corrupt_s3_shard_is_refused_naming_its_uri(
    s3_server: S3Server, tmp_path: Path, corruption: str
) -> None:
    store = stores.write_tiny_store(tmp_path / "store")
    other = stores.write_tiny_store(tmp_path / "other", seed=1)
    stores.CORRUPTIONS[corruption](store, other)
    uri = s3_server.uri(f"corrupt/{corruption}")
    files.put_dir(store, uri, last=epoch_store.MANIFEST)
    bad = files.join(uri, epoch_store.read_manifest(store).files[1].path)
    with pytest.raises(epoch_store.StoreError, match=bad.replace("=", "=")):
        epoch_store.load_epochs(uri)
    shutil.rmtree(store)
