"""MSE-head outputs -> latents on the training latents' scale (DESIGN §4).

A regression head shrinks its outputs towards the mean (it minimises squared error under
uncertainty), so its raw predictions have a much smaller spread than real latents, and a
generator trained on real latents turns them into washed-out averages. The paper's fix:
z-score each dimension with the statistics of a set of predictions, then map to the
training latents' mean/std.

Which set: a bundle stores the statistics of its validation predictions
(`megdecode.bundle.PredictionStats`), and `bundle_latents` z-scores with them, so one
served window (N = 1, no spread of its own) and the same window offline are scaled alike.
`to_latent_space` without stored statistics z-scores over the batch itself (N >= 2: the
offline evaluation's "set" mode). One prediction without stored statistics (a bundle made
before they were stored) is returned unchanged, with a warning: the MSE head was trained
on unnormalised latents, so its output is already in latent units, only with too small a
spread; that is the least wrong answer available, whereas returning the training mean (a
z-score of 0) would throw the brain signal away entirely.
"""

from __future__ import annotations

import logging

import numpy as np

from megdecode.bundle import ModelBundle, PredictionStats
from megdecode.evaluation.retrieval import postprocess_mse

logger = logging.getLogger(__name__)


def to_latent_space(
    mse_pred: np.ndarray,
    latent_mean: np.ndarray,
    latent_std: np.ndarray,
    stats: PredictionStats | None = None,
) -> np.ndarray:
    """mse_pred (N, F), latent_mean/std (F,) -> (N, F) float32 with the training mean/std.

    Z-scored with `stats` when given, else over the batch itself (N >= 2). N = 1 without
    stats: returned unchanged (module docstring).
    """
    pred = np.asarray(mse_pred, dtype=np.float64)
    if pred.ndim != 2:
        raise ValueError(f"mse_pred must be (N, F), got {pred.shape}")
    f = pred.shape[1]
    for name, arr in (("latent_mean", latent_mean), ("latent_std", latent_std)):
        if np.shape(arr) != (f,):
            raise ValueError(f"{name} must have shape ({f},), got {np.shape(arr)}")
    if stats is None:
        if len(pred) < 2:
            logger.warning("one prediction and no stored prediction statistics: returned unscaled")
            return pred.astype(np.float32)
        return postprocess_mse(pred, latent_mean, latent_std).astype(np.float32)
    if np.shape(stats.mean) != (f,):
        raise ValueError(
            f"prediction statistics have width {np.shape(stats.mean)}, the predictions {f}"
        )
    return postprocess_mse(pred, latent_mean, latent_std, stats.mean, stats.std).astype(np.float32)


def bundle_latents(bundle: ModelBundle, mse_pred: np.ndarray) -> np.ndarray:
    """(N, F) MSE predictions of `bundle`'s model -> latents scaled with its stored statistics.

    What a served window and `megdecode reconstruct` go through; a bundle without stored
    statistics falls back to `to_latent_space`'s batch z-score (unchanged for N = 1).
    """
    return to_latent_space(mse_pred, bundle.latent_mean, bundle.latent_std, bundle.prediction_stats)
