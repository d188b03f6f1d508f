"""The stages a user runs, as `megdecode` sub-commands driven with argv lists on the tiny twin:
register, train-generator and reconstruct (evaluate --generate: test_generate_eval.py).

One module-scoped setup (a 1-epoch bundle, a random-init generator, an MLflow run holding
the bundle, registered once through `megdecode register`) keeps it cheap.
"""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from fixtures.configs import SMALL_BRAIN
from megdecode.bundle_io import load_bundle
from megdecode.cli import app
from megdecode.generate import build_tiny_generator
from megdecode.train import fit
from megdecode.train_config import FitConfig, TrainConfig

pytestmark = [pytest.mark.mlflow]

REPO = Path(__file__).resolve().parents[2]


def _invoke(argv: list[str]) -> Result:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@dataclass
class Stage:
    bundle: Path
    generator: Path
    window: Path
    uri: str
    run_id: str
    registered: Result  # `megdecode register` of run_id as tiny-brain@staging


@pytest.fixture(scope="module")
def stage(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Stage:
    from megdecode.tracking import Tracker

    root = tmp_path_factory.mktemp("cli_stages")
    torch.set_num_threads(1)
    cfg = FitConfig(
        store=str(tiny_run / "store"),
        latents_dir=str(tiny_run / "latents"),
        model=SMALL_BRAIN,
        train=TrainConfig(max_epochs=1, batch_size=32, tmin=0.0, tmax=0.5),
    )
    bundle = fit(cfg, out_dir=root / "bundle").bundle_path
    assert bundle is not None
    b = load_bundle(bundle)
    generator = build_tiny_generator(root / "gen", {b.latent_name: len(b.latent_mean)}, size=16)
    x = np.random.default_rng(0).standard_normal((len(b.ch_names), b.n_times)).astype(np.float32)
    window = root / "window.json"
    window.write_text(json.dumps({"subject": b.subjects[0], "data": x.tolist()}))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "cli-stages")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.log_artifacts(run_id, bundle, "seed0/bundle")
    registered = _invoke(
        [
            "register",
            "--tracking-uri",
            uri,
            "--run-id",
            run_id,
            "--name",
            "tiny-brain",
            "--alias",
            "staging",
        ]
    )
    return Stage(bundle, generator, window, uri, run_id, registered)


def test_help_lists_every_stage() -> None:
    out = _invoke(["--help"]).output
    for command in (
        "simulate",
        "preprocess",
        "latents",
        "train",
        "tune",
        "register",
        "serve",
        "train-generator",
        "reconstruct",
        "evaluate",
    ):
        assert f" {command} " in out, command
    assert "--generate" in _invoke(["evaluate", "--help"]).output


def test_register_promotes_the_runs_bundle(stage: Stage, tmp_path: Path) -> None:
    from megdecode.model_registry import resolve_bundle
    from megdecode.tracking import Tracker

    tracker = Tracker(stage.uri)
    version = tracker.client.get_model_version_by_alias("tiny-brain", "staging")
    assert (
        f"tiny-brain version {version.version} -> @staging (run {stage.run_id})"
        in stage.registered.output
    )
    assert version.run_id == stage.run_id
    staged = load_bundle(
        resolve_bundle("models:/tiny-brain@staging", stage.uri, tmp_path / "staged")[0]
    )
    assert staged.prediction_stats is not None and staged.prediction_stats.reference == "val"
    missing = CliRunner().invoke(
        app, ["register", "--tracking-uri", stage.uri, "--run-id", "no-such-run"]
    )
    assert missing.exit_code == 1 and "cannot register run no-such-run" in missing.output


def test_reconstruct_from_a_folder_or_the_registry_gives_the_same_png(
    stage: Stage, tmp_path: Path
) -> None:
    common = [
        "--generator",
        str(stage.generator),
        "--window",
        str(stage.window),
        "--seed",
        "2",
        "--steps",
        "2",
    ]
    _invoke(
        ["reconstruct", "--bundle", str(stage.bundle), *common, "--out", str(tmp_path / "a.png")]
    )
    printed = _invoke(
        [
            "reconstruct",
            "--model",
            "models:/tiny-brain@staging",
            "--tracking-uri",
            stage.uri,
            *common,
            "--out",
            str(tmp_path / "b.png"),
        ]
    ).output
    assert (
        "model tiny-brain version" in printed
        and "z-scored with the bundle's val statistics" in printed
    )
    png = (tmp_path / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "b.png").read_bytes() == png
    both = CliRunner().invoke(
        app, ["reconstruct", "--bundle", str(stage.bundle), "--model", "models:/x@y", *common]
    )
    assert both.exit_code == 2 and "one of --bundle or --model" in both.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"subject": "BIGMEG1", "data": [[0.0, 1.0]]}))
    wrong = CliRunner().invoke(
        app, ["reconstruct", "--bundle", str(stage.bundle), *common[:2], "--window", str(bad)]
    )
    assert (
        wrong.exit_code == 2
        and "the model needs" in wrong.output
        and "Traceback" not in wrong.output
    )
    nowhere = CliRunner().invoke(app, ["reconstruct", "--bundle", str(tmp_path / "none"), *common])
    assert nowhere.exit_code == 1 and "no model bundle at" in nowhere.output


def test_train_generator_writes_a_trained_folder(tiny_run: Path, tmp_path: Path) -> None:
    from megdecode.generate.train import load_trained

    out = tmp_path / "gen"
    printed = _invoke(
        [
            "train-generator",
            "--data",
            str(tiny_run),
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--max-seconds",
            "0",
            "--size",
            "16",
            "--patch",
            "2",
            "--channels",
            "16,32",
            "--no-coords",
        ]
    ).output
    assert f"generator -> {out}" in printed
    gen = load_trained(out)
    meta = json.loads((out / "generator.json").read_text())
    assert meta["trained"]["steps"] == 2 and meta["arch"]["coords"] is False and not gen.coords
    assert tuple(gen.unet.config.block_out_channels) == (16, 32)
    assert [
        im.size
        for im in gen.generate(
            {"handcrafted": np.zeros((1, gen.conditions["handcrafted"]), np.float32)}, steps=1
        )
    ] == [(16, 16)]
    bad = CliRunner().invoke(app, ["train-generator", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "give --data" in bad.output


def test_register_job_is_the_register_command(stage: Stage) -> None:
    """jobs/register.py forwards to `megdecode register` and returns its exit status."""
    import sys

    sys.path.insert(0, str(REPO / "jobs"))
    try:
        main = runpy.run_path(str(REPO / "jobs" / "register.py"), run_name="job")["main"]
    finally:
        sys.path.remove(str(REPO / "jobs"))
    assert (
        main(["--run-id", stage.run_id]) == 2
    )  # --tracking-uri missing: a usage error, exit status 2
