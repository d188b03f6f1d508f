"""Per-channel robust scaling of epochs: fitted on a subject's training epochs, applied to all.

The scaler is fitted on training epochs only (one that has seen test epochs leaks their
statistics), so it runs after the splits exist: in the store build's second pass, per
subject. Its centre and scale travel in the store manifest and the model bundle, so the
serving stream scales one window exactly as the store scaled it (`robust_scale` is that
shared formula).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def robust_scale(
    x: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    clip: float | None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(N, C, T) -> (x - center[c]) / scale[c], clipped to [-clip, clip] when clip is set.

    Computed in one array (`out` when given, e.g. a slice of a larger result; else a new one
    of the dtype of x - center), with no temporaries: the store build and the serving
    stream run it over every sample. `scale` must not be a wider dtype than x - center.
    """
    out = np.subtract(x, center[None, :, None], out=out)
    np.divide(out, scale[None, :, None], out=out)
    if clip is not None:
        np.clip(out, -clip, clip, out=out)
    return out


@dataclass
class RobustScaler:
    """Per-channel centre (median) and scale (IQR), like sklearn's RobustScaler per channel.

    Plain arrays so that `to_dict()` can go into the store manifest and the model bundle.
    """

    center: np.ndarray  # (C,)
    scale: np.ndarray  # (C,)
    quantile_range: tuple[float, float] = (25.0, 75.0)

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "quantile_range": [float(q) for q in self.quantile_range],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobustScaler:
        for k in ("center", "scale"):
            if k not in d:
                raise KeyError(f"scaler dict lacks {k!r}")
        q0, q1 = d.get("quantile_range", (25.0, 75.0))
        return cls(
            np.asarray(d["center"], dtype=np.float64),
            np.asarray(d["scale"], dtype=np.float64),
            (q0, q1),
        )


def fit_robust_scaler(
    x: np.ndarray, quantile_range: tuple[float, float] = (25.0, 75.0)
) -> RobustScaler:
    """(N, C, T) training epochs -> median and IQR per channel over all epochs and samples.

    One channel at a time, so the working copy is N*T values, not the whole array. A flat
    channel (IQR 0) gets scale 1, as in sklearn, instead of dividing by zero.
    """
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(
            f"fit_robust_scaler needs (N, C, T) epochs with N > 0, got shape {x.shape}"
        )
    q0, q1 = quantile_range
    center, scale = np.empty(x.shape[1]), np.empty(x.shape[1])
    for c in range(x.shape[1]):
        values = x[:, c, :].astype(np.float64).ravel()
        if not np.isfinite(values).all():
            raise ValueError(f"channel {c} has non-finite values; cannot fit the scaler")
        # `values` is this loop's own copy: the percentile may partition it in place.
        lo, center[c], hi = np.percentile(values, [q0, 50.0, q1], overwrite_input=True)
        scale[c] = hi - lo
    flat = scale <= 0
    if flat.any():
        logger.warning("%d channel(s) have zero IQR; their scale is set to 1", int(flat.sum()))
        scale[flat] = 1.0
    return RobustScaler(center, scale, (float(q0), float(q1)))


def fit_scaler(
    x: np.ndarray, kind: str, quantile_range: tuple[float, float] = (25.0, 75.0)
) -> RobustScaler:
    """The scaler a preprocessing config asks for (its `scaler`, `quantile_range`): "robust",
    or "none", the identity (centre 0, scale 1)."""
    if kind == "none":
        return RobustScaler(np.zeros(x.shape[1]), np.ones(x.shape[1]), quantile_range)
    if kind != "robust":
        raise ValueError(f"scaler: expected 'robust' or 'none', got {kind!r}")
    return fit_robust_scaler(x, quantile_range)


def apply_scaler(x: np.ndarray, scaler: RobustScaler, clip: float | None) -> np.ndarray:
    """(N, C, T) -> scaled and clipped float32: `robust_scale` in float32 into the output,
    a few hundred epochs at a time (no float64 copy of x; pass 2 of a build is
    memory-bound, and this was ~2x slower with whole-chunk temporaries)."""
    if x.ndim != 3 or x.shape[1] != len(scaler.center):
        raise ValueError(f"scaler has {len(scaler.center)} channels, data has shape {x.shape}")
    center = scaler.center.astype(np.float32)
    scale = scaler.scale.astype(np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    for i in range(0, x.shape[0], 256):
        robust_scale(
            x[i : i + 256].astype(np.float32, copy=False), center, scale, clip, out=out[i : i + 256]
        )
    return out
