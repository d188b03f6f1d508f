"""Image latents: the cache, the hand-crafted encoder, CLIP-Vision on a tiny open_clip ViT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fixtures.configs import TINY_TEXT, register_open_clip
from fixtures.s3 import S3Server
from megdecode.latents.base import ImageEncoder
from megdecode.latents.cache import LatentCacheError, encode_cached, latent_info, load_latents
from megdecode.latents.encoders.handcrafted import HandcraftedConfig, HandcraftedEncoder

TINY_VIT = "megdecode-test-tiny-vit"


def draw(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    box = sorted(rng.integers(0, size, 2).tolist()) + sorted(rng.integers(0, size, 2).tolist())
    ImageDraw.Draw(image).ellipse(
        [box[0], box[2], box[1] + 1, box[3] + 1],
        fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
    )
    return image


@pytest.fixture()
def image_files(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"img{i}.png")
        draw(i).save(paths[-1])
    return paths


class CountingEncoder:
    """Mean colour per channel; counts the images it is asked to encode."""

    name, dim, fingerprint = "mean-rgb", 3, "mean-rgb-v1"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.calls.append(len(images))
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in images])


def test_cache_encodes_only_missing_ids_and_keeps_order(
    tmp_path: Path, image_files: list[Path]
) -> None:
    encoder = CountingEncoder()
    assert isinstance(encoder, ImageEncoder)
    ids = [30, 10, 20]
    got_ids, first = encode_cached(encoder, ids, image_files[:3], tmp_path / "c", batch_size=2)
    assert encoder.calls == [2, 1]
    assert got_ids.tolist() == ids and first.dtype == np.float32 and first.shape == (3, 3)
    assert np.allclose(first[1], np.asarray(Image.open(image_files[1]), np.float32).mean((0, 1)))

    encoder.calls.clear()
    # reordered, a duplicate, and two new ids: only the new ones are encoded
    ids2 = [20, 40, 30, 20, 50]
    files2 = [image_files[2], image_files[3], image_files[0], image_files[2], image_files[4]]
    got_ids, second = encode_cached(encoder, ids2, files2, tmp_path / "c", batch_size=8)
    assert encoder.calls == [2]
    assert got_ids.tolist() == ids2
    assert np.array_equal(second[[0, 2, 3]], first[[2, 0, 2]])

    encoder.calls.clear()
    encode_cached(encoder, ids2, files2, tmp_path / "c")
    assert encoder.calls == []
    stored_ids, stored = load_latents(tmp_path / "c" / "mean-rgb.parquet")
    assert stored_ids.tolist() == [10, 20, 30, 40, 50] and stored.shape == (5, 3)
    assert latent_info(tmp_path / "c" / "mean-rgb.parquet")["fingerprint"] == "mean-rgb-v1"


def test_cache_refuses_a_different_encoder_under_the_same_name(
    tmp_path: Path, image_files: list[Path]
) -> None:
    encode_cached(CountingEncoder(), [1], image_files[:1], tmp_path)
    other = CountingEncoder()
    other.fingerprint = "mean-rgb-v2"
    with pytest.raises(LatentCacheError, match="mean-rgb.parquet"):
        encode_cached(other, [1], image_files[:1], tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        load_latents(tmp_path / "nothing.parquet")


def test_handcrafted_is_deterministic_and_discriminative() -> None:
    encoder = HandcraftedEncoder()
    a, b = draw(1), draw(2)
    out = encoder.encode([a, b, a.copy()])
    assert out.shape == (3, encoder.dim) and out.dtype == np.float32
    assert np.array_equal(out[0], out[2])
    assert np.array_equal(out[0], HandcraftedEncoder().encode([a])[0])
    assert not np.allclose(out[0], out[1])
    assert np.isfinite(out).all()
    bins = encoder.config.color_bins
    assert np.allclose(out[:, : 3 * bins].reshape(3, 3, bins).sum(-1), 1.0)  # colour fractions
    assert np.allclose(out[:, -(encoder.config.lbp_points + 2) :].sum(-1), 1.0)  # LBP fractions


def test_handcrafted_dim_follows_config() -> None:
    cfg = HandcraftedConfig(
        image_size=32, color_bins=4, hog_pixels_per_cell=8, lbp_points=16, lbp_radius=2.0
    )
    encoder = HandcraftedEncoder(cfg)
    assert encoder.encode([draw(0)]).shape == (1, encoder.dim)
    assert encoder.dim == 3 * 4 + 9 * 4 * 9 + 18  # 4x4 cells -> 3x3 blocks of 2x2 cells
    with pytest.raises(ValueError, match="too small"):
        HandcraftedEncoder(HandcraftedConfig(image_size=16, hog_pixels_per_cell=16))


# ---- CLIP-Vision on a tiny random open_clip ViT ------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register a tiny ViT config with open_clip (32 px, patch 8 -> 4x4 grid + class token)."""
    text = TINY_TEXT | {"width": 32, "heads": 2}
    folder = tmp_path_factory.mktemp("open_clip")
    return register_open_clip(
        folder, TINY_VIT, embed_dim=32, width=64, layers=2, patch_size=8, text=text
    )


