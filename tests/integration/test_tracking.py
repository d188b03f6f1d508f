"""MLflow tracking on a real SQLite store: trial/seed runs, idempotence, failure, registry.

One store per module: creating an MLflow SQLite database runs its migrations (~10 s).
Every MLflow path (store, artifacts, downloads, cwd) points into the test's tmp folder.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import get_model_info

from fixtures.configs import bundle_brain
from fixtures.s3 import S3Server
from megdecode.bundle import ModelBundle
from megdecode.bundle_fields import FitRecord, GalleryMeta, LatentPart, LossState
from megdecode.bundle_io import load_bundle, save_bundle
from megdecode.model_registry import RegistryInfo, register_bundle, resolve_bundle
from megdecode.models.brain import BrainModule
from megdecode.predict import load_model
from megdecode.tracking import (
    TAG_COMMIT,
    TAG_DATA,
    TAG_PARENT,
    TAG_SEED,
    Tracker,
    default_tracking_uri,
    store_checksum,
)

pytestmark = pytest.mark.mlflow

REPO = Path(__file__).resolve().parents[2]
C, T, F = 6, 13, 5


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tracking store in tmp, with MLflow's env pointing there for the whole module."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = default_tracking_uri(root)
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TMPDIR": str(root / "tmp"),
    }
    (root / "tmp").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(root)
        mp.setattr("tempfile.tempdir", None)  # re-read TMPDIR
        yield root


@pytest.fixture(scope="module")
def tracker(store_dir: Path) -> Tracker:
    return Tracker(default_tracking_uri(store_dir), "search-test")


def _fake_store(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"format_version": 1, "files": {"a": "0" * 64}}))
    return path


def _bundle(path: Path) -> Path:
    """A tiny valid bundle, as in tests/unit/test_bundle.py."""
    cfg = bundle_brain(C, T, n_subjects=2, out_dim=F)
    torch.manual_seed(0)
    pos = np.random.default_rng(0).uniform(0, 1, (C, 2)).astype(np.float32)
    rng = np.random.default_rng(1)
    return save_bundle(
        ModelBundle(
            model_config=cfg.to_flat_dict(),
            state_dict=BrainModule(cfg, pos).state_dict(),
            loss=LossState(2.5, learned=True),
            tmin=0.0,
            tmax=0.1,
            sfreq=120.0,
            n_times=T,
            ch_names=[f"M{i}" for i in range(C)],
            pos2d=pos,
            subjects=["BIGMEG1", "BIGMEG2"],
            latent_name="handcrafted",
            latent_parts=[LatentPart("handcrafted", F)],
            latent_mean=rng.normal(size=F).astype(np.float32),
            latent_std=np.ones(F, np.float32),
            gallery=rng.normal(size=(4, F)).astype(np.float32),
            gallery_ids=np.arange(4, dtype=np.int64),
            gallery_meta=GalleryMeta.blank(4),
            fit_config=FitRecord({}),
            metrics={"test/top5": 0.5},
        ),
        path,
    )


def test_uris_and_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEGDECODE_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MEGDECODE_TRACKING_URI", "http://mlflow.internal:5000")
    assert default_tracking_uri(tmp_path) == "http://mlflow.internal:5000"
    for bad in ("file:///tmp/mlruns", str(tmp_path / "mlruns")):
        with pytest.raises(ValueError, match="file store"):
            Tracker(bad, "x")
    store = _fake_store(tmp_path / "store")
    first = store_checksum(store)
    (store / "manifest.json").write_text("{}")
    assert store_checksum(store) != first and len(first) == 64
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        store_checksum(tmp_path)


def test_trial_with_two_seed_runs(tracker: Tracker, tmp_path: Path) -> None:
    store = _fake_store(tmp_path / "store")
    params = {"store": str(store), "model.depth": 2, "train.lr": 3e-4, "model.head_hidden": None}
    parent = tracker.trial_run("t_00001", params, tags={"search": "smoke"})
    for epoch in range(3):
        tracker.log_epoch(parent, epoch, {"val/top5": 0.1 * epoch, "val/clip_loss": 3.0 - epoch})
    history = [{"val/top5": 0.1, "train/loss": 2.0}, {"val/top5": 0.3, "train/loss": 1.5}]
    children = [
        tracker.seed_run(
            parent,
            seed,
            params | {"train.seed": seed},
            {"val/top5": 0.3, "test/top5": 0.2 + seed},
            history,
        )
        for seed in (0, 1)
    ]
    tracker.finish(parent, {"val/top5": 0.35, "test/top5_std": 0.5})

    run = tracker.client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.depth"] == "2" and run.data.params["model.head_hidden"] == "None"
    assert run.data.tags["search"] == "smoke" and run.data.tags[TAG_DATA] == store_checksum(store)
    assert run.data.tags[TAG_COMMIT] not in ("", None)
    curve = tracker.client.get_metric_history(parent, "val/top5")
    assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [0, 1, 2, 3]
    assert run.data.metrics["val/top5"] == pytest.approx(0.35)  # the summary is the latest value

    for seed, child_id in zip((0, 1), children, strict=True):
        child = tracker.client.get_run(child_id)
        assert child.info.status == "FINISHED"
        assert child.data.tags[TAG_PARENT] == parent and child.data.tags[TAG_SEED] == str(seed)
        assert child.data.tags[TAG_DATA] == run.data.tags[TAG_DATA]
        assert child.data.params["train.seed"] == str(seed)
        assert child.data.metrics["test/top5"] == pytest.approx(0.2 + seed)
        steps = sorted(m.step for m in tracker.client.get_metric_history(child_id, "train/loss"))
        assert steps == [0, 1]
    found = tracker.client.search_runs([tracker.experiment_id], f"tags.`{TAG_PARENT}` = '{parent}'")
    assert sorted(r.info.run_id for r in found) == sorted(children)

    # a resumed search finds the same runs instead of duplicating them
    assert tracker.trial_run("t_00001", params) == parent
    assert tracker.seed_run(parent, 1, params, {"test/top5": 9.0}, history) == children[1]
    again = Tracker(tracker.tracking_uri, "search-test")
    assert again.trial_run("t_00001", params) == parent
    assert tracker.client.get_run(parent).info.status == "RUNNING"
    trials = tracker.client.search_runs(
        [tracker.experiment_id], "tags.`megdecode.trial_id` = 't_00001'"
    )
    assert len(trials) == 3  # the parent and its two seeds


def test_failed_trial_is_marked_failed(tracker: Tracker) -> None:
    run_id = tracker.trial_run("t_00002", {"model.depth": 9})
    tracker.log_epoch(run_id, 0, {"val/top5": 0.0})
    tracker.finish(run_id, status="FAILED")
    assert tracker.client.get_run(run_id).info.status == "FAILED"
    with pytest.raises(ValueError, match="status"):
        tracker.finish(run_id, status="DONE")


def test_artifacts_and_tables(tracker: Tracker, tmp_path: Path) -> None:
    run_id = tracker.trial_run("t_00003", {})
    tracker.log_table(run_id, pd.DataFrame({"window": ["0-100"], "top5": [0.4]}), "windows")
    tracker.log_table(run_id, pd.DataFrame({"a": [1, 2]}), "retrieval.json")
    (tmp_path / "fig.txt").write_text("curve")
    tracker.log_artifacts(run_id, tmp_path / "fig.txt", "figures")
    listed = {
        f.path for d in ("tables", "figures") for f in tracker.client.list_artifacts(run_id, d)
    }
    assert listed == {"tables/windows.csv", "tables/retrieval.json", "figures/fig.txt"}
    local = tracker.client.download_artifacts(run_id, "tables/windows.csv", str(tmp_path / "dl"))
    assert pd.read_csv(local)["top5"].tolist() == [0.4]
    with pytest.raises(FileNotFoundError, match="nothing"):
        tracker.log_artifacts(run_id, tmp_path / "nothing")


def test_register_and_resolve_alias(tracker: Tracker, tmp_path: Path) -> None:
    bundle_dir = _bundle(tmp_path / "bundle")
    run_id = tracker.trial_run("t_00004", {"model.depth": 1})
    tracker.log_artifacts(run_id, bundle_dir, "bundle")
    version = register_bundle(tracker, run_id, bundle_dir, name="megdecode-brain", alias="champion")

    path, info = resolve_bundle(
        "models:/megdecode-brain@champion", tracker.tracking_uri, tmp_path / "resolved"
    )
    model, bundle = load_model(path)
    assert bundle.subjects == ["BIGMEG1", "BIGMEG2"] and model.cfg.n_channels == C
    assert path.is_relative_to(tmp_path / "resolved")
    assert info == RegistryInfo("megdecode-brain", version, run_id, "champion")
    assert bundle.loss == LossState(
        2.5, learned=True
    )  # the loss state travels through the registry

    info = get_model_info(f"models:/megdecode-brain/{version}")
    inputs = {s.name: s for s in info.signature.inputs.inputs}
    assert inputs["meg"].shape == (-1, C, T) and inputs["meg"].type == np.dtype(np.float32)
    assert inputs["subject"].shape == (-1,)
    assert [s.shape for s in info.signature.outputs.inputs] == [(-1, F), (-1, F)]
    mv = tracker.client.get_model_version("megdecode-brain", str(version))
    assert mv.tags["latent_name"] == "handcrafted" and float(mv.tags["tmax"]) == 0.1

    # the pyfunc wrapper predicts what the bundle's model predicts
    pyfunc = mlflow.pyfunc.load_model("models:/megdecode-brain@champion")
    x = np.random.default_rng(2).normal(size=(3, C, T)).astype(np.float32)
    out = pyfunc.predict({"meg": x, "subject": np.array([0, 1, 0])})
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.tensor([0, 1, 0]))
    np.testing.assert_allclose(out["clip"], ref.clip.numpy(), rtol=1e-5, atol=1e-6)

    empty = tracker.trial_run("t_00005", {})
    with pytest.raises(FileNotFoundError, match="no bundle.json"):
        resolve_bundle(f"runs:/{empty}", tracker.tracking_uri, tmp_path / "none")


def test_one_resolver_for_folders_versions_runs_and_aliases(
    tracker: Tracker, tmp_path: Path
) -> None:
    """`resolve_bundle` turns every kind of model reference into a bundle folder, and names
    what the registry holds when a reference points at nothing."""
    bundle_dir = _bundle(tmp_path / "bundle")
    run_id = tracker.trial_run("t_00007", {})
    tracker.log_artifacts(run_id, bundle_dir, "seed0/bundle")
    version = register_bundle(tracker, run_id, bundle_dir, name="resolve-test", alias="candidate")
    uri = tracker.tracking_uri

    assert resolve_bundle(str(bundle_dir)) == (bundle_dir, RegistryInfo("bundle"))
    pinned, info = resolve_bundle(f"models:/resolve-test/{version}", uri, tmp_path / "pinned")
    assert info == RegistryInfo("resolve-test", version, run_id, None)
    from_run, info = resolve_bundle(f"runs:/{run_id}", uri, tmp_path / "run")
    assert info.run_id == run_id and from_run.name == "bundle"
    for path in (pinned, from_run):
        assert load_bundle(path).gallery_ids.tolist() == [0, 1, 2, 3]

    with pytest.raises(
        FileNotFoundError, match=r"alias nope not found.*'resolve-test': \{'candidate': "
    ):
        resolve_bundle("models:/resolve-test@nope", uri)
    with pytest.raises(FileNotFoundError, match="name=no-such-model not found"):
        resolve_bundle("models:/no-such-model@champion", uri)
    with pytest.raises(FileNotFoundError, match=f"version={version + 40}\\) not found"):
        resolve_bundle(f"models:/resolve-test/{version + 40}", uri)
    with pytest.raises(ValueError, match="expected models:/<name>@<alias>"):
        resolve_bundle("models:/resolve-test", uri)
    with pytest.raises(ValueError, match="needs a tracking URI"):
        resolve_bundle("models:/resolve-test@candidate", "")
    with pytest.raises(ValueError, match="no model given"):
        resolve_bundle("", uri)
    with pytest.raises(FileNotFoundError, match="no model bundle at"):
        resolve_bundle(str(tmp_path / "nothing"), uri)


def test_register_cli_promotes_a_run_with_a_bundle(
    tracker: Tracker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """jobs/register.py, run in-process (a subprocess would pay the imports again)."""
    run_id = tracker.trial_run("t_00006", {})
    tracker.log_artifacts(run_id, _bundle(tmp_path / "b"), "seed0/bundle")
    monkeypatch.syspath_prepend(str(REPO / "jobs"))
    main = runpy.run_path(str(REPO / "jobs" / "register.py"), run_name="register")["main"]
    assert (
        main(["--tracking-uri", tracker.tracking_uri, "--run-id", run_id, "--alias", "staging"])
        == 0
    )
    version = tracker.client.get_model_version_by_alias("megdecode-brain", "staging").version
    assert f"megdecode-brain version {version} -> @staging" in capsys.readouterr().out
    assert tracker.client.get_model_version("megdecode-brain", str(version)).run_id == run_id
    staged, _ = resolve_bundle(
        "models:/megdecode-brain@staging", tracker.tracking_uri, tmp_path / "staged"
    )
    assert load_bundle(staged).latent_name == "handcrafted"
    assert main(["--run-id", run_id]) == 2  # --tracking-uri is required: a usage error


def test_experiments_open_on_the_runs_table(tracker: Tracker) -> None:
    """MLflow 3's UI shows the GenAI traces overview for an experiment without a kind; ours
    say "model training", also one that an older version created without the tag."""
    from megdecode.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    bare = tracker.client.create_experiment("made-without-kind")
    assert EXPERIMENT_KIND_TAG not in tracker.client.get_experiment(bare).tags
    again = Tracker(tracker.tracking_uri, "made-without-kind")
    assert again.experiment_id == bare
    assert tracker.client.get_experiment(bare).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_browse_hint_links_to_the_model_training_runs_table() -> None:
    from megdecode.tracking import browse_hint

    assert (
        browse_hint("http://mlflow:5000/", "7")
        == "http://mlflow:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
    hint = browse_hint("sqlite:////r/mlflow.db", "3", port=5001)
    assert hint == (
        "mlflow ui --backend-store-uri sqlite:////r/mlflow.db --port 5001, then "
        "http://127.0.0.1:5001/#/experiments/3/runs?workflowType=machine_learning"
    )


def test_artifacts_on_s3_register_and_resolve(s3_server: S3Server, tmp_path: Path) -> None:
    """An experiment whose artifact root is an S3 URI (the SQLite db stays local): the
    bundle is uploaded there, registered, and `resolve_bundle` (serving's path) reads it back."""
    root = s3_server.uri("tracking/mlartifacts")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "s3-artifacts", artifact_root=root)
    bundle_dir = _bundle(tmp_path / "bundle")
    run_id = tracker.trial_run("t_00001", {})
    tracker.log_artifacts(run_id, bundle_dir, "seed0/bundle")
    assert tracker.client.get_experiment(tracker.experiment_id).artifact_location.startswith(root)
    assert not (tmp_path / "mlartifacts").exists()
    register_bundle(tracker, run_id, bundle_dir, name="s3-brain", alias="champion")
    folder, info = resolve_bundle("models:/s3-brain@champion", tracker.tracking_uri, tmp_path / "r")
    assert info.run_id == run_id
    assert load_bundle(folder).gallery_ids.tolist() == [0, 1, 2, 3]
