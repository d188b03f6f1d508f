"""The latent generator on tiny random-init folders: loading, determinism, batching,
conditioning checks, dual-guidance mixing and the MSE post-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megdecode.bundle import PredictionStats
from megdecode.config import ConfigError
from megdecode.generate import (
    GenerateConfig,
    LatentGenerator,
    build_tiny_generator,
    to_latent_space,
)
from megdecode.generate.conditioning import MixedStreamsProcessor, stream_weights

COND = {"handcrafted": 20, "clip": 12}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_generator(tmp_path_factory.mktemp("gen") / "g", COND, size=16, seed=0)


@pytest.fixture(scope="module")
def gen(tiny_dir: Path) -> LatentGenerator:
    return LatentGenerator.from_dir(tiny_dir)


def _latents(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((n, f)).astype(np.float32) for name, f in COND.items()}


def _arr(images: list) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_round_trip_keeps_conditions_size_and_weights(
    gen: LatentGenerator, tiny_dir: Path, tmp_path: Path
) -> None:
    assert gen.conditions == COND and gen.size == 16
    again = LatentGenerator.from_dir(gen.save(tmp_path / "copy"))
    for key, value in gen.unet.state_dict().items():
        torch.testing.assert_close(value, again.unet.state_dict()[key], rtol=0, atol=0)
    x = _latents(2)
    np.testing.assert_array_equal(_arr(gen.generate(x, steps=3)), _arr(again.generate(x, steps=3)))


def test_missing_or_incomplete_folder_says_no_weights(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no weights at"):
        LatentGenerator.from_dir(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "generator.json").write_text((tiny_dir / "generator.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights at .*unet"):
        LatentGenerator.from_dir(broken)


def test_deterministic_per_seed_and_different_across_seeds(gen: LatentGenerator) -> None:
    x = _latents(2)
    a = _arr(gen.generate(x, steps=3, seed=5))
    b = _arr(gen.generate(x, steps=3, seed=5))
    c = _arr(gen.generate(x, steps=3, seed=6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_batch_of_n_gives_n_images_independent_of_batching(gen: LatentGenerator) -> None:
    x = _latents(5)
    images = gen.generate(x, steps=2, batch_size=2)
    assert len(images) == 5 and all(im.size == (16, 16) and im.mode == "RGB" for im in images)
    whole = _arr(gen.generate(x, steps=2, batch_size=8))
    # equal up to float rounding (kernels differ with the batch size): a pixel level or so
    assert np.abs(_arr(images) - whole).mean() < 0.05, np.abs(_arr(images) - whole).max()
    # sample 3 alone with its own seed equals sample 3 of the batch
    one = gen.generate({k: v[3:4] for k, v in x.items()}, steps=2, seeds=[3])
    assert np.abs(_arr(one)[0] - whole[3]).mean() < 0.05
    assert gen.generate({k: v[:0] for k, v in x.items()}) == []


def test_latents_are_checked(gen: LatentGenerator) -> None:
    x = _latents(2)
    with pytest.raises(ValueError, match="missing latent 'clip'"):
        gen.generate({"handcrafted": x["handcrafted"]})
    with pytest.raises(ValueError, match="shape"):
        gen.generate({"handcrafted": x["handcrafted"][:, :5], "clip": x["clip"]})
    extra = dict(x, other=np.zeros((2, 3), np.float32))  # extra names are ignored
    assert len(gen.generate(extra, steps=1)) == 2
    with pytest.raises(ConfigError, match="strength"):
        GenerateConfig(strength=0.0)


def test_conditioning_changes_the_image_and_mix_selects_streams(gen: LatentGenerator) -> None:
    x, y = _latents(2, seed=0), _latents(2, seed=1)
    base = _arr(gen.generate(x, steps=3, mix=0.0))
    assert np.abs(base - _arr(gen.generate(y, steps=3, mix=0.0))).mean() > 0.5
    # mix = 0: only the first stream ("handcrafted") is attended to; "clip" cannot matter
    other_clip = dict(x, clip=y["clip"])
    np.testing.assert_array_equal(base, _arr(gen.generate(other_clip, steps=3, mix=0.0)))
    assert np.abs(base - _arr(gen.generate(other_clip, steps=3, mix=0.5))).mean() > 0.0
    assert stream_weights(3, 0.4) == pytest.approx([0.6, 0.2, 0.2])


def test_mixed_processor_equals_diffusers_attention_for_one_stream() -> None:
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    h, ctx = torch.randn(3, 10, 16), torch.randn(3, 5, 8)
    ref = AttnProcessor()(attn, h, ctx)
    torch.testing.assert_close(MixedStreamsProcessor()(attn, h, ctx), ref)
    self_attn = Attention(query_dim=16, heads=2, dim_head=8)
    torch.testing.assert_close(
        MixedStreamsProcessor()(self_attn, h, None), AttnProcessor()(self_attn, h, None)
    )
    # two streams with weights (1, 0) = the first stream alone
    two = torch.cat([ctx, torch.randn(3, 4, 8)], dim=1)
    torch.testing.assert_close(
        MixedStreamsProcessor()(attn, h, two, stream_lengths=[5, 4], stream_weights=[1.0, 0.0]), ref
    )


def test_vae_and_init_latent_path(tmp_path: Path) -> None:
    path = build_tiny_generator(
        tmp_path / "v",
        {"handcrafted": 20, "autokl": 4 * 8 * 8},
        size=16,
        vae=True,
        init_latent="autokl",
    )
    gen = LatentGenerator.from_dir(path)
    x = {
        "handcrafted": np.zeros((2, 20), np.float32),
        "autokl": np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32),
    }
    low = _arr(gen.generate(x, steps=4, strength=0.25))
    assert low.shape == (2, 16, 16, 3)
    changed = dict(x, autokl=-x["autokl"])
    assert np.abs(low - _arr(gen.generate(changed, steps=4, strength=0.25))).mean() > 0.0
    # strength 1 ignores the init latent
    np.testing.assert_array_equal(
        _arr(gen.generate(x, steps=2, strength=1.0)),
        _arr(gen.generate(changed, steps=2, strength=1.0)),
    )


def test_postprocess_maps_to_training_mean_and_std() -> None:
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((50, 4)) * 0.1 + 3.0
    mean, std = np.array([0.0, 1.0, -2.0, 5.0]), np.array([1.0, 2.0, 0.5, 3.0])
    out = to_latent_space(pred, mean, std)
    assert out.shape == (50, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(0), mean, atol=1e-5)
    np.testing.assert_allclose(out.std(0), std, rtol=1e-5)
    # one sample: the stored stats of the set scale it as the set's z-score does; none -> unchanged
    stats = PredictionStats.of(pred, reference="val")
    np.testing.assert_allclose(
        to_latent_space(pred[:1], mean, std, stats), out[:1], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(to_latent_space(pred[:1], mean, std), pred[:1].astype(np.float32))
    with pytest.raises(ValueError, match="latent_std"):
        to_latent_space(pred, mean, std[:3])
    with pytest.raises(ValueError, match="width"):
        to_latent_space(pred[:, :3], mean[:3], std[:3], stats)


def test_patched_pixel_space_round_trips_images(tmp_path: Path) -> None:
    gen = LatentGenerator.from_dir(build_tiny_generator(tmp_path / "p", {"h": 4}, size=16, patch=4))
    assert gen.unet.config.in_channels == 48 and gen.unet.config.sample_size == 4
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    folded = gen.encode_images(images)
    assert folded.shape == (2, 48, 4, 4)
    torch.testing.assert_close(gen._decode(folded), images)
    assert [im.size for im in gen.generate({"h": np.ones((2, 4), np.float32)}, steps=2)] == [
        (16, 16)
    ] * 2


def test_coordinates_and_global_condition_round_trip(tmp_path: Path) -> None:
    """The twin generator's architecture: 2 coordinate channels in, the condition also as
    a global vector (class embedding, scale/shift); saved and reloaded bit-exactly."""
    from megdecode.generate.conditioning import global_vector
    from megdecode.generate.tiny import ArchConfig, new_generator

    arch = ArchConfig(
        size=16,
        channels=(16, 32),
        cross_attention_dim=32,
        head_dim=16,
        n_tokens=2,
        coords=True,
        global_cond=True,
    )
    gen = new_generator(
        {"a": 6, "b": 3}, arch, defaults=GenerateConfig(steps=2, guidance_scale=2.0)
    )
    assert (gen.unet.config.in_channels, gen.unet.config.out_channels) == (5, 3)
    assert gen.unet.config.class_embed_type == "projection"
    again = LatentGenerator.from_dir(gen.save(tmp_path / "g"))
    assert again.coords and again.global_cond
    rng = np.random.default_rng(0)
    x = {
        "a": rng.standard_normal((2, 6)).astype(np.float32),
        "b": rng.standard_normal((2, 3)).astype(np.float32),
    }
    np.testing.assert_array_equal(_arr(gen.generate(x)), _arr(again.generate(x)))
    assert (
        np.abs(
            _arr(gen.generate(x)) - _arr(gen.generate({"a": x["a"][::-1].copy(), "b": x["b"]}))
        ).mean()
        > 0.5
    )

    tokens = torch.randn(2, 5, 4)  # streams of 2 and 3 tokens, mixed 0.25 / 0.75
    expected = 0.25 * tokens[:, :2].mean(1) + 0.75 * tokens[:, 2:].mean(1)
    torch.testing.assert_close(global_vector(tokens, [2, 3], [0.25, 0.75]), expected)
