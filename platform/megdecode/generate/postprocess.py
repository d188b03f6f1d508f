"""MSE-head outputs -> latents on the training latents' scale (DESIGN §4).

A regression head shrinks its outputs towards the mean (it minimises squared error under
uncertainty), so its raw predictions have a much smaller spread than real latents, and a
generator trained on real latents turns them into washed-out averages. The paper's fix:
z-score each dimension over the predicted set, then map to the training latents'
mean/std.

The single-sample case (serving one MEG window, N = 1): a set of one has no spread, so
its z-score is 0/0. With stored prediction statistics (`pred_mean`/`pred_std`, measured
on a reference set of predictions such as the validation or test set, e.g. kept in a
bundle's ``extra``), the sample is z-scored with those. Without them the prediction is
returned unchanged, with a warning: the MSE head was trained on unnormalised latents, so
its output is already in latent units, only with too small a spread; that is the least
wrong answer available, whereas returning the training mean (a z-score of 0) would throw
the brain signal away entirely.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from megdecode.evaluate import postprocess_mse

logger = logging.getLogger(__name__)

PRED_MEAN, PRED_STD = "pred_mean", "pred_std"  # keys in ModelBundle.extra


def to_latent_space(
    mse_pred: np.ndarray,
    latent_mean: np.ndarray,
    latent_std: np.ndarray,
    pred_mean: np.ndarray | None = None,
    pred_std: np.ndarray | None = None,
) -> np.ndarray:
    """mse_pred (N, F), latent_mean/std (F,) -> (N, F) float32 with the training mean/std.

    Statistics come from `pred_mean`/`pred_std` (F,) when given, else from the batch
    itself (N >= 2). N = 1 without stored statistics: returned unchanged (module docstring).
    """
    pred = np.asarray(mse_pred, dtype=np.float64)
    if pred.ndim != 2:
        raise ValueError(f"mse_pred must be (N, F), got {pred.shape}")
    f = pred.shape[1]
    for name, arr in (("latent_mean", latent_mean), ("latent_std", latent_std)):
        if np.shape(arr) != (f,):
            raise ValueError(f"{name} must have shape ({f},), got {np.shape(arr)}")
    if (pred_mean is None or pred_std is None) and len(pred) < 2:
        logger.warning("one prediction and no stored prediction stats: returned unchanged")
        return pred.astype(np.float32)
    return postprocess_mse(pred, latent_mean, latent_std, pred_mean, pred_std).astype(np.float32)


def prediction_stats(mse_pred: np.ndarray) -> dict[str, list[float]]:
    """{pred_mean, pred_std} of a reference set of predictions (N, F), JSON-ready for bundle.extra."""
    pred = np.asarray(mse_pred, dtype=np.float64)
    if pred.ndim != 2 or len(pred) < 2:
        raise ValueError(f"need (N >= 2, F) predictions, got {pred.shape}")
    return {PRED_MEAN: pred.mean(0).tolist(), PRED_STD: pred.std(0).tolist()}


def stored_stats(extra: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(pred_mean, pred_std) from a bundle's ``extra`` when present, else (None, None)."""
    if PRED_MEAN in extra and PRED_STD in extra:
        return np.asarray(extra[PRED_MEAN], np.float64), np.asarray(extra[PRED_STD], np.float64)
    return None, None
