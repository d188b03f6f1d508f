"""The typed fields of a model bundle with structure of their own, and the first format's migration.

Each field knows its JSON form (`to_json` / `from_json`) and checks itself (`check`),
raising `BundleError` with the field's name, so `megdecode.bundle_io.load_bundle` refuses a
broken bundle saying what is wrong instead of a reader failing later on a missing key.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from megdecode.config import Scalar
from megdecode.data.preprocess import PreprocessConfig

if TYPE_CHECKING:
    from megdecode.losses import CombinedLoss

logger = logging.getLogger(__name__)

FORMAT_V1 = "megdecode-bundle/1"  # serving fields in an untyped "extra" object; migrated on load
_V1_REQUIRED = ("fit_config", "gallery_meta")  # what a first-format bundle needs to be migrated


class BundleError(ValueError):
    """The bundle is missing a field or its fields disagree; the message says which."""


class LatentPart(NamedTuple):
    """One block of the target: a latent's name and its width in the concatenated (F,) vector."""

    name: str
    width: int


@dataclass(frozen=True)
class LossState:
    """The trained loss's state: the CLIP temperature τ as `losses.ClipLoss` keeps it.

    Kept with the weights (as open_clip keeps ``logit_scale`` with its model) because the
    brain module's CLIP outputs were trained against similarities scaled by 1/τ: scoring
    them as probabilities, or fine-tuning, starts from the learned value, not τ₀.
    """

    logit_scale: float  # log(1/τ) of the best epoch, as clamped by `ClipLoss.clamp_`
    learned: bool  # False: τ stayed at the config's temperature_init

    @classmethod
    def of(cls, loss: CombinedLoss) -> LossState:
        """The state of a trained loss: its CLIP part's ``logit_scale`` (a 0-d float32 tensor)."""
        return cls(float(loss.clip.logit_scale.detach().cpu()), loss.cfg.learn_temperature)

    @property
    def temperature(self) -> float:
        """τ = exp(-logit_scale)."""
        return math.exp(-self.logit_scale)

    def check(self) -> None:
        if not math.isfinite(self.logit_scale) or self.logit_scale < 0:
            raise BundleError(
                f"loss.logit_scale={self.logit_scale}: expected a finite log(1/τ) >= 0"
            )

    def to_json(self) -> dict[str, Any]:
        return {"logit_scale": self.logit_scale, "learned": self.learned}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> LossState:
        return cls(float(value["logit_scale"]), bool(value["learned"]))


