"""The object-store budget of a search on the tiny twin (real local Ray, 1 CPU).

The size estimated from the manifest alone is the size of the arrays the search loads,
and a budget below it stops a search in ``epochs="shared"`` mode before the Ray Data read,
with both numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from megdecode.data.store import read_manifest
from megdecode.search.driver import run_search
from megdecode.search.epoch_memory import (
    EpochsTooLargeError,
    check_epochs_fit,
    node_object_stores,
    shared_epoch_bytes,
)
from megdecode.search.setup import SearchSetup
from megdecode.search.shared import SharedEpochs

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=1)
    yield
    ray.shutdown()


def test_the_estimate_is_the_bytes_the_search_loads(tiny_run: Path, local_ray: None) -> None:
    store = tiny_run / "store"
    shared = SharedEpochs.load(store, tiny_run / "latents", [], reader="ray")  # the search's read
    need = shared_epoch_bytes(read_manifest(store))
    assert need.nbytes == shared.nbytes > 0
    assert need.rows == sum(len(x) for x in shared.meg.values())


def test_a_budget_below_the_epochs_is_refused_before_the_read(
    tiny_run: Path, local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from megdecode.search import driver

    read: list[Any] = []
    monkeypatch.setattr(driver.SharedEpochs, "load", lambda *a, **k: read.append(a))
    need = shared_epoch_bytes(read_manifest(tiny_run / "store")).nbytes
    setup = SearchSetup(
        space=str(REPO / "search_spaces" / "smoke.yaml"),
        data=str(tiny_run),
        out=str(tmp_path / "tune"),
        experiment="budget",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        object_store_budget_bytes=need - 1,
        epochs="shared",  # the default, "auto", streams instead (test_search_epoch_streaming)
    )
    with pytest.raises(EpochsTooLargeError) as refused:
        run_search(setup, verbose=0)
    assert f"({need} bytes)" in str(refused.value)
    assert f"({need - 1} bytes)" in str(refused.value)
    assert read == [] and not setup.path.exists()


def test_the_default_budget_is_a_fraction_of_the_nodes_object_store(
    tiny_run: Path, local_ray: None
) -> None:
    manifest = read_manifest(tiny_run / "store")
    need = shared_epoch_bytes(manifest).nbytes
    (store,) = node_object_stores()
    # need/store·store can round to need − 1 bytes; half a byte more is exact enough.
    assert check_epochs_fit(manifest, (need + 0.5) / store).nbytes == need
    with pytest.raises(EpochsTooLargeError, match=f"needs .*{need} bytes"):
        check_epochs_fit(manifest, (need - 1024) / store)
