"""The model bundle: everything needed to rebuild and use a trained brain module.

What the registry holds and serving loads (DESIGN §6): the weights, the model config,
the time window, the channel layout, the subject index, the latent name and the training
latents' mean/std (for the MSE-head post-processing), the prediction statistics of a
reference set (`PredictionStats`: what z-scores one served window the way the offline
evaluation z-scores a set), a gallery of candidate latents with their image ids, the
metrics and the git commit. `load_bundle` refuses a bundle whose fields are missing or
inconsistent, because a model applied to the wrong channel order or window decodes
garbage without any error.

On disk: ``bundle.json`` (metadata + sha256 of the tensor files), ``model.safetensors``
and ``arrays.safetensors`` (positions, latent stats, prediction stats, gallery).
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from megdecode.data.store import sha256_file

logger = logging.getLogger(__name__)

FORMAT = "megdecode-bundle/1"
_ARRAYS = ("pos2d", "latent_mean", "latent_std", "gallery", "gallery_ids")
_STATS_ARRAYS = ("pred_mean", "pred_std")  # PredictionStats.mean / .std in arrays.safetensors
_WARNED: set[Path] = set()  # bundles already reported as lacking prediction statistics
STD_FLOOR = 1e-8  # a dimension the head never varies on the reference set: divide by this, not 0


class BundleError(ValueError):
    """The bundle is missing a field or its fields disagree; the message says which."""


@dataclass(frozen=True, eq=False)
class PredictionStats:
    """Per-dimension mean and std (F,) of the MSE head's predictions on a reference set.

    Why a bundle keeps them: generation z-scores MSE outputs before mapping them to the
    training latents' scale (DESIGN §4), and one served window has no spread of its own to
    z-score with. These statistics, measured once at training time, scale a served window
    and an offline one the same way. ``reference`` names the set ("val": the validation
    predictions at the best epoch, what `train.fit` stores), ``n`` its size.
    """

    mean: np.ndarray  # (F,) float64
    std: np.ndarray  # (F,) float64, > 0
    reference: str = "val"
    n: int = 0

    @classmethod
    def of(cls, predictions: np.ndarray, reference: str) -> PredictionStats:
        """The statistics of a reference set of MSE predictions (N >= 2, F); std floored at
        `STD_FLOOR` so that a dimension constant on the set cannot divide by zero."""
        pred = np.asarray(predictions, dtype=np.float64)
        if pred.ndim != 2 or len(pred) < 2:
            raise BundleError(f"prediction statistics need (N >= 2, F) predictions, got shape {pred.shape}")
        if not np.isfinite(pred).all():
            raise BundleError(f"the {reference!r} predictions hold NaN or infinite values")
        return cls(pred.mean(0), np.maximum(pred.std(0), STD_FLOOR), reference, len(pred))

    def check(self, width: int) -> None:
        """Raise `BundleError` unless mean/std are finite (width,) arrays, std > 0, n >= 2."""
        for name, arr in (("mean", self.mean), ("std", self.std)):
            if np.shape(arr) != (width,):
                raise BundleError(f"prediction_stats.{name} has shape {np.shape(arr)}, expected ({width},)")
            if not np.isfinite(arr).all():
                raise BundleError(f"prediction_stats.{name} holds NaN or infinite values")
        if not np.all(self.std > 0):
            raise BundleError("prediction_stats.std has non-positive entries")
        if not self.reference or int(self.n) < 2:
            raise BundleError(f"prediction_stats: reference {self.reference!r} with n={self.n}; need a named set, n >= 2")

    def describe(self) -> dict[str, Any]:
        """What the model card and bundle.json say about them (the arrays stay binary)."""
        return {"reference": self.reference, "n": int(self.n)}


@dataclass
class ModelBundle:
    """A trained brain module and the facts needed to use it safely.

    Arrays: pos2d (C, 2); latent_mean, latent_std (F,); gallery (M, F); gallery_ids (M,).
    """

    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tmin: float
    tmax: float
    sfreq: float
    n_times: int
    ch_names: list[str]
    pos2d: np.ndarray
    subjects: list[str]
    latent_name: str
    latent_mean: np.ndarray
    latent_std: np.ndarray
    gallery: np.ndarray
    gallery_ids: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    git_commit: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)
    prediction_stats: PredictionStats | None = None  # None: a bundle made before they were stored

    def validate(self) -> None:
        """Raise `BundleError` naming the first inconsistency."""
        c, f = len(self.ch_names), len(self.latent_mean)
        checks = [
            (self.pos2d.shape == (c, 2), f"pos2d has shape {self.pos2d.shape}, expected ({c}, 2)"),
            (self.latent_std.shape == (f,), f"latent_std has shape {self.latent_std.shape}, expected ({f},)"),
            (bool(np.all(self.latent_std > 0)), "latent_std has non-positive entries"),
            (self.gallery.ndim == 2 and self.gallery.shape[1] == f, f"gallery has shape {self.gallery.shape}, expected (M, {f})"),
            (self.gallery_ids.shape == (len(self.gallery),), "gallery_ids and gallery differ in length"),
            (self.tmin < self.tmax, f"window tmin={self.tmin} >= tmax={self.tmax}"),
            (self.n_times == int(round((self.tmax - self.tmin) * self.sfreq)) + 1,
             f"n_times={self.n_times} does not match window [{self.tmin}, {self.tmax}] at {self.sfreq} Hz"),
            (len(set(self.ch_names)) == c, "duplicate channel names"),
            (len(self.subjects) >= 1 and len(set(self.subjects)) == len(self.subjects), "subjects must be unique and non-empty"),
            (bool(self.state_dict), "state_dict is empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise BundleError(message)
        if sum(w for _, w in self.latent_parts) != f:
            raise BundleError(f"latent_parts {self.latent_parts} do not add up to the latent width {f}")
        for key in ("n_channels", "n_times", "n_subjects", "out_dim"):
            expected = {"n_channels": c, "n_times": self.n_times, "n_subjects": len(self.subjects), "out_dim": f}[key]
            if key in self.model_config and int(self.model_config[key]) != expected:
                raise BundleError(f"model_config {key}={self.model_config[key]} but the bundle says {expected}")
        if self.prediction_stats is not None:
            self.prediction_stats.check(f)

    @property
    def latent_parts(self) -> list[tuple[str, int]]:
        """[(latent name, width)] of the target's blocks (several for a multi-latent target
        "a+b", see `megdecode.latents.targets`); one block for bundles that do not say."""
        parts = self.extra.get("latent_parts") or [[self.latent_name, len(self.latent_mean)]]
        return [(str(n), int(w)) for n, w in parts]

    def split_latent(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """(N, F) predictions -> {latent name: (N, F_name)}, what a generator is conditioned on."""
        from megdecode.latents.targets import split_target

        return split_target(z, self.latent_parts)

    def subject_index(self, subject: str | int) -> int:
        """Index of a subject label (or an index already), with a clear error."""
        if isinstance(subject, int) and not isinstance(subject, bool):
            if 0 <= subject < len(self.subjects):
                return subject
            raise BundleError(f"subject index {subject} out of range 0..{len(self.subjects) - 1}")
        if str(subject) in self.subjects:
            return self.subjects.index(str(subject))
        raise BundleError(f"unknown subject {subject!r}; known: {', '.join(self.subjects)}")


def git_commit(cwd: Path | None = None) -> str:
    """The current commit (with '-dirty' when the tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_bundle(bundle: ModelBundle, path: Path) -> Path:
    """Validate and write the bundle folder; returns it."""
    bundle.validate()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_torch({k: v.detach().cpu().contiguous() for k, v in bundle.state_dict.items()}, str(path / "model.safetensors"))
    arrays = {name: np.ascontiguousarray(getattr(bundle, name)) for name in _ARRAYS}
    stats = bundle.prediction_stats
    if stats is not None:
        arrays.update(pred_mean=np.ascontiguousarray(stats.mean), pred_std=np.ascontiguousarray(stats.std))
    save_numpy(arrays, str(path / "arrays.safetensors"))
    meta = {
        "format": FORMAT,
        "model_config": bundle.model_config,
        "tmin": bundle.tmin, "tmax": bundle.tmax, "sfreq": bundle.sfreq, "n_times": bundle.n_times,
        "ch_names": bundle.ch_names, "subjects": bundle.subjects, "latent_name": bundle.latent_name,
        "metrics": bundle.metrics, "git_commit": bundle.git_commit, "extra": bundle.extra,
        "prediction_stats": stats.describe() if stats is not None else None,
        "sha256": {name: sha256_file(path / name) for name in ("model.safetensors", "arrays.safetensors")},
    }
    (path / "bundle.json").write_text(json.dumps(meta, indent=2, default=float))
    return path


def load_bundle(path: Path) -> ModelBundle:
    """Read and check a bundle folder; every missing or inconsistent field is an error."""
    path = Path(path)
    meta_path = path / "bundle.json"
    if not meta_path.exists():
        raise BundleError(f"no bundle.json in {path}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    required = ("model_config", "tmin", "tmax", "sfreq", "n_times", "ch_names", "subjects", "latent_name", "sha256")
    missing = [k for k in required if k not in meta]
    if missing:
        raise BundleError(f"{meta_path} is missing {', '.join(missing)}")
    for name, digest in meta["sha256"].items():
        file = path / name
        if not file.exists():
            raise BundleError(f"bundle file {file} is missing")
        if sha256_file(file) != digest:
            raise BundleError(f"bundle file {file} does not match its checksum")
    arrays = load_numpy(str(path / "arrays.safetensors"))
    absent = [a for a in _ARRAYS if a not in arrays]
    if absent:
        raise BundleError(f"arrays.safetensors is missing {', '.join(absent)}")
    bundle = ModelBundle(
        model_config=meta["model_config"],
        state_dict=load_torch(str(path / "model.safetensors")),
        tmin=float(meta["tmin"]), tmax=float(meta["tmax"]), sfreq=float(meta["sfreq"]),
        n_times=int(meta["n_times"]), ch_names=list(meta["ch_names"]), subjects=list(meta["subjects"]),
        latent_name=str(meta["latent_name"]), metrics=dict(meta.get("metrics", {})),
        git_commit=str(meta.get("git_commit", "unknown")), extra=dict(meta.get("extra", {})),
        prediction_stats=_read_stats(meta, arrays, meta_path),
        **{name: arrays[name] for name in _ARRAYS},
    )
    bundle.validate()
    return bundle


def _read_stats(meta: dict[str, Any], arrays: dict[str, np.ndarray], meta_path: Path) -> PredictionStats | None:
    """The stored prediction statistics; None, with a warning, for a bundle made without them."""
    described = meta.get("prediction_stats")
    if described is None:
        if meta_path.parent.resolve() in _WARNED:  # evaluations load one bundle several times: say it once
            return None
        _WARNED.add(meta_path.parent.resolve())
        logger.warning("%s has no prediction statistics (a bundle made before they were stored): a single "
                       "window's MSE output cannot be z-scored, so /v1/reconstruct and `megdecode reconstruct` "
                       "use it unscaled; retrain to store them", meta_path.parent)
        return None
    absent = [a for a in _STATS_ARRAYS if a not in arrays]
    if absent or not isinstance(described, dict):
        raise BundleError(f"{meta_path} names prediction_stats but arrays.safetensors is missing "
                          f"{', '.join(absent) or 'nothing'} (or the entry is not an object)")
    return PredictionStats(mean=arrays["pred_mean"], std=arrays["pred_std"],
                           reference=str(described.get("reference", "")), n=int(described.get("n", 0)))
