"""Image metrics against independent references, and the metric networks on random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.configs import register_open_clip
from megdecode.generate import metrics
from megdecode.generate.features import FeatureNets, as_float_images

TINY_CLIP = "megdecode-test-tiny-metric-clip"


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) float in [0, 1]: blobs on gradients, so SSIM/feature nets see structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        cy, cx, r = rng.uniform(0.2, 0.8, 3) * (1, 1, 0.4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        for c in range(3):
            a, b, g = rng.uniform(0, 1, 3)
            out[i, ..., c] = np.clip(0.5 * (a * xx + b * yy) + g * blob, 0, 1)
    return out


# ---- references written here, independently of the library --------------------------------


def reference_ssim_grey(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Wang et al. SSIM with a Gaussian window (truncate 3.5 sigma), population statistics."""
    from scipy.ndimage import gaussian_filter

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma, truncate=3.5, mode="reflect")

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    pad = (2 * int(3.5 * sigma + 0.5) + 1 - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])


def brute_force_two_way(rec: np.ndarray, gt: np.ndarray) -> float:
    n = len(rec)
    per_rec = []
    for j in range(n):
        own = np.corrcoef(rec[j], gt[j])[0, 1]
        wins = sum(np.corrcoef(rec[j], gt[i])[0, 1] < own for i in range(n) if i != j)
        per_rec.append(wins / (n - 1))
    return float(np.mean(per_rec))


# ---- pixel metrics -------------------------------------------------------------------------


def test_inputs_pil_uint8_and_float_agree_and_bad_ranges_fail() -> None:
    imgs = (smooth_images(3, 16, 0) * 255).round().astype(np.uint8)
    pil = [Image.fromarray(a) for a in imgs]
    np.testing.assert_array_equal(as_float_images(pil), as_float_images(imgs))
    np.testing.assert_allclose(
        as_float_images(imgs.astype(np.float32) / 255), imgs / 255, atol=1e-7
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_float_images(imgs.astype(np.float32))
    with pytest.raises(ValueError, match="share a size"):
        as_float_images([imgs[0], imgs[0, :8]])
    with pytest.raises(ValueError, match="2 reconstructions but 3"):
        metrics.pixcorr(imgs[:2], imgs, size=16)


def test_pixcorr_is_the_mean_pearson_r_of_flattened_rgb() -> None:
    gt = smooth_images(4, 32, 1)
    rec = np.clip(gt + np.random.default_rng(2).normal(0, 0.2, gt.shape), 0, 1).astype(np.float32)
    reference = np.mean(
        [np.corrcoef(r.ravel(), g.ravel())[0, 1] for r, g in zip(rec, gt, strict=True)]
    )
    assert metrics.pixcorr(rec, gt, size=32) == pytest.approx(reference, abs=1e-6)
    assert 0.3 < reference < 0.99
    assert metrics.pixcorr(gt, gt, size=48) == pytest.approx(1.0, abs=1e-6)  # resized first


def test_ssim_matches_an_independent_gaussian_ssim_on_grey_images() -> None:
    gt = smooth_images(3, 40, 3)
    rec = np.clip(gt + np.random.default_rng(4).normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    reference = np.mean(
        [reference_ssim_grey(grey(r), grey(g)) for r, g in zip(rec, gt, strict=True)]
    )
    assert metrics.ssim(rec, gt, size=40) == pytest.approx(reference, abs=1e-4)
    assert reference < 0.95
    assert metrics.ssim(gt, gt, size=40) == pytest.approx(1.0, abs=1e-9)
    assert metrics.ssim(rec, gt[::-1], size=40) < metrics.ssim(rec, gt, size=40)


# ---- feature-space metrics -----------------------------------------------------------------


def test_two_way_identification_matches_the_double_loop() -> None:
    rng = np.random.default_rng(5)
    gt = rng.normal(size=(12, 30))
    rec = 0.6 * gt + rng.normal(size=gt.shape)
    score = metrics.two_way_identification(rec, gt)
    assert score == pytest.approx(brute_force_two_way(rec, gt), abs=1e-12)
    assert 0.5 < score < 1.0
    assert metrics.two_way_identification(gt, gt) == 1.0
    shuffled = rng.normal(size=(300, 30))
    assert abs(metrics.two_way_identification(shuffled, rng.normal(size=(300, 30))) - 0.5) < 0.03
    with pytest.raises(ValueError, match="at least 2"):
        metrics.two_way_identification(gt[:1], gt[:1])


def test_correlation_distance_is_scipys_mean_correlation_distance() -> None:
    from scipy.spatial.distance import correlation

    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))
    expected = np.mean([correlation(x, y) for x, y in zip(a, b, strict=True)])
    assert metrics.correlation_distance(a, b) == pytest.approx(expected, abs=1e-12)
    assert metrics.correlation_distance(a, a) == pytest.approx(0.0, abs=1e-12)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("open_clip")
    return register_open_clip(folder, TINY_CLIP, embed_dim=16, width=32, layers=1, patch_size=8)


