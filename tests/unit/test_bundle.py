"""The model bundle: round trip, and refusal of missing or inconsistent fields."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from megdecode.bundle import BundleError, ModelBundle, PredictionStats, load_bundle, save_bundle
from megdecode.models.brain import BrainConfig, BrainModule
from megdecode.predict import load_model, model_from_bundle

C, T, F = 6, 13, 5


def _bundle() -> ModelBundle:
    cfg = BrainConfig(n_channels=C, n_times=T, n_subjects=2, out_dim=F, hidden_channels=8,
                      merger_channels=8, fourier_freqs=2, depth=1, projection_hidden=8)
    torch.manual_seed(0)
    pos = np.random.default_rng(0).uniform(0, 1, (C, 2)).astype(np.float32)
    model = BrainModule(cfg, pos)
    rng = np.random.default_rng(1)
    return ModelBundle(
        model_config=cfg.to_flat_dict(), state_dict=model.state_dict(), tmin=0.0, tmax=0.1,
        sfreq=120.0, n_times=T, ch_names=[f"M{i}" for i in range(C)], pos2d=pos,
        subjects=["BIGMEG1", "BIGMEG2"], latent_name="handcrafted",
        latent_mean=rng.normal(size=F).astype(np.float32), latent_std=np.ones(F, np.float32),
        gallery=rng.normal(size=(4, F)).astype(np.float32), gallery_ids=np.arange(4, dtype=np.int64),
        metrics={"test/top5": 0.5},
    )


def test_round_trip_rebuilds_the_same_model(tmp_path: Path) -> None:
    bundle = _bundle()
    save_bundle(bundle, tmp_path / "b")
    model, loaded = load_model(tmp_path / "b")
    assert loaded.ch_names == bundle.ch_names and loaded.subjects == bundle.subjects
    np.testing.assert_array_equal(loaded.gallery, bundle.gallery)
    reference = model_from_bundle(bundle)
    x = torch.randn(3, C, T)
    s = torch.tensor([0, 1, 0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, s).clip, reference(x, s).clip)
    assert loaded.subject_index("BIGMEG2") == 1
    with pytest.raises(BundleError, match="unknown subject"):
        loaded.subject_index("BIGMEG9")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pos2d": np.zeros((C + 1, 2), np.float32)}, "pos2d"),
        ({"n_times": T + 1}, "n_times"),
        ({"gallery": np.zeros((4, F + 1), np.float32)}, "gallery"),
        ({"latent_std": np.zeros(F, np.float32)}, "latent_std"),
        ({"subjects": ["a"]}, "n_subjects"),
    ],
)
def test_inconsistent_bundles_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    bundle = _bundle()
    for key, value in change.items():
        setattr(bundle, key, value)
    with pytest.raises(BundleError, match=message):
        save_bundle(bundle, tmp_path / "b")


def test_missing_or_tampered_files_are_refused(tmp_path: Path) -> None:
    path = save_bundle(_bundle(), tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    del meta["ch_names"]
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="missing ch_names"):
        load_bundle(path)
    path = save_bundle(_bundle(), tmp_path / "c")
    (path / "arrays.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path / "nothing")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.model_config = bundle.model_config | {"hidden_channels": 16}
    with pytest.raises(BundleError, match="weights do not fit"):
        model_from_bundle(bundle)


def _stats(**change: object) -> PredictionStats:
    rng = np.random.default_rng(2)
    base = PredictionStats.of(rng.normal(size=(40, F)) * 0.1 + 1.0, reference="val")
    return PredictionStats(**({"mean": base.mean, "std": base.std, "reference": base.reference, "n": base.n} | change))  # type: ignore[arg-type]


def test_prediction_stats_round_trip_as_a_typed_field(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.prediction_stats = _stats()
    path = save_bundle(bundle, tmp_path / "b")
    assert json.loads((path / "bundle.json").read_text())["prediction_stats"] == {"reference": "val", "n": 40}
    assert "pred_mean" not in json.loads((path / "bundle.json").read_text())["extra"]
    loaded = load_bundle(path).prediction_stats
    assert loaded is not None and (loaded.reference, loaded.n) == ("val", 40)
    np.testing.assert_array_equal(loaded.mean, bundle.prediction_stats.mean)
    np.testing.assert_array_equal(loaded.std, bundle.prediction_stats.std)
    assert loaded.mean.dtype == np.float64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mean": np.zeros(F + 1)}, "prediction_stats.mean has shape"),
        ({"std": np.ones(F - 1)}, "prediction_stats.std has shape"),
        ({"mean": np.array([0.0, np.nan, 0.0, 0.0, 0.0])}, "NaN or infinite"),
        ({"std": np.array([1.0, 1.0, 0.0, 1.0, 1.0])}, "non-positive"),
        ({"n": 1}, "n >= 2"),
        ({"reference": ""}, "named set"),
    ],
)
def test_bad_prediction_stats_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    bundle = _bundle()
    bundle.prediction_stats = _stats(**change)
    with pytest.raises(BundleError, match=message):
        save_bundle(bundle, tmp_path / "b")


def test_prediction_stats_of_a_set_floor_a_constant_dimension() -> None:
    pred = np.random.default_rng(0).normal(size=(10, 3))
    pred[:, 1] = 2.0
    stats = PredictionStats.of(pred, reference="val")
    assert stats.std[1] > 0 and stats.n == 10
    with pytest.raises(BundleError, match="N >= 2"):
        PredictionStats.of(pred[:1], reference="val")


def test_a_bundle_without_prediction_stats_loads_with_a_warning(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    path = save_bundle(_bundle(), tmp_path / "old")
    assert json.loads((path / "bundle.json").read_text())["prediction_stats"] is None
    meta = json.loads((path / "bundle.json").read_text())
    del meta["prediction_stats"]  # a bundle written before the field existed
    (path / "bundle.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="megdecode.bundle"):
        assert load_bundle(path).prediction_stats is None
    assert "no prediction statistics" in caplog.text and str(path) in caplog.text


def test_stats_named_in_bundle_json_but_missing_from_the_arrays_are_refused(tmp_path: Path) -> None:
    path = save_bundle(_bundle(), tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["prediction_stats"] = {"reference": "val", "n": 40}
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="missing pred_mean, pred_std"):
        load_bundle(path)
