"""The README's main job on the tiny twin: simulate -> preprocess -> store -> latents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from megdecode.cli import app
from megdecode.data import store as epoch_store


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--size", "tiny", "--no-ray", "--no-tune"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_demo_writes_store_latents_and_summary(demo_out: Path) -> None:
    summary = json.loads((demo_out / "summary.json").read_text())
    manifest = epoch_store.read_manifest(demo_out / "store")
    epoch_store.verify_store(demo_out / "store")
    assert summary["preprocess"]["n_epochs"] == sum(manifest.row_counts.values())
    assert summary["preprocess"]["n_times"] == 181  # -0.5..1.0 s at 120 Hz
    assert manifest.sfreq == 120.0
    X, meta = epoch_store.load_epochs(demo_out / "store")
    assert X.dtype == np.float32 and X.shape[1:] == (len(manifest.ch_names), 181)
    assert np.abs(X).max() <= 20.0
    assert "catch" not in set(meta["trial_type"])
    assert {"train", "val", "test", "test_large"} <= set(meta["split"])
    assert set(summary["stages"]) == {"simulate", "preprocess", "latents"}
    assert {Path(p).name for p in summary["latents"][1:]} == {
        "twin-lowlevel.parquet",
        "twin-category.parquet",
    }
    latents = summary["latents"][0]
    assert latents["name"] == "handcrafted"
    # every shown image plus the twin's never-shown distractors (the large set's extras)
    assert latents["n_distractors"] > 0
    assert latents["n_images"] == meta["image_id"].nunique() + latents["n_distractors"]


def test_store_from_ray_equals_local(demo_out: Path, tmp_path: Path) -> None:
    """One Ray task per run gives bit-identical shards to the local loop."""
    result = CliRunner().invoke(
        app,
        ["preprocess", "--bids", str(demo_out / "bids"), "--out", str(tmp_path / "store"), "--ray"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    X_local, meta_local = epoch_store.load_epochs(demo_out / "store")
    X_ray, meta_ray = epoch_store.load_epochs(tmp_path / "store")
    assert np.array_equal(X_local, X_ray)
    assert meta_local.equals(meta_ray)


TINY_SPACE = """
name: tiny-demo
seeds: 2
num_samples: 2
max_concurrent: 1
max_epochs: 2
grace_period: 1
fixed:
  train.latent: twin-lowlevel
  train.tmin: 0.0
  train.tmax: 0.5
  train.batch_size: 32
  model.hidden_channels: 16
  model.merger_channels: 16
  model.fourier_freqs: 3
  model.projection_hidden: 16
params:
  model.depth: {type: int, low: 1, high: 2}
  loss.lam: {type: float, low: 0.5, high: 1.0}
"""


@pytest.mark.slow
def test_the_whole_chain_search_register_serve_and_reconstruct(tmp_path: Path) -> None:
    """`megdecode demo` end to end on the tiny twin: a 2-trial search, the champion served
    over HTTP, a generator trained briefly and test images reconstructed from decoded MEG."""
    (tmp_path / "space.yaml").write_text(TINY_SPACE)
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--out",
            str(out),
            "--size",
            "tiny",
            "--space",
            str(tmp_path / "space.yaml"),
            "--generator-seconds",
            "5",
            "--generator-steps",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output[-4000:] + repr(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == [
        "simulate",
        "preprocess",
        "latents",
        "tune",
        "serve",
        "reconstruct",
    ]
    assert [row["kind"] for row in summary["reconstruct"]] == ["averaged", "oracle", "random"]
    assert (out / "reconstructions" / "grid.png").stat().st_size > 1000
    assert json.loads((out / "generator" / "generator.json").read_text())["conditions"].keys() == {
        "twin-lowlevel"
    }
    assert summary["tune"]["champion"] == "models:/megdecode-brain@champion"
    assert (out / "champion" / "bundle.json").exists()
    assert len(summary["serve"]) == 5 and all(r["latency_ms"] > 0 for r in summary["serve"])
    body = json.loads((out / "window.json").read_text())
    assert len(body["data"][0]) == 61  # 0..0.5 s at 120 Hz
    import ray

    assert not ray.is_initialized()  # the demo stopped the cluster it started
