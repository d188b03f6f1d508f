"""Every stage on object storage, end to end, against a real S3 server (moto's, 127.0.0.1).

The tiny twin's BIDS root is uploaded to ``s3://<bucket>/bids``; then, as a user would
type them (`megdecode` sub-commands driven with argv lists): preprocess to
``s3://.../run/store``, latents to ``s3://.../run/latents``, a 2-trial search of the smoke
space with Tune's storage and MLflow's artifacts on S3 (the SQLite db stays local), the
champion registered, and Serve loading ``models:/megdecode-brain@champion`` (its files in
S3) and decoding one window. The same pipeline on local disk runs next to it; both wall
times are printed. moto, Ray and Serve are stopped by the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import Result
from typer.testing import CliRunner

from fixtures.s3 import S3Server
from megdecode import files
from megdecode.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.serve, pytest.mark.mlflow]

REPO = Path(__file__).resolve().parents[2]


def _invoke(argv: list[str]) -> Result:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _smoke_space(tmp: Path) -> Path:
    """search_spaces/smoke.yaml cut to 2 trials x 1 seed x 2 epochs: a search, not a study."""
    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    space |= {"num_samples": 2, "seeds": 1, "max_epochs": 2, "grace_period": 1}
    path = tmp / "smoke-2.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _pipeline(bids: str, run: str, storage: str, artifacts: str, tmp: Path) -> str:
    """preprocess -> latents -> search (registers the champion); returns the tracking URI."""
    from megdecode.twin.truth_latents import write_twin_latents

    tmp.mkdir(parents=True, exist_ok=True)
    store, latents = files.join(run, "store"), files.join(run, "latents")
    _invoke(["preprocess", "--bids", bids, "--out", store, "--no-ray"])
    _invoke(["latents", "--store", store, "--bids", bids, "--out", latents])
    with files.local_copy(bids, include=_truth_files(bids)) as local:
        write_twin_latents(local, latents)  # the smoke space's target: the twin's own factors
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    _invoke([
        "tune", "--space", str(_smoke_space(tmp)), "--data", run, "--out", str(tmp / "report"),
        "--storage", storage, "--artifact-root", artifacts, "--tracking-uri", tracking,
        "--experiment", "objstore", "--max-concurrent", "1", "--scheduler", "fifo",
    ])  # fmt: skip
    return tracking


def _truth_files(bids: str) -> list[str]:
    """The twin's ground-truth files (`twin.truth_latents` reads them), relative to the root."""
    from megdecode.twin.bids_writer import TRUTH_DIR

    folder = TRUTH_DIR.as_posix()
    return [f"{folder}/{n}" for n in files.listdir(files.join(bids, folder))]


def _serve_and_decode(tracking: str) -> dict:
    """Serve the registered champion on 127.0.0.1 and decode one window of its shape."""
    import numpy as np
    from ray import serve

    from megdecode.model_registry import resolve_bundle
    from megdecode.serve.app import free_port, start
    from megdecode.serve.config import ServeConfig

    model = "models:/megdecode-brain@champion"
    cfg = ServeConfig.from_mapping(
        {
            "app_name": "objstore",
            "http": {"port": free_port()},
            "decoder": {"model": model, "tracking_uri": tracking},
        }
    )
    from megdecode.bundle_io import load_bundle

    bundle = load_bundle(resolve_bundle(model, tracking)[0])
    x = np.random.default_rng(0).standard_normal((len(bundle.ch_names), bundle.n_times))
    try:
        url = start(cfg, token="")
        r = requests.post(
            f"{url}/v1/decode", json={"subject": bundle.subjects[0], "data": x.tolist()}, timeout=60
        )
        assert r.status_code == 200, r.text
        return dict(r.json())
    finally:
        serve.shutdown()


@pytest.fixture()
def no_ray() -> Iterator[None]:
    """Each pipeline starts (and its CLI stops) its own local Ray; Serve's is stopped here,
    and the artifact root `megdecode tune --artifact-root` put in os.environ is removed."""
    import os

    import ray

    from megdecode.tracking import ARTIFACT_ENV

    yield
    ray.shutdown()
    os.environ.pop(ARTIFACT_ENV, None)


def test_every_stage_on_s3_then_the_same_on_local_disk(
    s3_server: S3Server, tiny_run: Path, tmp_path: Path, no_ray: None
) -> None:
    import ray

    started = time.perf_counter()
    bids = s3_server.uri("e2e/bids")
    files.put_dir(tiny_run / "bids", bids)
    upload_s = time.perf_counter() - started

    started = time.perf_counter()
    tracking = _pipeline(
        bids,
        s3_server.uri("e2e/run"),
        s3_server.uri("e2e/tune"),
        s3_server.uri("e2e/mlartifacts"),
        tmp_path / "s3",
    )
    ray.shutdown()
    decoded = _serve_and_decode(tracking)
    ray.shutdown()
    s3_s = time.perf_counter() - started
    assert decoded
    held = files.fsspec_fs(bids).find(f"{s3_server.bucket}/e2e")
    assert any("/e2e/run/store/manifest.json" in k for k in held)
    assert any("/e2e/run/latents/twin-lowlevel.parquet" in k for k in held)
    assert any(k.endswith("tuner.pkl") and "/e2e/tune/objstore/" in k for k in held)
    assert any("/e2e/mlartifacts/" in k and k.endswith("bundle.json") for k in held)
    assert not (tmp_path / "s3" / "mlartifacts").exists()  # nothing fell back to local disk

    started = time.perf_counter()
    local = tmp_path / "local"
    tracking = _pipeline(
        str(tiny_run / "bids"),
        str(local / "run"),
        str(local / "tune"),
        str(local / "mlartifacts"),
        local,
    )
    ray.shutdown()
    assert _serve_and_decode(tracking).keys() == decoded.keys()
    local_s = time.perf_counter() - started
    print(
        f"\nobject storage e2e: upload {upload_s:.1f} s; pipeline on S3 (moto) {s3_s:.1f} s, "
        f"on local disk {local_s:.1f} s"
    )
