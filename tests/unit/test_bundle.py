"""The model bundle: round trip of every typed field, refusal of missing or inconsistent
fields (by name), and the migration of a first-format bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.bundles import (
    BUNDLE_C,
    BUNDLE_CH_NAMES,
    BUNDLE_F,
    BUNDLE_T,
    FIT,
    tiny_bundle,
    tiny_scaler,
)
from megdecode.bundle import PredictionStats
from megdecode.bundle_fields import (
    BundleError,
    GalleryMeta,
    LatentPart,
    LossState,
)
from megdecode.bundle_integrity import seal
from megdecode.bundle_io import FORMAT, load_bundle, save_bundle
from megdecode.losses import CombinedLoss, LossConfig
from megdecode.predict import load_model, model_from_bundle

C, T, F = BUNDLE_C, BUNDLE_T, BUNDLE_F
_bundle, _scaler = tiny_bundle, tiny_scaler


def _rewrite(path: Path, change, reseal: bool = True) -> None:
    """Change bundle.json; ``reseal`` updates its field checksums, as a writer with a bug would,
    so that the change reaches the field checks instead of the tamper check."""
    meta = json.loads((path / "bundle.json").read_text())
    change(meta)
    (path / "bundle.json").write_text(json.dumps(seal(meta) if reseal else meta))


def test_round_trip_rebuilds_the_same_model(tmp_path: Path) -> None:
    bundle = _bundle()
    save_bundle(bundle, tmp_path / "b")
    model, loaded = load_model(tmp_path / "b")
    # the stored order, which is not sorted: the model's input rows follow it
    assert loaded.ch_names == list(BUNDLE_CH_NAMES) != sorted(BUNDLE_CH_NAMES)
    assert loaded.subjects == bundle.subjects
    np.testing.assert_array_equal(loaded.gallery, bundle.gallery)
    reference = model_from_bundle(bundle)
    x = torch.randn(3, C, T)
    s = torch.tensor([0, 1, 0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, s).clip, reference(x, s).clip)
    assert loaded.subject_index("BIGMEG2") == 1
    with pytest.raises(BundleError, match="unknown subject"):
        loaded.subject_index("BIGMEG9")


def test_every_typed_field_round_trips(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.prediction_stats = _stats()
    loaded = load_bundle(save_bundle(bundle, tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["format"] == FORMAT
    assert (
        loaded.loss == bundle.loss
        and loaded.loss is not None
        and loaded.loss.temperature == math.exp(-2.5)
    )
    assert loaded.latent_parts == bundle.latent_parts and isinstance(
        loaded.latent_parts[0], LatentPart
    )
    assert loaded.gallery_meta == bundle.gallery_meta
    assert loaded.fit_config == bundle.fit_config and loaded.fit_config.store == "/data/store"
    assert loaded.fit_config.latents_dir == "/data/latents"
    assert loaded.preprocess == bundle.preprocess and loaded.streamable
    assert loaded.scalers.keys() == bundle.scalers.keys()
    for subject, scaler in bundle.scalers.items():
        got = loaded.scalers[subject]
        np.testing.assert_array_equal(got.center, scaler.center)
        np.testing.assert_array_equal(got.scale, scaler.scale)
        assert (got.quantile_range, got.raw_sfreq) == (scaler.quantile_range, scaler.raw_sfreq)
    assert loaded.metrics == bundle.metrics and loaded.git_commit == "abc123"
    assert loaded.prediction_stats is not None and loaded.prediction_stats.n == 40
    # a bundle that cannot stream (its store recorded no preprocessing) says so
    bundle.preprocess, bundle.scalers = None, {}
    plain = load_bundle(save_bundle(bundle, tmp_path / "plain"))
    assert plain.preprocess is None and plain.scalers == {} and not plain.streamable


@pytest.mark.parametrize(
    "key",
    [
        "loss",
        "latent_parts",
        "gallery_meta",
        "fit_config",
        "preprocess",
        "scalers",
        "prediction_stats",
        "ch_names",
        "model_config",
    ],
)
def test_a_bundle_missing_a_required_field_fails_naming_it(tmp_path: Path, key: str) -> None:
    path = save_bundle(_bundle(), tmp_path / "b")
    _rewrite(path, lambda meta: meta.pop(key))
    with pytest.raises(BundleError, match=f"missing {key}"):
        load_bundle(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("loss", {"logit_scale": -1.0, "learned": True}, "loss.logit_scale"),
        ("loss", {"learned": True}, "field 'loss'"),
        ("latent_parts", [["handcrafted", 3], ["half", 3]], "latent_parts"),
        ("gallery_meta", {"category": ["dog"], "image_path": ["x"]}, "gallery_meta.categories"),
        ("fit_config", ["store"], "field 'fit_config'"),
        ("fit_config", {"store": {"nested": 1}}, "fit_config must be a flat config"),
        ("preprocess", {"filter_phase": "sideways"}, "field 'preprocess'"),
        (
            "scalers",
            {"BIGMEG1": {"center": [0.0] * (C + 1), "scale": [1.0] * (C + 1)}},
            r"scalers\['BIGMEG1'\].center",
        ),
        ("scalers", {"BIGMEG1": {"center": [0.0] * C, "scale": [0.0] * C}}, "non-positive"),
        (
            "scalers",
            {"nobody": {"center": [0.0] * C, "scale": [1.0] * C}},
            "subjects the bundle does not know",
        ),
    ],
)
def test_malformed_fields_are_refused_naming_them(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    path = save_bundle(_bundle(), tmp_path / "b")
    _rewrite(path, lambda meta: meta.__setitem__(key, value))
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def _as_first_format(path: Path, extra: dict) -> None:
    """bundle.json rewritten the way the first format wrote it: serving fields in ``extra``."""
    meta = json.loads((path / "bundle.json").read_text())
    old = {
        "format": "megdecode-bundle/1",
        "model_config": meta["model_config"],
        "tmin": meta["tmin"],
        "tmax": meta["tmax"],
        "sfreq": meta["sfreq"],
        "n_times": meta["n_times"],
        "ch_names": meta["ch_names"],
        "subjects": meta["subjects"],
        "latent_name": meta["latent_name"],
        "metrics": meta["metrics"],
        "git_commit": meta["git_commit"],
        "extra": extra,
        "prediction_stats": meta["prediction_stats"],
        "sha256": meta["sha256"],
    }
    (path / "bundle.json").write_text(json.dumps(old, indent=2))


def test_a_first_format_bundle_migrates_to_the_typed_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = _bundle()
    path = save_bundle(bundle, tmp_path / "old")
    scalers = {s: {**sc.to_json(), "raw_sfreq": 1200.0} for s, sc in bundle.scalers.items()}
    _as_first_format(
        path,
        {
            "fit_config": FIT,
            "latent_parts": [["handcrafted", 3], ["half", 2]],
            "gallery_meta": bundle.gallery_meta.to_json(),
            "note": "by hand",
            "preprocess": bundle.preprocess.to_flat_dict() if bundle.preprocess else None,
            "scalers": scalers,
        },
    )
    with caplog.at_level("INFO", logger="megdecode.bundle_fields"):
        loaded = load_bundle(path)
    assert "migrated from megdecode-bundle/1" in caplog.text and "'note'" in caplog.text
    assert "τ was learned but not stored" in caplog.text
    assert loaded.loss is None  # learned, and the first format did not store it
    assert loaded.latent_parts == bundle.latent_parts and loaded.gallery_meta == bundle.gallery_meta
    assert loaded.fit_config.flat == FIT and loaded.preprocess == bundle.preprocess
    assert loaded.scalers["BIGMEG2"].raw_sfreq == 1200.0
    np.testing.assert_array_equal(
        loaded.scalers["BIGMEG1"].center, bundle.scalers["BIGMEG1"].center
    )
    # saved again, it is a bundle of the current format
    again = load_bundle(save_bundle(loaded, tmp_path / "new"))
    assert again.loss is None and again.gallery_meta == bundle.gallery_meta


def test_a_first_format_bundle_with_a_fixed_temperature_keeps_it(tmp_path: Path) -> None:
    path = save_bundle(_bundle(), tmp_path / "old")
    fixed = FIT | {"loss.learn_temperature": False, "loss.temperature_init": 0.05}
    _as_first_format(path, {"fit_config": fixed, "gallery_meta": GalleryMeta.blank(4).to_json()})
    loaded = load_bundle(path)
    trained = CombinedLoss(LossConfig(temperature_init=0.05, learn_temperature=False))
    trained.clamp_()
    assert loaded.loss == LossState.of(trained)
    assert loaded.latent_parts == [("handcrafted+half", F)]  # one block: the first format's default
    assert loaded.preprocess is None and loaded.scalers == {}
    assert loaded.prediction_stats is None


def test_a_first_format_bundle_without_the_data_to_migrate_is_refused(tmp_path: Path) -> None:
    path = save_bundle(_bundle(), tmp_path / "old")
    _as_first_format(path, {"latent_parts": [["handcrafted", 3], ["half", 2]]})
    with pytest.raises(BundleError, match="missing extra.fit_config, extra.gallery_meta"):
        load_bundle(path)


def test_the_loss_state_is_the_trained_temperature() -> None:
    loss = CombinedLoss(LossConfig(temperature_init=0.05))
    with torch.no_grad():
        loss.clip.logit_scale.fill_(3.0)
    state = LossState.of(loss)
    assert state == LossState(3.0, learned=True) and state.temperature == pytest.approx(
        math.exp(-3.0)
    )
    fixed = LossState.of(CombinedLoss(LossConfig(temperature_init=0.05, learn_temperature=False)))
    assert not fixed.learned and fixed.temperature == pytest.approx(0.05, rel=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pos2d": np.zeros((C + 1, 2), np.float32)}, "pos2d"),
        ({"n_times": T + 1}, "n_times"),
        ({"gallery": np.zeros((4, F + 1), np.float32)}, "gallery"),
        ({"latent_std": np.zeros(F, np.float32)}, "latent_std"),
        ({"subjects": ["a"]}, "n_subjects"),
        ({"gallery_meta": GalleryMeta.blank(3)}, "gallery_meta"),
        ({"scalers": {"BIGMEG1": _scaler(0), "BIGMEG3": _scaler(1)}}, "BIGMEG3"),
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
    _rewrite(path, lambda meta: meta.pop("ch_names"))
    with pytest.raises(BundleError, match="missing ch_names"):
        load_bundle(path)
    path = save_bundle(_bundle(), tmp_path / "c")
    (path / "arrays.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path / "nothing")
    path = save_bundle(_bundle(), tmp_path / "d")
    _rewrite(path, lambda meta: meta.__setitem__("format", "megdecode-bundle/9"))
    with pytest.raises(BundleError, match="format 'megdecode-bundle/9'"):
        load_bundle(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.model_config = bundle.model_config | {"hidden_channels": 16}
    with pytest.raises(BundleError, match="weights do not fit"):
        model_from_bundle(bundle)


def _stats(**change: object) -> PredictionStats:
    rng = np.random.default_rng(2)
    base = PredictionStats.of(rng.normal(size=(40, F)) * 0.1 + 1.0, reference="val")
    return PredictionStats(
        **({"mean": base.mean, "std": base.std, "reference": base.reference, "n": base.n} | change)
    )


def test_prediction_stats_round_trip_as_a_typed_field(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.prediction_stats = _stats()
    path = save_bundle(bundle, tmp_path / "b")
    assert json.loads((path / "bundle.json").read_text())["prediction_stats"] == {
        "reference": "val",
        "n": 40,
    }
    assert "pred_mean" not in (path / "bundle.json").read_text()
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


def test_a_bundle_without_prediction_stats_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_bundle(_bundle(), tmp_path / "old")
    assert json.loads((path / "bundle.json").read_text())["prediction_stats"] is None
    with caplog.at_level("WARNING", logger="megdecode.bundle_io"):
        assert load_bundle(path).prediction_stats is None
    assert "no prediction statistics" in caplog.text and str(path) in caplog.text
    # a first-format bundle written before the field existed has no entry at all
    _as_first_format(path, {"fit_config": FIT, "gallery_meta": GalleryMeta.blank(4).to_json()})
    _rewrite(path, lambda meta: meta.pop("prediction_stats"))
    assert load_bundle(path).prediction_stats is None


def test_stats_named_in_bundle_json_but_missing_from_the_arrays_are_refused(tmp_path: Path) -> None:
    path = save_bundle(_bundle(), tmp_path / "b")
    _rewrite(path, lambda meta: meta.__setitem__("prediction_stats", {"reference": "val", "n": 40}))
    with pytest.raises(BundleError, match="missing pred_mean, pred_std"):
        load_bundle(path)
