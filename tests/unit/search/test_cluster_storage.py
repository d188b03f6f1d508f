"""The multi-node shared-storage refusal (`search.cluster_storage.storage_problem`), every case."""

from __future__ import annotations

import itertools

import pytest

from megdecode.search.cluster_storage import _is_uri, storage_problem

LOCAL = "/run/dir/store"
URI = "s3://bucket/run/store"


@pytest.mark.parametrize(
    ("path", "uri"),
    [
        ("s3://bucket/x", True),
        ("gs://bucket/x", True),
        ("http://mlflow:5000", True),
        ("abfs+x://c/x", True),
        ("/abs/path", False),
        ("relative/path", False),
        ("file:///abs/path", False),  # a local folder written as a URI
        ("C:/data", False),
        ("s3:/bucket", False),
        ("", False),
    ],
)
def test_is_uri(path: str, uri: bool) -> None:
    assert _is_uri(path) is uri


@pytest.mark.parametrize(
    ("nodes", "store", "out", "artifacts", "shared"),
    list(
        itertools.product(
            [1, 2, 5], [LOCAL, URI], ["/run/dir/tune", URI], [None, "/a", URI], [False, True]
        )
    ),
)
def test_refused_exactly_when_several_nodes_see_a_local_path_without_the_flag(
    nodes: int, store: str, out: str, artifacts: str | None, shared: bool
) -> None:
    paths = {"epoch store": store, "Tune storage": out, "MLflow artifacts": artifacts}
    local = [p for p in paths.values() if p is not None and not p.startswith("s3://")]
    problem = storage_problem(nodes, paths, shared)
    assert (problem is not None) == (nodes > 1 and not shared and bool(local))
    if problem is not None:
        assert f"{nodes} alive nodes" in problem
        for what, path in paths.items():  # names each local path, and only those
            assert (f"{what}: {path}" in problem) == (path in local)
        assert "NFS" in problem and "--assume-shared-fs" in problem
        assert "s3://" in problem and "gs://" in problem
        for option in ("--data s3://", "--storage s3://", "--artifact-root s3://"):
            assert option in problem  # the options that put each place on object storage
        assert "MLflow tracking server (--tracking-uri http://" in problem


def test_no_alive_node_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one alive node"):
        storage_problem(0, {"epoch store": LOCAL}, False)
