"""A model bundle on disk: `save_bundle` writes it, `load_bundle` reads and checks it.

On disk: ``bundle.json`` (metadata, the sha256 of the tensor files and of each of its own
fields), ``model.safetensors`` and ``arrays.safetensors`` (positions, latent stats,
prediction stats, gallery). Loading refuses an edited bundle.json and a missing, unlisted
or altered file before reading anything (`megdecode.bundle_integrity`), then a missing or
malformed field, naming it (`megdecode.bundle_fields`).

Format policy: `FORMAT` is what `save_bundle` writes; the layout of bundle.json changes
only with a new format number, and the previous formats stay loadable:
``megdecode-bundle/2`` (no checksum of bundle.json itself) loads with a warning, since an
edit to it cannot be detected; ``megdecode-bundle/1`` (serving fields in an untyped
``extra`` object) is migrated on load by `megdecode.bundle_fields.upgrade_v1`. Loading and
saving an old bundle again writes the current format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from megdecode.bundle import ModelBundle, PredictionStats
from megdecode.bundle_fields import (
    FORMAT_V1,
    BundleError,
    FitRecord,
    GalleryMeta,
    LatentPart,
    LossState,
    SubjectScaler,
    preprocess_from_json,
    upgrade_v1,
)
from megdecode.bundle_integrity import FIELDS_KEY, FILES, check_fields, check_files, seal
from megdecode.config import ConfigError
from megdecode.data.store import sha256_file

logger = logging.getLogger(__name__)

FORMAT = "megdecode-bundle/3"  # bundle.json carries the checksum of each of its fields
FORMAT_V2 = "megdecode-bundle/2"  # no checksum of bundle.json: loads with a warning
_ARRAYS = ("pos2d", "latent_mean", "latent_std", "gallery", "gallery_ids")
_STATS_ARRAYS = ("pred_mean", "pred_std")  # PredictionStats.mean / .std in arrays.safetensors
# bundle.json keys every bundle has; null is a valid value of loss, preprocess and prediction_stats
_REQUIRED = (
    "model_config",
    "loss",
    "tmin",
    "tmax",
    "sfreq",
    "n_times",
    "ch_names",
    "subjects",
    "latent_name",
    "latent_parts",
    "gallery_meta",
    "fit_config",
    "preprocess",
    "scalers",
    "prediction_stats",
    "sha256",
)
_WARNED: set[Path] = set()  # bundles already reported as lacking prediction statistics
_WARNED_UNSEALED: set[Path] = set()  # second-format bundles already reported
_T = TypeVar("_T")


def save_bundle(bundle: ModelBundle, path: Path) -> Path:
    """Validate and write the bundle folder; returns it."""
    bundle.validate()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_torch(
        {k: v.detach().cpu().contiguous() for k, v in bundle.state_dict.items()},
        str(path / "model.safetensors"),
    )
    arrays = {name: np.ascontiguousarray(getattr(bundle, name)) for name in _ARRAYS}
    stats = bundle.prediction_stats
    if stats is not None:
        arrays.update(
            pred_mean=np.ascontiguousarray(stats.mean), pred_std=np.ascontiguousarray(stats.std)
        )
    save_numpy(arrays, str(path / "arrays.safetensors"))
    meta = {
        "format": FORMAT,
        "model_config": bundle.model_config,
        "loss": bundle.loss.to_json() if bundle.loss is not None else None,
        "tmin": bundle.tmin,
        "tmax": bundle.tmax,
        "sfreq": bundle.sfreq,
        "n_times": bundle.n_times,
        "ch_names": bundle.ch_names,
        "subjects": bundle.subjects,
        "latent_name": bundle.latent_name,
        "latent_parts": [[p.name, p.width] for p in bundle.latent_parts],
        "gallery_meta": bundle.gallery_meta.to_json(),
        "fit_config": dict(bundle.fit_config.flat),
        "preprocess": bundle.preprocess.to_flat_dict() if bundle.preprocess is not None else None,
        "scalers": {s: scaler.to_json() for s, scaler in bundle.scalers.items()},
        "prediction_stats": stats.describe() if stats is not None else None,
        "metrics": bundle.metrics,
        "git_commit": bundle.git_commit,
        "sha256": {name: sha256_file(path / name) for name in FILES},
    }
    # sealed as it will read back: JSON values only (numpy scalars written as floats)
    plain = json.loads(json.dumps(meta, default=float))
    (path / "bundle.json").write_text(json.dumps(seal(plain), indent=2))
    return path


def load_bundle(path: Path) -> ModelBundle:
    """Read and check a bundle folder; every missing or inconsistent field is an error naming it."""
    path = Path(path)
    meta_path = path / "bundle.json"
    if not meta_path.exists():
        raise BundleError(f"no bundle.json in {path}")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path} holds a {type(meta).__name__}, expected an object")
    if meta.get("format") not in (FORMAT, FORMAT_V2, FORMAT_V1):
        raise BundleError(
            f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r} "
            f"(or the older {FORMAT_V2!r}, {FORMAT_V1!r})"
        )
    if meta["format"] == FORMAT or FIELDS_KEY in meta:  # a sealed bundle relabelled old is edited
        check_fields(meta, meta_path)
    else:
        _warn_unsealed(meta_path, meta["format"])
    if "sha256" not in meta:
        raise BundleError(f"{meta_path} is missing sha256")
    check_files(meta, path, meta_path)
    arrays = load_numpy(str(path / "arrays.safetensors"))
    absent = [a for a in _ARRAYS if a not in arrays]
    if absent:
        raise BundleError(f"{path / 'arrays.safetensors'} is missing {', '.join(absent)}")
    if meta["format"] == FORMAT_V1:
        meta = upgrade_v1(meta, len(arrays["latent_mean"]), meta_path)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise BundleError(f"{meta_path} is missing {', '.join(missing)}")

    def read(key: str, parse: Callable[[Any], _T]) -> _T:
        try:
            return parse(meta[key])
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{meta_path}: field {key!r} is malformed: {exc}") from None

    bundle = ModelBundle(
        model_config=read("model_config", dict),
        state_dict=load_torch(str(path / "model.safetensors")),
        loss=read("loss", lambda v: None if v is None else LossState.from_json(v)),
        tmin=read("tmin", float),
        tmax=read("tmax", float),
        sfreq=read("sfreq", float),
        n_times=read("n_times", int),
        ch_names=read("ch_names", lambda v: [str(c) for c in v]),
        subjects=read("subjects", lambda v: [str(s) for s in v]),
        latent_name=read("latent_name", str),
        latent_parts=read("latent_parts", lambda v: [LatentPart(str(n), int(w)) for n, w in v]),
        gallery_meta=read("gallery_meta", GalleryMeta.from_json),
        fit_config=read("fit_config", FitRecord.from_json),
        preprocess=read("preprocess", preprocess_from_json),
        scalers=read(
            "scalers", lambda v: {str(s): SubjectScaler.from_json(d) for s, d in v.items()}
        ),
        metrics=dict(meta.get("metrics", {})),
        git_commit=str(meta.get("git_commit", "unknown")),
        prediction_stats=_read_stats(meta, arrays, meta_path),
        **{name: arrays[name] for name in _ARRAYS},
    )
    bundle.validate()
    return bundle


def _warn_unsealed(meta_path: Path, fmt: str) -> None:
    """Say once per bundle that an older format's bundle.json is trusted unchecked."""
    folder = meta_path.parent.resolve()
    if folder in _WARNED_UNSEALED:
        return
    _WARNED_UNSEALED.add(folder)
    logger.warning(
        "%s is a %s bundle: bundle.json holds no checksum of its own fields, so an edit to it "
        "(a reordered channel list, a changed window) cannot be detected; load and save it "
        "again (megdecode.bundle_io.save_bundle) to write %s",
        meta_path.parent,
        fmt,
        FORMAT,
    )


def _read_stats(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], meta_path: Path
) -> PredictionStats | None:
    """The stored prediction statistics; None, with a warning, for a bundle made without them."""
    described = meta.get("prediction_stats")
    if described is None:
        if (
            meta_path.parent.resolve() in _WARNED
        ):  # evaluations load one bundle several times: say it once
            return None
        _WARNED.add(meta_path.parent.resolve())
        logger.warning(
            "%s has no prediction statistics (a bundle made before they were stored): a single "
            "window's MSE output cannot be z-scored, so /v1/reconstruct and `megdecode reconstruct` "
            "use it unscaled; retrain to store them",
            meta_path.parent,
        )
        return None
    absent = [a for a in _STATS_ARRAYS if a not in arrays]
    if absent or not isinstance(described, dict):
        raise BundleError(
            f"{meta_path} names prediction_stats but arrays.safetensors is missing "
            f"{', '.join(absent) or 'nothing'} (or the entry is not an object)"
        )
    return PredictionStats(
        mean=arrays["pred_mean"],
        std=arrays["pred_std"],
        reference=str(described.get("reference", "")),
        n=int(described.get("n", 0)),
    )
