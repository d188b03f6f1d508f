"""The model bundle: everything needed to rebuild and use a trained brain module.

What the registry holds and serving loads (DESIGN §6), every field typed and checked on
load: the weights, the model config, the loss state (the learned CLIP temperature), the
time window, the channel layout, the subject index, the latent parts with the training
latents' mean/std (for the MSE-head post-processing), the prediction statistics of a
reference set, a gallery of candidate latents with their ids and metadata, the run's fit
config, the preprocessing and per-subject scalers the online stream needs, the metrics
and the git commit. `ModelBundle.validate` names the first inconsistent field, because a
model applied to the wrong channel order or window decodes garbage without any error.
`megdecode.bundle_io` writes a bundle to disk and reads it back.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megdecode.bundle_fields import (
    BundleError,
    FitRecord,
    GalleryMeta,
    LatentPart,
    LossState,
    SubjectScaler,
)
from megdecode.data.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)

STD_FLOOR = 1e-8  # a dimension the head never varies on the reference set: divide by this, not 0


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
            raise BundleError(
                f"prediction statistics need (N >= 2, F) predictions, got shape {pred.shape}"
            )
        if not np.isfinite(pred).all():
            raise BundleError(f"the {reference!r} predictions hold NaN or infinite values")
        return cls(pred.mean(0), np.maximum(pred.std(0), STD_FLOOR), reference, len(pred))

    def check(self, width: int) -> None:
        """Raise `BundleError` unless mean/std are finite (width,) arrays, std > 0, n >= 2."""
        for name, arr in (("mean", self.mean), ("std", self.std)):
            if np.shape(arr) != (width,):
                raise BundleError(
                    f"prediction_stats.{name} has shape {np.shape(arr)}, expected ({width},)"
                )
            if not np.isfinite(arr).all():
                raise BundleError(f"prediction_stats.{name} holds NaN or infinite values")
        if not np.all(self.std > 0):
            raise BundleError("prediction_stats.std has non-positive entries")
        if not self.reference or int(self.n) < 2:
            raise BundleError(
                f"prediction_stats: reference {self.reference!r} with n={self.n}; need a named set, n >= 2"
            )

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
    loss: LossState | None  # None: τ not recorded (a first-format bundle that learned it)
    tmin: float
    tmax: float
    sfreq: float
    n_times: int
    ch_names: list[str]
    pos2d: np.ndarray
    subjects: list[str]
    latent_name: str
    latent_parts: list[LatentPart]  # blocks of F: several for a multi-latent target "a+b"
    latent_mean: np.ndarray
    latent_std: np.ndarray
    gallery: np.ndarray
    gallery_ids: np.ndarray
    gallery_meta: GalleryMeta
    fit_config: FitRecord
    preprocess: PreprocessConfig | None = (
        None  # None: the store recorded none (the model cannot stream)
    )
    scalers: dict[str, SubjectScaler] = field(
        default_factory=dict
    )  # subject -> its training scaler
    prediction_stats: PredictionStats | None = None  # None: a bundle made before they were stored
    metrics: dict[str, float] = field(default_factory=dict)
    git_commit: str = "unknown"

    def validate(self) -> None:
        """Raise `BundleError` naming the first inconsistency."""
        c, f = len(self.ch_names), len(self.latent_mean)
        checks = [
            (self.pos2d.shape == (c, 2), f"pos2d has shape {self.pos2d.shape}, expected ({c}, 2)"),
            (
                self.latent_std.shape == (f,),
                f"latent_std has shape {self.latent_std.shape}, expected ({f},)",
            ),
            (bool(np.all(self.latent_std > 0)), "latent_std has non-positive entries"),
            (
                self.gallery.ndim == 2 and self.gallery.shape[1] == f,
                f"gallery has shape {self.gallery.shape}, expected (M, {f})",
            ),
            (
                self.gallery_ids.shape == (len(self.gallery),),
                "gallery_ids and gallery differ in length",
            ),
            (self.tmin < self.tmax, f"window tmin={self.tmin} >= tmax={self.tmax}"),
            (
                self.n_times == int(round((self.tmax - self.tmin) * self.sfreq)) + 1,
                f"n_times={self.n_times} does not match window [{self.tmin}, {self.tmax}] at {self.sfreq} Hz",
            ),
            (len(set(self.ch_names)) == c, "duplicate channel names"),
            (
                len(self.subjects) >= 1 and len(set(self.subjects)) == len(self.subjects),
                "subjects must be unique and non-empty",
            ),
            (bool(self.state_dict), "state_dict is empty"),
            (
                self.preprocess is None or isinstance(self.preprocess, PreprocessConfig),
                f"preprocess is a {type(self.preprocess).__name__}, expected a PreprocessConfig",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise BundleError(message)
        if not self.latent_parts or sum(p.width for p in self.latent_parts) != f:
            raise BundleError(
                f"latent_parts {self.latent_parts} do not add up to the latent width {f}"
            )
        for key in ("n_channels", "n_times", "n_subjects", "out_dim"):
            expected = {
                "n_channels": c,
                "n_times": self.n_times,
                "n_subjects": len(self.subjects),
                "out_dim": f,
            }[key]
            if key in self.model_config and int(self.model_config[key]) != expected:
                raise BundleError(
                    f"model_config {key}={self.model_config[key]} but the bundle says {expected}"
                )
        self.gallery_meta.check(len(self.gallery_ids))
        self.fit_config.check()
        if self.loss is not None:
            self.loss.check()
        unknown = sorted(set(self.scalers) - set(self.subjects))
        if unknown:
            raise BundleError(f"scalers name subjects the bundle does not know: {unknown}")
        for subject, scaler in self.scalers.items():
            scaler.check(c, subject)
        if self.prediction_stats is not None:
            self.prediction_stats.check(f)

    @property
    def streamable(self) -> bool:
        """Whether the bundle holds what online preprocessing needs (config and scalers)."""
        return self.preprocess is not None and bool(self.scalers)

    def split_latent(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """(N, F) predictions -> {latent name: (N, F_name)}, what a generator is conditioned on."""
        from megdecode.latents.targets import split_target

        return split_target(z, list(self.latent_parts))

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
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
