"""The generation evaluation job on the tiny twin: real brain module, local Ray, SQLite MLflow.

A tiny brain module (1 epoch) and a random-init generator stand in for trained ones: the
test checks the plumbing (decode -> post-process -> Ray actor pool -> metrics -> table,
grid, MLflow run), not image quality.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from megdecode.generate import build_tiny_generator
from megdecode.generate.evaluate import LARGE_KIND
from megdecode.models.brain import BrainConfig
from megdecode.train import FitConfig, TrainConfig, fit

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

REPO = Path(__file__).resolve().parents[2]
SMALL = BrainConfig(hidden_channels=16, merger_channels=16, fourier_freqs=3, depth=1, projection_hidden=16)


@pytest.fixture(scope="module")
def bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = FitConfig(store=str(tiny_run / "store"), latents_dir=str(tiny_run / "latents"), model=SMALL,
                        train=TrainConfig(max_epochs=1, batch_size=32, tmin=0.0, tmax=0.5))
        out = tmp_path_factory.mktemp("bundle") / "b"
        fit(cfg, out_dir=out)
    finally:
        torch.set_num_threads(threads)
    return out


def _run_job(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "jobs"))
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *args])
    runpy.run_path(str(REPO / "jobs" / "evaluate.py"), run_name="__main__")


@pytest.mark.parametrize("from_registry", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_generate_job_writes_table_grid_and_mlflow_run(tiny_run: Path, bundle: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, from_registry: bool) -> None:
    from mlflow import MlflowClient

    from megdecode.bundle import load_bundle
    from megdecode.tracking import Tracker

    dim = len(load_bundle(bundle).latent_mean)
    gen = build_tiny_generator(tmp_path / "gen", {"handcrafted": dim}, size=16)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    source = str(bundle)
    if from_registry:  # registering costs ~30 s on a busy machine: slow suite only
        tracker = Tracker(uri, "brain")
        run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
        tracker.register_bundle(run_id, bundle, name="tiny-brain", alias="champion")
        source = "models:/tiny-brain@champion"

    out = tmp_path / "eval"
    _run_job(["--generate", "--bundle", source, "--generator", str(gen),
              "--bids", str(tiny_run / "bids"), "--out", str(out), "--tracking-uri", uri,
              "--max-images", "4", "--steps", "2", "--num-cpus", "2"], monkeypatch)

    table = pd.read_csv(out / "metrics.csv")
    assert table["kind"].tolist() == ["single", "averaged", "oracle", "random"]
    assert {"pixcorr", "ssim"} <= set(table.columns)
    assert table.loc[table.kind == "oracle", "n"].item() == 4
    assert table.loc[table.kind == "single", "n"].item() >= 4  # one row per trial
    assert table[["pixcorr", "ssim"]].abs().le(1.0).all().all()
    assert table.loc[table.kind == "oracle", "latent_r"].item() == pytest.approx(1.0)  # the truth vs itself
    fidelity = pd.read_csv(out / "latent_fidelity.csv")
    # every drawn kind, plus the large test set's single trials (scored, not drawn)
    assert fidelity.groupby("kind").size().to_dict() == dict.fromkeys([*table["kind"], LARGE_KIND],
                                                                        fidelity.dimension.nunique())
    assert Image.open(out / "latent_fidelity.png").width > 0
    grid = Image.open(out / "grid.png")
    assert grid.width >= 5 * 96 and grid.height >= 3 * 96  # seen + 4 reconstructions; best/middle/worst
    recon = np.load(out / "reconstructions.npz")
    assert recon["oracle"].shape == (4, 16, 16, 3)

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("megdecode-generate").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = runs[0].data.metrics
    assert logged["gen/oracle/ssim"] == pytest.approx(table.loc[table.kind == "oracle", "ssim"].item())
    assert logged["gen/test_large/latent_r"] == pytest.approx(fidelity.loc[fidelity.kind == LARGE_KIND, "r"].mean())
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "figures")}
    assert {"figures/grid.png", "figures/latent_fidelity.png"} <= artifacts
    assert "tables/generate_metrics.csv" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "tables")}


def test_generator_must_match_the_bundle_latent(tiny_run: Path, bundle: Path, tmp_path: Path) -> None:
    from megdecode.generate.evaluate import GenEvalConfig, evaluate_generation

    gen = build_tiny_generator(tmp_path / "gen", {"clip-vision": 8})
    cfg = GenEvalConfig(bundle=str(bundle), generator=str(gen), bids_root=str(tiny_run / "bids"),
                        out=str(tmp_path / "o"), max_images=2)
    with pytest.raises(ValueError, match="conditioned on \\['clip-vision'\\]"):
        evaluate_generation(cfg, bundle)
    with pytest.raises(FileNotFoundError, match="no weights at"):
        evaluate_generation(cfg.replace(generator=str(tmp_path / "none")), bundle)


def test_multi_target_bundle_feeds_the_generator_its_own_latents(tiny_run: Path, tmp_path: Path) -> None:
    """A bundle decoding handcrafted+twin-lowlevel drives a generator conditioned on
    twin-lowlevel only: the evaluation splits the decoded target and passes the part the
    generator needs; only the requested kinds are generated."""
    import shutil

    import ray

    from megdecode.generate.evaluate import GenEvalConfig, evaluate_generation
    from megdecode.latents.twin import write_twin_latents
    from megdecode.raycluster import init_ray

    latents = tmp_path / "latents"
    latents.mkdir()
    shutil.copy(tiny_run / "latents" / "handcrafted.parquet", latents)
    write_twin_latents(tiny_run / "bids", latents)
    torch.set_num_threads(1)
    cfg = FitConfig(store=str(tiny_run / "store"), latents_dir=str(latents), model=SMALL,
                    train=TrainConfig(max_epochs=1, batch_size=32, tmin=0.0, tmax=0.5,
                                      latent="handcrafted+twin-lowlevel"))
    bundle = fit(cfg, out_dir=tmp_path / "multi").bundle_path
    assert bundle is not None
    gen = build_tiny_generator(tmp_path / "gen", {"twin-lowlevel": 11}, size=16)
    ecfg = GenEvalConfig(bundle=str(bundle), generator=str(gen), bids_root=str(tiny_run / "bids"),
                         out=str(tmp_path / "o"), max_images=3, kinds=("averaged", "oracle"), actors=1)
    ecfg = ecfg.replace(generate=ecfg.generate.replace(steps=2))
    init_ray(num_cpus=2)
    try:
        table, grid = evaluate_generation(ecfg, bundle)
    finally:
        ray.shutdown()
    assert table["kind"].tolist() == ["averaged", "oracle"]
    assert table.loc[table.kind == "oracle", "n"].item() == 3
    recon = np.load(tmp_path / "o" / "reconstructions.npz")
    assert set(recon.files) == {"averaged", "oracle", "averaged_image_ids", "oracle_image_ids"}
    assert Image.open(grid).width >= 3 * 96  # seen + oracle + averaged
    with pytest.raises(ValueError, match="kinds must be"):
        GenEvalConfig(kinds=("everything",))