@dataclass(frozen=True)
class GalleryMeta:
    """Category and image path of each gallery image, aligned with ``gallery_ids`` ("" = unknown)."""

    categories: tuple[str, ...]
    image_paths: tuple[str, ...]

    @classmethod
    def blank(cls, n: int) -> GalleryMeta:
        """`n` images with no category or path (a gallery of synthetic latents)."""
        return cls(("",) * n, ("",) * n)

    def check(self, n: int) -> None:
        for name, values in (("categories", self.categories), ("image_paths", self.image_paths)):
            if len(values) != n or not all(isinstance(v, str) for v in values):
                raise BundleError(
                    f"gallery_meta.{name} holds {len(values)} entries, expected {n} strings "
                    "(one per gallery image)"
                )

    def to_json(self) -> dict[str, list[str]]:
        return {"category": list(self.categories), "image_path": list(self.image_paths)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> GalleryMeta:
        return cls(
            tuple(str(c) for c in value["category"]), tuple(str(p) for p in value["image_path"])
        )


@dataclass(frozen=True)
class FitRecord:
    """The run's flat `train_config.FitConfig` (every key an MLflow param), recorded as trained.

    What re-scores the bundle on its data (`megdecode evaluate`) and finds that data:
    `store` and `latents_dir` ("" when the config does not name them).
    """

    flat: dict[str, Scalar]

    @property
    def store(self) -> str:
        return str(self.flat.get("store") or "")

    @property
    def latents_dir(self) -> str:
        return str(self.flat.get("latents_dir") or "")

    def check(self) -> None:
        bad = [
            k
            for k, v in self.flat.items()
            if not isinstance(k, str) or not isinstance(v, str | int | float | bool | None)
        ]
        if bad:
            raise BundleError(
                f"fit_config must be a flat config (scalar values); not scalar: {bad[:5]}"
            )

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FitRecord:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        return cls(dict(value))


@dataclass(frozen=True, eq=False)
class SubjectScaler:
    """One subject's robust scaler (`data.scaling`: per-channel centre and scale of its training
    epochs) and the native rate of its recordings: what the stream rebuilds a model input with."""

    center: np.ndarray  # (C,) float64
    scale: np.ndarray  # (C,) float64, > 0
    quantile_range: tuple[float, float] = (25.0, 75.0)
    raw_sfreq: float | None = (
        None  # Hz; None: the store did not record it (a stream client sends it)
    )

    def check(self, n_channels: int, subject: str) -> None:
        where = f"scalers[{subject!r}]"
        for name, arr in (("center", self.center), ("scale", self.scale)):
            if np.shape(arr) != (n_channels,) or not np.isfinite(arr).all():
                raise BundleError(
                    f"{where}.{name} has shape {np.shape(arr)}, expected ({n_channels},) finite values"
                )
        if not np.all(self.scale > 0):
            raise BundleError(f"{where}.scale has non-positive entries")
        if self.raw_sfreq is not None and not self.raw_sfreq > 0:
            raise BundleError(f"{where}.raw_sfreq={self.raw_sfreq}: expected > 0 Hz")

    def to_json(self) -> dict[str, Any]:
        """The store manifest's form (`RobustScaler.to_dict` plus ``raw_sfreq``)."""
        out: dict[str, Any] = {
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "quantile_range": [float(q) for q in self.quantile_range],
        }
        if self.raw_sfreq is not None:
            out["raw_sfreq"] = self.raw_sfreq
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SubjectScaler:
        q0, q1 = value.get("quantile_range", (25.0, 75.0))
        raw = value.get("raw_sfreq")
        return cls(
            np.asarray(value["center"], np.float64),
            np.asarray(value["scale"], np.float64),
            (float(q0), float(q1)),
            float(raw) if raw else None,
        )


def preprocess_from_json(value: dict[str, Any] | None) -> PreprocessConfig | None:
    """The flat `PreprocessConfig` of the store the bundle was trained on (None: it recorded none).

    Keys a later `PreprocessConfig` no longer has are ignored, as the stream has always read them."""
    return None if value is None else PreprocessConfig.from_flat_dict(dict(value), strict=False)


def upgrade_v1(meta: dict[str, Any], latent_width: int, meta_path: Path) -> dict[str, Any]:
    """A first-format bundle.json as the current format's keys: ``extra``'s entries become the
    typed fields; a field whose data the old bundle does not hold is refused by name."""
    extra = dict(meta.get("extra") or {})
    missing = [k for k in _V1_REQUIRED if k not in extra]
    if missing:
        raise BundleError(
            f"{meta_path} (format {FORMAT_V1}) is missing extra.{', extra.'.join(missing)}: "
            "it cannot be migrated; retrain the model"
        )
    fit = dict(extra["fit_config"])
    upgraded = {k: v for k, v in meta.items() if k != "extra"} | {
        "loss": _v1_loss(fit),
        "latent_parts": extra.get("latent_parts") or [[meta.get("latent_name"), latent_width]],
        "gallery_meta": extra["gallery_meta"],
        "fit_config": fit,
        "preprocess": extra.get("preprocess"),
        "scalers": extra.get("scalers") or {},
        "prediction_stats": meta.get("prediction_stats"),
    }
    dropped = sorted(set(extra) - {*_V1_REQUIRED, "latent_parts", "preprocess", "scalers"})
    logger.info(
        "%s: migrated from %s (extra's fields are typed now%s%s)",
        meta_path,
        FORMAT_V1,
        "; τ was learned but not stored, so the loss state is unknown"
        if upgraded["loss"] is None
        else "",
        f"; dropped untyped {dropped}" if dropped else "",
    )
    return upgraded


def _v1_loss(fit: dict[str, Any]) -> dict[str, Any] | None:
    """τ of a first-format bundle: known only when it was not learned (temperature_init, clamped
    as `ClipLoss.clamp_` does, in float32 as the buffer held it)."""
    if str(fit.get("loss.learn_temperature", True)).lower() not in ("false", "0", "no"):
        return None
    log_max = math.log(float(fit.get("loss.max_logit_scale", 100.0)))
    start = np.float32(math.log(1.0 / float(fit.get("loss.temperature_init", 0.07))))
    return LossState(
        float(np.clip(start, np.float32(0.0), np.float32(log_max))), learned=False
    ).to_json()
