"""Preprocessing a BIDS root that lives on an object store (moto's S3 on 127.0.0.1): the
runs found, the epoch store written, both the same as from the local root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.s3 import S3Server
from megdecode import files
from megdecode.data import bids, bids_remote
from megdecode.data import store as epoch_store
from megdecode.data.build import build_epoch_store


@pytest.mark.slow  # ~30 s: the tiny twin uploaded, preprocessed twice
def test_runs_and_store_from_s3_match_the_local_root(
    s3_server: S3Server, tiny_run: Path, tmp_path: Path
) -> None:
    local = tiny_run / "bids"
    uri = s3_server.uri("bids-remote/bids")
    files.put_dir(local, uri)
    keys = bids.find_runs(local)
    assert bids_remote.find_runs(uri) == keys
    assert bids_remote.find_runs(uri, subjects=[keys[0].subject]) == [
        k for k in keys if k.subject == keys[0].subject
    ]
    with bids_remote.fetched_run(uri, keys[0]) as fetched:
        got = sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file())
        assert not [p for p in got if p.startswith("stimuli/")]  # the run's files, not the images
        assert bids.read_run(fetched, keys[0]).raw.n_times > 0
    out = s3_server.uri("bids-remote/store")
    report = build_epoch_store(uri, out, cache_dir=tmp_path / "runs")
    assert report.n_runs == len(keys)
    X, meta = epoch_store.load_epochs(out)
    X0, meta0 = epoch_store.load_epochs(tiny_run / "store")
    np.testing.assert_array_equal(X, X0)
    assert meta.equals(meta0)
    # a rebuild reuses the run cache: the fingerprints of the objects did not change
    assert build_epoch_store(uri, out, cache_dir=tmp_path / "runs").n_runs_reused == len(keys)
