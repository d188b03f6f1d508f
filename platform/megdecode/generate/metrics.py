"""Image reconstruction metrics, defined as in brain-diffuser / MindEye (and the paper).

Low-level: PixCorr, SSIM, AlexNet(2), AlexNet(5); high-level: Inception, CLIP, SwAV, and
EfficientNet-Lite0 (pooled 1280-d pre-logits features of a supervised ImageNet CNN, the
role the paper gives VGG-19; its weights ship with the `pretrained` extra).
Reconstruction i is always compared with its own seen image i.

- PixCorr: both images resized to `size` x `size` (425 px, bilinear, antialiased), RGB
  pixels flattened (3 * size^2 values), Pearson r of the pair; mean over pairs. Higher
  is better.
- SSIM: both resized as for PixCorr, converted to grey with scikit-image's ``rgb2gray``
  (0.2125 R + 0.7154 G + 0.0721 B), ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1.0)``; mean over pairs. Higher is
  better.
- Two-way identification (AlexNet(2), AlexNet(5), Inception, CLIP, effnet_lite0_2way):
  features f of
  every reconstruction and every seen image (`features.FeatureNets`); for reconstruction
  j, the fraction of the other N - 1 seen images i != j with
  corr(f(rec_j), f(gt_i)) < corr(f(rec_j), f(gt_j)) (Pearson r over feature dims, strict
  inequality); mean over j. Chance 0.5, perfect 1.0. Needs N >= 2 and depends on N's
  composition, so compare it on the same image set only.
- SwAV: mean over pairs of the correlation distance 1 - corr(f(rec_i), f(gt_i)) of SwAV
  ResNet-50 avgpool features. Lower is better; 0 for identical images.

`compute_metrics` runs all of them (the network ones for the networks given).
"""

from __future__ import annotations

import logging

import numpy as np

from megdecode.generate.features import FeatureNets, ImagesLike, as_float_images, resize

logger = logging.getLogger(__name__)

METRIC_SIZE = 425  # the pixel-metric resolution of brain-diffuser / MindEye (NSD's 425 px)
IDENTIFICATION = ("alexnet2", "alexnet5", "inception", "clip", "effnet_lite0_2way")
LOWER_IS_BETTER = ("swav",)


def _pairs(recons: ImagesLike, targets: ImagesLike, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as (N, size, size, 3) float in [0, 1]; N must match."""
    rec = resize(as_float_images(recons), size).permute(0, 2, 3, 1).numpy()
    gt = resize(as_float_images(targets), size).permute(0, 2, 3, 1).numpy()
    if len(rec) != len(gt):
        raise ValueError(f"{len(rec)} reconstructions but {len(gt)} seen images")
    return rec, gt


def _standardise(x: np.ndarray) -> np.ndarray:
    """Rows -> zero mean, unit norm (float64), so row dot products are Pearson r."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def paired_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, ...) and (N, ...) -> (N,) Pearson r of a[i] and b[i] over their flattened values."""
    return np.einsum("nd,nd->n", _standardise(a), _standardise(b))


def pixcorr(recons: ImagesLike, targets: ImagesLike, size: int = METRIC_SIZE) -> float:
    """Mean Pearson r of the flattened RGB pixels of each pair at `size` px."""
    rec, gt = _pairs(recons, targets, size)
    return float(paired_correlation(rec, gt).mean())


def ssim(recons: ImagesLike, targets: ImagesLike, size: int = METRIC_SIZE) -> float:
    """Mean grey-level SSIM of each pair at `size` px (Gaussian window, sigma 1.5)."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    rec, gt = _pairs(recons, targets, size)
    scores = [
        structural_similarity(
            rgb2gray(r),
            rgb2gray(g),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for r, g in zip(rec, gt, strict=True)
    ]
    return float(np.mean(scores))


def two_way_identification(rec_features: np.ndarray, gt_features: np.ndarray) -> float:
    """(N, D) reconstruction and seen-image features -> two-way identification in [0, 1].

    r[i, j] = corr(gt_i, rec_j); reconstruction j wins against gt_i (i != j) when
    r[i, j] < r[j, j]. Returns the mean over j of its wins / (N - 1).
    """
    if len(rec_features) != len(gt_features):
        raise ValueError(f"{len(rec_features)} reconstructions but {len(gt_features)} seen images")
    n = len(rec_features)
    if n < 2:
        raise ValueError("two-way identification needs at least 2 images")
    r = _standardise(gt_features) @ _standardise(rec_features).T  # (gt i, rec j)
    wins = (r < np.diag(r)[None, :]).sum(axis=0)  # the diagonal never counts (strict <)
    return float(wins.mean() / (n - 1))


def correlation_distance(rec_features: np.ndarray, gt_features: np.ndarray) -> float:
    """Mean over pairs of 1 - Pearson r(rec_i, gt_i) (scipy's ``correlation`` distance)."""
    if len(rec_features) != len(gt_features):
        raise ValueError(f"{len(rec_features)} reconstructions but {len(gt_features)} seen images")
    return float(np.mean(1.0 - paired_correlation(rec_features, gt_features)))


def compute_metrics(
    recons: ImagesLike,
    targets: ImagesLike,
    feature_nets: FeatureNets | None = None,
    size: int = METRIC_SIZE,
) -> dict[str, float]:
    """All metrics of reconstructions vs seen images, keyed by metric name.

    recons, targets: N images each (PIL, or (N, H, W, 3) uint8 / float in [0, 1]), pair
    i = reconstruction and seen image of trial i. Keys: pixcorr, ssim, and for each
    network in `feature_nets`: alexnet2, alexnet5, inception, clip, effnet_lite0_2way
    (two-way identification, higher is better), swav (correlation distance, lower is better).
    """
    rec = as_float_images(recons)
    gt = as_float_images(targets)
    out = {"pixcorr": pixcorr(rec, gt, size), "ssim": ssim(rec, gt, size)}
    nets = feature_nets.nets if feature_nets is not None else {}
    for name, net in nets.items():
        pred, true = net.features(rec), net.features(gt)
        if name in LOWER_IS_BETTER:
            out[name] = correlation_distance(pred, true)
        else:
            out[name] = two_way_identification(pred, true)
    missing = [m for m in (*IDENTIFICATION, *LOWER_IS_BETTER) if m not in out]
    if missing:
        logger.debug("metrics without a network, not computed: %s", ", ".join(missing))
    return out
