"""`megdecode.files` against a real S3 server (moto's, on 127.0.0.1), and on local disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from fixtures.s3 import S3Server
from megdecode import files


def test_is_uri_and_join(tmp_path: Path) -> None:
    assert files.is_uri("s3://b/k") and files.is_uri("gs://b/k")
    assert not files.is_uri("/data/store") and not files.is_uri(tmp_path)
    assert files.join("s3://b/run/", "store", "manifest.json") == "s3://b/run/store/manifest.json"
    assert files.join(tmp_path, "a", "b") == str(tmp_path / "a" / "b")


def test_resolve_local(tmp_path: Path) -> None:
    fs, inner = files.resolve(tmp_path / "x")
    assert isinstance(fs, pafs.LocalFileSystem) and inner == str((tmp_path / "x").resolve())


def test_roundtrip_on_s3(s3_server: S3Server, tmp_path: Path) -> None:
    uri = s3_server.uri("files/a.txt")
    fs, inner = files.resolve(uri)
    assert isinstance(fs, pafs.S3FileSystem) and inner == f"{s3_server.bucket}/files/a.txt"
    assert not files.exists(uri)
    files.write_text(uri, "hello")
    assert files.exists(uri) and files.exists(s3_server.uri("files"))
    assert files.read_text(uri) == "hello"
    with files.open_input(uri) as fh:
        assert fh.size() == 5
        fh.seek(1)
        assert fh.read(2) == b"el"
    with pytest.raises(FileNotFoundError, match="files/missing"):
        files.open_input(s3_server.uri("files/missing"))


def test_put_dir_and_local_copy(s3_server: S3Server, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    (src / "last.json").write_text("{}")
    uri = s3_server.uri("tree")
    files.put_dir(src, uri, last="last.json")
    with files.local_copy(uri) as local:
        assert (local / "sub" / "b.bin").read_bytes() == b"\x00\x01"
        assert (local / "last.json").read_text() == "{}"
    assert not local.exists()  # the temporary copy is removed
    with files.local_copy(uri, include=["sub/b.bin"]) as local:
        assert sorted(p.name for p in local.rglob("*") if p.is_file()) == ["b.bin"]
    with files.local_copy(files.join(uri, "last.json")) as one:
        assert one.name == "last.json" and one.read_text() == "{}"
    with files.local_copy(src) as same:  # a local path is used in place
        assert same == src
    fsspec = files.fsspec_fs(uri)
    assert sorted(fsspec.find(f"{s3_server.bucket}/tree")) == [
        f"{s3_server.bucket}/tree/last.json",
        f"{s3_server.bucket}/tree/sub/b.bin",
    ]
    files.delete_dir(uri)
    assert not files.exists(uri)


def test_unknown_bucket_is_named(s3_server: S3Server) -> None:
    with pytest.raises(files.StorageError, match=r"s3://no-such-bucket/x.*AWS_ENDPOINT_URL"):
        files.check_access("s3://no-such-bucket/x")


def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from megdecode.serve.app import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    start = time.perf_counter()
    with pytest.raises(files.StorageError, match=r"s3://bucket/store.*AWS_ACCESS_KEY_ID"):
        files.exists("s3://bucket/store/manifest.json")
    assert time.perf_counter() - start < 15


def test_no_credentials_never_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key in the environment or in files, EC2 metadata not disabled: the SDK's chain
    gives up at once and the error (here: nobody at the endpoint) names the URI and the
    variables, within seconds. (moto accepts any key, so a refused key is not testable.)"""
    from megdecode.serve.app import free_port

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    start = time.perf_counter()
    with pytest.raises(files.StorageError, match=r"s3://bucket/x.*AWS_ACCESS_KEY_ID"):
        files.check_access("s3://bucket/x")
    assert time.perf_counter() - start < 15


def test_storage_env_ships_keys_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime_env is shown by Ray's dashboard: the AWS keys go into it only on request."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv(files.SHIP_SECRETS_ENV, raising=False)
    env = files.storage_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env
    monkeypatch.setenv(files.SHIP_SECRETS_ENV, "1")
    assert files.storage_env()["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert files.storage_env(include_secrets=False).keys() == env.keys()
