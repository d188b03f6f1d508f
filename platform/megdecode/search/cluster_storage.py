"""Refuse, before any read or trial, a local path that another node of the cluster cannot see.

A search touches three places from the cluster's workers: the epoch store (Ray Data read
tasks run on any node), the Tune storage path (trials write their checkpoints there) and
the MLflow artifact location. On one machine a local folder is fine. On a cluster of
several nodes a local folder of the head is usually absent on the workers, and the
failure comes late and far from its cause (a Ray Data ``FileNotFoundError`` in a read
task, a checkpoint Tune cannot sync): so the search refuses up front, naming the paths
and the two fixes. ``assume_shared_fs`` is the way out for a shared mount (NFS) that
Ray cannot detect.

`storage_problem` is the decision (pure, tested on every case); `check_storage` asks the
running Ray cluster how many nodes are alive and raises `SharedStorageError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

logger = logging.getLogger(__name__)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class SharedStorageError(RuntimeError):
    """A multi-node search was given a local path that worker nodes may not see."""


def _is_uri(path: str) -> bool:
    """Whether `path` names object storage or a server (``scheme://…``), not a local folder.

    ``file://`` is a local folder written as a URI, so it counts as local.
    """
    return bool(_SCHEME.match(path)) and not path.lower().startswith("file://")


def storage_problem(
    nodes: int, paths: Mapping[str, str | None], assume_shared_fs: bool
) -> str | None:
    """The refusal message for a search on `nodes` alive nodes, or None when it may go on.

    paths: what each place is ("epoch store", "Tune storage", ...) -> its path or URI;
    None where a place has no path of ours (an MLflow server keeps its own artifacts).
    """
    if nodes < 1:
        raise ValueError(f"nodes: a running cluster has at least one alive node, got {nodes}")
    if nodes == 1 or assume_shared_fs:
        return None
    local = {what: p for what, p in paths.items() if p is not None and not _is_uri(p)}
    if not local:
        return None
    named = "; ".join(f"{what}: {p}" for what, p in local.items())
    return (
        f"the Ray cluster has {nodes} alive nodes, and these are local paths that worker "
        f"nodes may not see: {named}. Either mount them on a shared filesystem (e.g. NFS) "
        "visible at the same path on every node and pass --assume-shared-fs, or use "
        "object storage (s3://bucket/… or gs://bucket/…): --data s3://bucket/run, "
        "--storage s3://bucket/tune and --artifact-root s3://bucket/mlartifacts, or an "
        "MLflow tracking server (--tracking-uri http://HOST:5000) that keeps the artifacts"
    )


def alive_nodes() -> int:
    """Alive nodes of the Ray cluster this process is attached to."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_storage(paths: Mapping[str, str | None], assume_shared_fs: bool) -> None:
    """Raise `SharedStorageError` when `storage_problem` refuses on the running cluster."""
    nodes = alive_nodes()
    problem = storage_problem(nodes, paths, assume_shared_fs)
    if problem is not None:
        raise SharedStorageError(problem)
    if nodes > 1 and assume_shared_fs:
        logger.info("%d nodes; assuming every path is shared (--assume-shared-fs)", nodes)
