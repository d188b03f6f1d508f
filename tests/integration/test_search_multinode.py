"""A search on a two-node Ray cluster (head + one worker on this machine, loopback only).

Ray's `cluster_utils.Cluster` starts two raylets of 1 CPU each, so two concurrent trials
of 1 CPU must land on different nodes. The search is driven from the CLI (`megdecode
tune`, what `jobs/tune.py` calls) on the tiny twin:
- local paths without ``--assume-shared-fs``: refused before the Ray Data read and before
  any trial, naming the paths and both fixes;
- with ``--assume-shared-fs`` (true here: one machine): two trials, one per node, and a
  registered champion.

`storage` is the hook for other deployments: each param is a place the search's data,
Tune storage and MLflow live in ("shared-fs": local folders on a shared filesystem; an
object-store param, e.g. s3:// on moto's server with an MLflow server, goes next to it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from megdecode.cli import app

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]

SPACE = """
name: multinode
seeds: 1
num_samples: 2
max_concurrent: 2
max_epochs: 1
grace_period: 1
fixed:
  model.hidden_channels: 16
  model.merger_channels: 16
  model.fourier_freqs: 3
  model.projection_hidden: 16
  train.batch_size: 32
params:
  model.depth: {type: int, low: 1, high: 2}
"""


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Any]:
    """Head + one worker node, 1 CPU each, both on 127.0.0.1; this process attached to it."""
    import ray
    from ray.cluster_utils import Cluster

    from megdecode.raycluster import _loopback_only

    _loopback_only()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        assert sum(n["Alive"] for n in ray.nodes()) == 2
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(params=["shared-fs"])
def storage(request: pytest.FixtureRequest, tiny_run: Path, tmp_path: Path) -> SimpleNamespace:
    """Where the search reads and writes, and the CLI arguments that say so."""
    if request.param == "shared-fs":
        return SimpleNamespace(
            data=str(tiny_run),
            out=str(tmp_path / "tune"),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            args=["--assume-shared-fs"],
        )
    raise NotImplementedError(request.param)


def _tune(space: Path, data: str, out: str, tracking_uri: str, *args: str) -> Any:
    (space.parent).mkdir(parents=True, exist_ok=True)
    space.write_text(SPACE)
    argv = ["tune", "--space", str(space), "--data", data, "--out", out]
    argv += ["--tracking-uri", tracking_uri, "--experiment", "multinode", "--top-k", "2", *args]
    return CliRunner().invoke(app, argv)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stores the search read (a spy around the real `SharedEpochs.load`)."""
    from megdecode.search import driver

    seen: list[str] = []
    real = driver.SharedEpochs.load

    def load(store: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(store))
        return real(store, *args, **kwargs)

    monkeypatch.setattr(driver.SharedEpochs, "load", load)
    return seen


def test_local_paths_are_refused_before_the_read_and_any_trial(
    two_nodes: Any, tiny_run: Path, tmp_path: Path, reads: list[str]
) -> None:
    out = tmp_path / "tune"
    result = _tune(tmp_path / "space.yaml", str(tiny_run), str(out), f"sqlite:///{tmp_path}/m.db")
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "2 alive nodes" in message
    assert f"epoch store: {tiny_run.resolve() / 'store'}" in message
    assert f"Tune storage (--storage, else --out): {out}" in message
    assert f"MLflow artifacts: {tmp_path / 'mlartifacts'}" in message
    assert "NFS" in message and "--assume-shared-fs" in message
    assert "s3://" in message and "gs://" in message
    assert reads == []  # refused before the Ray Data read
    assert not (out / "multinode").exists()  # no search.json, no Tune state, no trial


def test_too_large_epochs_are_refused_with_the_bytes_needed(
    two_nodes: Any, tiny_run: Path, tmp_path: Path, reads: list[str]
) -> None:
    from megdecode.data.store import read_manifest
    from megdecode.search.epoch_memory import shared_epoch_bytes

    need = shared_epoch_bytes(read_manifest(tiny_run / "store")).nbytes
    result = _tune(
        tmp_path / "space.yaml",
        str(tiny_run),
        str(tmp_path / "tune"),
        f"sqlite:///{tmp_path}/m.db",
        "--assume-shared-fs",
        "--object-store-budget",
        str(need - 1),
    )
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert f"({need} bytes)" in message and f"({need - 1} bytes)" in message
    assert reads == [] and not (tmp_path / "tune" / "multinode").exists()


def test_trials_run_on_both_nodes_and_a_champion_is_registered(
    two_nodes: Any, storage: SimpleNamespace, tmp_path: Path
) -> None:
    import ray
    from mlflow import MlflowClient

    result = _tune(
        tmp_path / "space.yaml", storage.data, storage.out, storage.tracking_uri, *storage.args
    )
    assert result.exit_code == 0, result.output
    finals = [
        json.loads(path.read_text().splitlines()[-1])
        for path in sorted((Path(storage.out) / "multinode").glob("trial_*/result.json"))
    ]
    assert len(finals) == 2 and all(r.get("final") for r in finals)
    nodes = {r["node_id"] for r in finals}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # one trial on each node
    client = MlflowClient(tracking_uri=storage.tracking_uri, registry_uri=storage.tracking_uri)
    champion = client.get_model_version_by_alias("megdecode-brain", "champion")
    assert client.get_run(champion.run_id).info.status == "FINISHED"