def test_clip_refuses_missing_weights(tiny_vit: str, tmp_path: Path) -> None:
    from megdecode.latents.encoders.clip import ClipVisionEncoder

    with pytest.raises(FileNotFoundError, match=f"no weights at {tmp_path / 'absent.pt'}"):
        ClipVisionEncoder(tiny_vit, pretrained=tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="needs weights"):
        ClipVisionEncoder(tiny_vit, pretrained=None)


def test_clip_random_init_is_explicit_and_reproducible(
    tiny_vit: str, caplog: pytest.LogCaptureFixture
) -> None:
    from megdecode.latents.encoders.clip import ClipVisionEncoder

    with caplog.at_level("WARNING", logger="megdecode.latents.encoders.clip"):
        encoder = ClipVisionEncoder(tiny_vit, pretrained=None, allow_random_init=True)
    assert "RANDOM weights" in caplog.text
    images = [draw(1), draw(2)]
    out = encoder.encode(images)
    assert encoder.name == "clip-vision" and encoder.token_shape is None
    assert out.shape == (2, 32) == (2, encoder.dim) and out.dtype == np.float32
    assert not np.allclose(out[0], out[1])
    again = ClipVisionEncoder(tiny_vit, pretrained=None, allow_random_init=True).encode(images)
    assert np.array_equal(out, again)


def test_clip_tokens_grid_starts_with_the_cls_embedding(tiny_vit: str) -> None:
    from megdecode.latents.encoders.clip import ClipVisionEncoder

    cls = ClipVisionEncoder(tiny_vit, None, output="cls", allow_random_init=True)
    tokens = ClipVisionEncoder(tiny_vit, None, output="tokens", allow_random_init=True)
    assert tokens.name == "clip-vision-tokens"
    assert tokens.token_shape == (17, 32) and tokens.dim == 17 * 32
    images = [draw(3), draw(4)]
    grid = tokens.encode(images).reshape(2, *tokens.token_shape)
    np.testing.assert_allclose(grid[:, 0], cls.encode(images), rtol=1e-5, atol=1e-6)
    assert not np.allclose(grid[:, 1], grid[:, 2])  # patch tokens carry position/content


def test_clip_loads_a_local_checkpoint(tiny_vit: str, tmp_path: Path) -> None:
    import open_clip
    import torch

    from megdecode.latents.encoders.clip import ClipVisionEncoder

    torch.manual_seed(123)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_vit)
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)

    encoder = ClipVisionEncoder(tiny_vit, pretrained=weights)
    images = [draw(5), draw(6)]
    with torch.no_grad():
        reference = model.eval().encode_image(torch.stack([preprocess(im) for im in images]))
    out = encoder.encode(images)
    np.testing.assert_allclose(out, reference.numpy(), rtol=1e-5, atol=1e-6)
    random = ClipVisionEncoder(tiny_vit, None, allow_random_init=True).encode(images)
    assert not np.allclose(out, random)
    assert str(weights.resolve()) in encoder.fingerprint


def test_cache_on_s3_encodes_once_and_reads_back(
    s3_server: S3Server, tmp_path: Path, image_files: list[Path]
) -> None:
    from megdecode.latents.targets import load_target

    encoder = CountingEncoder()
    uri = s3_server.uri("latents")
    _, first = encode_cached(encoder, [3, 1], image_files[:2], uri)
    encoder.calls.clear()
    _, again = encode_cached(encoder, [1, 3], image_files[1::-1], uri)
    assert encoder.calls == []  # read back from the bucket
    assert np.array_equal(again, first[::-1])
    ids, values, parts = load_target(uri, "mean-rgb")
    assert ids.tolist() == [1, 3] and parts == [("mean-rgb", 3)]
    assert latent_info(f"{uri}/mean-rgb.parquet")["dim"] == 3
