"""The Versatile Diffusion generator on a tiny random VD folder, loaded as real weights are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megdecode.config import ConfigError
from megdecode.generate.tiny_vd import TinyVDConfig, build_tiny_vd
from megdecode.generate.versatile import INIT, TEXT, VISION, VersatileConfig, VersatileGenerator


@pytest.fixture(scope="module")
def vd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vd(tmp_path_factory.mktemp("vd") / "vd")


@pytest.fixture(scope="module")
def gen(vd_dir: Path) -> VersatileGenerator:
    return VersatileGenerator.from_dir(vd_dir, device="cpu")


def _latents(gen: VersatileGenerator, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, f)).astype(np.float32) for k, f in gen.conditions.items()}


def _arr(images: list) -> np.ndarray:
    return np.stack([np.asarray(im, np.float32) for im in images])


def test_shapes_follow_the_folder(gen: VersatileGenerator) -> None:
    c = TinyVDConfig()
    assert gen.conditions == {
        VISION: c.vision_tokens * c.width,
        TEXT: c.text_tokens * c.width,
        INIT: 4 * c.sample_size**2,
    }
    images = gen.generate(_latents(gen, 2), steps=2)
    assert [im.size for im in images] == [(c.size, c.size)] * 2


def test_the_text_unet_transformers_join_the_image_unet(
    vd_dir: Path, gen: VersatileGenerator
) -> None:
    from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel
    from safetensors.torch import load_file

    duals = [(n, m) for n, m in gen.unet.named_modules() if isinstance(m, DualTransformer2DModel)]
    assert duals
    text_state = load_file(str(vd_dir / "text_unet" / "diffusion_pytorch_model.safetensors"))
    name, dual = duals[0]
    for key, value in dual.transformers[1].state_dict().items():
        torch.testing.assert_close(value, text_state[f"{name}.{key}"])


def test_same_seed_same_images_other_seed_other_images(gen: VersatileGenerator) -> None:
    x = _latents(gen, 2)
    a = _arr(gen.generate(x, steps=3, seed=5))
    np.testing.assert_array_equal(a, _arr(gen.generate(x, steps=3, seed=5)))
    assert np.abs(a - _arr(gen.generate(x, steps=3, seed=6))).mean() > 1.0


def test_a_batch_of_two_equals_two_single_calls(gen: VersatileGenerator) -> None:
    x = _latents(gen, 2)
    both = _arr(gen.generate(x, steps=3, seed=0, batch_size=2))
    singles = [
        _arr(gen.generate({k: v[i : i + 1] for k, v in x.items()}, steps=3, seeds=[i]))[0]
        for i in range(2)
    ]
    # batched kernels may round differently: at most one pixel level here and there
    assert np.abs(both - np.stack(singles)).max() <= 1.0


def test_strength_zero_decodes_the_init_latent_strength_one_ignores_it(
    gen: VersatileGenerator,
) -> None:
    x, y = _latents(gen, 1, seed=0), _latents(gen, 1, seed=1)
    init = torch.from_numpy(x[INIT].reshape(1, *gen.latent_shape))
    with torch.no_grad():
        decoded = gen.vae.decode(init / gen.vae.config.scaling_factor).sample
    want = ((decoded.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    at_zero = _arr(gen.generate(x, steps=4, strength=0.0, seed=1))
    np.testing.assert_array_equal(at_zero, want)  # no step taken: the init latent, decoded
    other_seed_and_embeddings = {**y, INIT: x[INIT]}
    np.testing.assert_array_equal(
        at_zero, _arr(gen.generate(other_seed_and_embeddings, steps=4, strength=0.0, seed=9))
    )
    at_one = _arr(gen.generate(x, steps=4, strength=1.0))
    other_init = {**x, INIT: y[INIT]}
    np.testing.assert_array_equal(at_one, _arr(gen.generate(other_init, steps=4, strength=1.0)))
    without_init = {k: v for k, v in x.items() if k != INIT}
    np.testing.assert_array_equal(at_one, _arr(gen.generate(without_init, steps=4, strength=1.0)))
    halfway = _arr(gen.generate(x, steps=4, strength=0.5))
    assert np.abs(halfway - at_one).mean() > 0.5 and np.abs(halfway - at_zero).mean() > 0.5


def test_text_mix_selects_the_stream(gen: VersatileGenerator) -> None:
    x, y = _latents(gen, 1, seed=0), _latents(gen, 1, seed=1)
    swap_text, swap_vision = {**x, TEXT: y[TEXT]}, {**x, VISION: y[VISION]}
    run = lambda lat, mix: _arr(gen.generate(lat, steps=3, strength=1.0, text_mix=mix))  # noqa: E731
    np.testing.assert_allclose(run(x, 0.0), run(swap_text, 0.0), atol=1.0)  # vision only
    np.testing.assert_allclose(run(x, 1.0), run(swap_vision, 1.0), atol=1.0)  # text only
    assert np.abs(run(x, 0.4) - run(swap_text, 0.4)).mean() > 0.1
    assert np.abs(run(x, 0.4) - run(swap_vision, 0.4)).mean() > 0.1


def test_embeddings_are_normalised_as_vd_does(gen: VersatileGenerator) -> None:
    x = _latents(gen, 1)
    scaled = {**x, VISION: x[VISION] * 5.0, TEXT: x[TEXT] * 0.2}
    run = lambda lat, **kw: _arr(gen.generate(lat, steps=3, strength=1.0, **kw))  # noqa: E731
    np.testing.assert_allclose(run(x), run(scaled), atol=1.0)  # only the direction counts
    assert np.abs(run(x, normalize=False) - run(scaled, normalize=False)).mean() > 1.0


def test_bad_latents_are_refused_with_the_expected_shape(gen: VersatileGenerator) -> None:
    x = _latents(gen, 2)
    d = TinyVDConfig().width
    with pytest.raises(
        ValueError, match=rf"'clip-vision-tokens' has shape \(2, 79\), expected \(N, {5 * d}\)"
    ):
        gen.generate({**x, VISION: x[VISION][:, :79]})
    with pytest.raises(ValueError, match="missing latent 'clip-text-tokens'"):
        gen.generate({VISION: x[VISION], INIT: x[INIT]})
    with pytest.raises(ValueError, match="disagree on N"):
        gen.generate({**x, TEXT: x[TEXT][:1]})
    grid = {**x, VISION: x[VISION].reshape(2, 5, d)}  # (N, L, D) grids are taken as well
    assert len(gen.generate(grid, steps=1)) == 2
    with pytest.raises(ValueError, match="expected"):
        gen.generate({**x, VISION: x[VISION].reshape(2, d, 5)})
    with pytest.raises(ConfigError, match="strength"):
        VersatileConfig(strength=1.5)


def test_defaults_are_brain_diffusers_settings() -> None:
    cfg = VersatileConfig()
    assert (cfg.steps, cfg.guidance_scale, cfg.strength, cfg.text_mix) == (50, 7.5, 0.75, 0.4)
