"""A search whose epochs exceed the object store budget streams them (real local Ray + MLflow).

On the tiny twin with a budget one byte below the epochs: ``--epochs auto`` runs every trial
on epochs it streams from the store (its final report says how many MEG rows it held at
most, within the buffer) and registers a champion; ``--epochs shared`` refuses the same
budget before any trial, from the command line, with both numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megdecode.cli import app
from megdecode.data.store import read_manifest
from megdecode.predict import load_model
from megdecode.search.driver import run_search
from megdecode.search.epoch_memory import shared_epoch_bytes
from megdecode.search.setup import SearchSetup
from megdecode.search.trial import PEAK_ROWS

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

BUFFER = 63  # the tiny twin's train split (64 rows, 32 per row group) needs two buffers
SPACE = """
name: stream
seeds: 1
num_samples: 2
max_concurrent: 2
max_epochs: 2
grace_period: 2
fixed:
  model.hidden_channels: 16
  model.merger_channels: 16
  model.fourier_freqs: 3
  model.projection_hidden: 16
  model.depth: 1
  train.batch_size: 32
  train.patience: 5
  train.tmin: 0.0
  train.tmax: 0.5
params:
  loss.lam: {type: float, low: 0.5, high: 1.0}
"""


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def _setup(run: Path, root: Path, **fields: object) -> SearchSetup:
    (root / "space.yaml").write_text(SPACE)
    need = shared_epoch_bytes(read_manifest(run / "store")).nbytes
    return SearchSetup(
        space=str(root / "space.yaml"),
        data=str(run),
        out=str(root / "out"),
        experiment="stream",
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        scheduler="fifo",
        object_store_budget_bytes=need - 1,
        **fields,  # type: ignore[arg-type]
    )


def test_auto_streams_epochs_that_exceed_the_budget_and_finishes(
    tiny_run: Path, local_ray: None, tmp_path: Path
) -> None:
    setup = _setup(tiny_run, tmp_path, epochs="auto", stream_buffer_rows=BUFFER)
    report = run_search(setup, verbose=0)
    assert report.epochs == "stream" and "epochs: stream" in report.text()
    assert report.counts == {"FINISHED": 2}
    finished = report.trials[report.trials["status"] == "FINISHED"]
    assert len(finished) == 2
    assert all(0 < peak <= BUFFER for peak in finished[PEAK_ROWS])
    assert report.champion is not None and report.best is not None
    load_model(report.best["bundle"])  # the champion's bundle loads
    saved = SearchSetup.load(setup.path)  # a resume keeps the mode and the buffer
    assert (saved.epochs, saved.stream_buffer_rows) == ("auto", BUFFER)


def test_shared_refuses_the_same_budget_before_any_trial(
    tiny_run: Path, local_ray: None, tmp_path: Path
) -> None:
    setup = _setup(tiny_run, tmp_path)
    need = shared_epoch_bytes(read_manifest(tiny_run / "store")).nbytes
    result = CliRunner().invoke(
        app,
        [
            "tune", "--space", setup.space, "--data", setup.data, "--out", setup.out,
            "--experiment", setup.experiment, "--tracking-uri", setup.tracking_uri,
            "--object-store-budget", str(need - 1), "--epochs", "shared",
        ],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "search refused before it started" in result.output
    assert f"({need} bytes)" in result.output and f"({need - 1} bytes)" in result.output
    assert not setup.path.exists()  # no search folder, hence no trial
    bad = CliRunner().invoke(app, ["tune", "--space", setup.space, "--epochs", "sometimes"])
    assert bad.exit_code == 2 and "epochs" in bad.output