def test_compute_metrics_on_random_networks(
    tiny_clip: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="megdecode.latents.weights"):
        nets = FeatureNets.load(
            None, clip_model=tiny_clip, inception_size=139, allow_random_init=True
        )
    assert "RANDOM weights" in caplog.text
    assert set(nets.nets) == {"alexnet2", "alexnet5", "inception", "clip", "swav"}
    gt = smooth_images(4, 48, 7)
    same = metrics.compute_metrics(gt, gt, nets, size=64)
    assert same.keys() == {"pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "swav"}
    for key in ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip"):
        assert same[key] == pytest.approx(1.0, abs=1e-6), key
    assert same["swav"] == pytest.approx(0.0, abs=1e-6)

    rec = smooth_images(4, 48, 8)  # unrelated images
    other = metrics.compute_metrics(rec, gt, nets, size=64)
    assert other["swav"] > 1e-3 and other["pixcorr"] < 0.99 and other["ssim"] < 0.99
    feats_rec, feats_gt = nets.features("alexnet5", rec), nets.features("alexnet5", gt)
    assert feats_rec.shape == (4, 256 * 15 * 15)  # features.11 at 256 px
    assert other["alexnet5"] == pytest.approx(brute_force_two_way(feats_rec, feats_gt), abs=1e-9)
    assert metrics.compute_metrics(rec, gt, None, size=64).keys() == {"pixcorr", "ssim"}


def test_feature_nets_load_local_files_and_refuse_missing_ones(tmp_path: Path) -> None:
    from torchvision.models import alexnet, resnet50

    with pytest.raises(FileNotFoundError, match=f"no weights at {tmp_path / 'alexnet.pth'}"):
        FeatureNets.load(tmp_path, ["alexnet"])
    with pytest.raises(ValueError, match="unknown metric network 'vgg'"):
        FeatureNets.load(tmp_path, ["vgg"])

    torch.manual_seed(9)
    alex = alexnet(weights=None).eval()
    torch.save(alex.state_dict(), tmp_path / "alexnet.pth")
    swav = resnet50(weights=None).eval()
    # the SwAV release: DataParallel prefix, a projection head, no fc
    state = {f"module.{k}": v for k, v in swav.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(4, 2048)
    torch.save({"state_dict": state}, tmp_path / "swav_resnet50.pth")
    nets = FeatureNets.load(tmp_path, ["alexnet", "swav"])

    imgs = smooth_images(2, 32, 10)
    pixels = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    pixels = torch.nn.functional.interpolate(
        pixels, size=(256, 256), mode="bilinear", antialias=True
    )
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        expected = alex.features[:5]((pixels.clamp(0, 1) - mean) / std).flatten(1).numpy()
    np.testing.assert_allclose(nets.features("alexnet2", imgs), expected, rtol=1e-4, atol=1e-5)
    assert nets.features("swav", imgs).shape == (2, 2048)

    torch.save(
        {"conv1.weight": swav.conv1.weight}, tmp_path / "swav_resnet50.pth"
    )  # not a ResNet-50
    with pytest.raises(ValueError, match="swav_resnet50.pth is not a SwAV ResNet-50"):
        FeatureNets.load(tmp_path, ["swav"])
