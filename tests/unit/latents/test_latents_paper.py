"""The paper's latents on tiny random models: CLIP-Text, AutoKL, DINOv2, VGG-19, registry.

Every encoder is checked against the library it wraps (same numbers from a checkpoint
saved here and loaded back), for its "no weights at PATH" error, and through the stage
that writes latents for a store; one brain-module run then trains on a new latent.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fixtures.configs import SMALL_BRAIN, open_clip_config
from megdecode.latents.base import ImageEncoder, TextEncoder

TINY_CLIP = "megdecode-test-tiny-clip-text"
TINY_DINO = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def images(n: int, size: int = 40, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, 3)
        noise = rng.integers(-40, 40, (size, size, 3))
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def tiny_clip_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny open_clip config with CLIP's real tokenizer (full vocabulary, 77 positions)."""
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    folder = tmp_path_factory.mktemp("open_clip")
    return open_clip_config(
        folder, TINY_CLIP, embed_dim=16, width=32, layers=1, patch_size=16, text=text
    )


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_json: Path) -> str:
    """Its name, registered with open_clip in this process."""
    import open_clip

    open_clip.add_model_config(tiny_clip_json)
    return TINY_CLIP


# ---- CLIP-Text ---------------------------------------------------------------------------


def test_clip_text_refuses_missing_weights(tiny_clip: str, tmp_path: Path) -> None:
    from megdecode.latents.encoders.clip_text import ClipTextEncoder

    with pytest.raises(FileNotFoundError, match=f"no weights at {tmp_path / 'absent.pt'}"):
        ClipTextEncoder(tiny_clip, pretrained=tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="needs weights"):
        ClipTextEncoder(tiny_clip)


def test_clip_text_mean_is_the_token_grid_mean_and_eot_row_is_encode_text(
    tiny_clip: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import open_clip

    from megdecode.latents.encoders.clip_text import ClipTextEncoder

    torch.manual_seed(7)
    model = open_clip.create_model(tiny_clip)
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    mean = ClipTextEncoder(tiny_clip, pretrained=weights)
    tokens = ClipTextEncoder(tiny_clip, pretrained=weights, output="tokens")
    assert isinstance(mean, TextEncoder) and not isinstance(mean, ImageEncoder)
    assert (mean.name, mean.dim, mean.token_shape) == ("clip-text", 16, None)
    assert (tokens.name, tokens.token_shape, tokens.dim) == ("clip-text-tokens", (77, 16), 77 * 16)

    texts = [mean.prompt("ice_cream"), mean.prompt("aardvark")]
    assert texts[0] == "ice cream"
    grid = tokens.encode_texts(texts).reshape(2, 77, 16)
    out = mean.encode_texts(texts)
    assert out.dtype == np.float32 and out.shape == (2, 16)
    np.testing.assert_allclose(out, grid.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], out[1])

    ids = open_clip.get_tokenizer(tiny_clip)(texts)
    with torch.no_grad():
        reference = model.eval().encode_text(ids).numpy()
    eot = ids.argmax(dim=-1).numpy()
    np.testing.assert_allclose(grid[[0, 1], eot], reference, rtol=1e-5, atol=1e-6)

    with caplog.at_level("WARNING", logger="megdecode.latents.weights"):
        random = ClipTextEncoder(tiny_clip, allow_random_init=True)
    assert "RANDOM weights" in caplog.text
    assert not np.allclose(random.encode_texts(texts), out)
    assert random.fingerprint != mean.fingerprint and str(weights.resolve()) in mean.fingerprint


# ---- AutoKL ------------------------------------------------------------------------------


def test_autokl_latent_matches_diffusers_and_avg_is_its_channel_mean(tmp_path: Path) -> None:
    from megdecode.latents.encoders.autokl import AutoKLEncoder, TinyAutoKLConfig

    torch.manual_seed(3)
    vae = TinyAutoKLConfig().build().eval()
    vae.save_pretrained(tmp_path / "vae")
    latent = AutoKLEncoder(tmp_path / "vae", image_size=64)
    avg = AutoKLEncoder(tmp_path / "vae", output="avg", image_size=64)
    assert (latent.name, latent.token_shape, latent.dim) == ("autokl", (4, 32, 32), 4 * 32 * 32)
    assert (avg.name, avg.token_shape, avg.dim) == ("autokl-avg", (32, 32), 32 * 32)

    batch = images(3, size=48)
    out = latent.encode(batch)
    assert out.shape == (3, latent.dim) and out.dtype == np.float32
    with torch.no_grad():
        reference = vae.encode(latent.pixels(batch)).latent_dist.mean * vae.config.scaling_factor
    np.testing.assert_allclose(out, reference.flatten(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        avg.encode(batch), out.reshape(3, 4, 32 * 32).mean(axis=1), rtol=1e-4, atol=1e-6
    )
    assert np.array_equal(out, latent.encode(batch))  # the mean: deterministic, no sampling
    assert not np.allclose(out[0], out[1])

    with pytest.raises(FileNotFoundError, match=f"no weights at {tmp_path / 'nothing'}"):
        AutoKLEncoder(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        AutoKLEncoder(tmp_path / "empty")
    with pytest.raises(ValueError, match="needs weights"):
        AutoKLEncoder(None)


# ---- DINOv2 and VGG-19 -------------------------------------------------------------------


def test_dinov2_loads_a_timm_checkpoint_and_returns_the_cls_token(tmp_path: Path) -> None:
    import timm

    from megdecode.latents.encoders.vision import DinoV2Encoder, imagenet_pixels

    name = "vit_small_patch14_dinov2"
    torch.manual_seed(5)
    model = timm.create_model(
        name, pretrained=False, img_size=28, num_classes=0, **TINY_DINO
    ).eval()
    torch.save(model.state_dict(), tmp_path / "dino.pth")
    encoder = DinoV2Encoder(name, tmp_path / "dino.pth", image_size=28, **TINY_DINO)
    assert isinstance(encoder, ImageEncoder) and (encoder.name, encoder.dim) == ("dinov2", 32)
    batch = images(3)
    out = encoder.encode(batch)
    with torch.no_grad():
        tokens = model.forward_features(imagenet_pixels(batch, 28, encoder.resample))
    np.testing.assert_allclose(out, tokens[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32 and not np.allclose(out[0], out[1])

    # a checkpoint made at another resolution: position embeddings are resampled on load
    big = timm.create_model(name, pretrained=False, img_size=42, num_classes=0, **TINY_DINO)
    torch.save(big.state_dict(), tmp_path / "dino42.pth")
    assert DinoV2Encoder(name, tmp_path / "dino42.pth", image_size=28, **TINY_DINO).encode(
        batch
    ).shape == (3, 32)

    with pytest.raises(FileNotFoundError, match=f"no weights at {tmp_path / 'absent.pth'}"):
        DinoV2Encoder(name, tmp_path / "absent.pth", **TINY_DINO)


def test_vgg19_random_init_gives_1000_logits_and_refuses_missing_weights(tmp_path: Path) -> None:
    from megdecode.latents.encoders.vision import Vgg19Encoder

    with pytest.raises(FileNotFoundError, match=f"no weights at {tmp_path / 'vgg19.pth'}"):
        Vgg19Encoder(tmp_path / "vgg19.pth")
    encoder = Vgg19Encoder(None, image_size=64, allow_random_init=True)  # 64 px keeps it cheap
    batch = images(2)
    out = encoder.encode(batch)
    assert (encoder.name, encoder.dim, out.shape, out.dtype) == (
        "vgg19",
        1000,
        (2, 1000),
        np.float32,
    )
    assert np.array_equal(out, encoder.encode(batch)) and not np.allclose(out[0], out[1])
    assert "random-init" in encoder.fingerprint


@pytest.mark.slow
def test_vgg19_loads_a_torchvision_state_dict(tmp_path: Path) -> None:
    from torchvision.models import vgg19

    from megdecode.latents.encoders.vision import Vgg19Encoder, imagenet_pixels

    torch.manual_seed(11)
    model = vgg19(weights=None).eval()
    torch.save(model.state_dict(), tmp_path / "vgg19.pth")
    encoder = Vgg19Encoder(tmp_path / "vgg19.pth", image_size=64)
    batch = images(2)
    with torch.no_grad():
        reference = model(imagenet_pixels(batch, 64, encoder.resample)).numpy()
    np.testing.assert_allclose(encoder.encode(batch), reference, rtol=1e-4, atol=1e-5)


# ---- registry, the latents stage, and a brain module trained on a new latent -------------


def test_registry_knows_every_paper_latent(tiny_clip: str) -> None:
    from megdecode.latents.registry import ENCODERS, encoder_factory, make_encoder

    assert {"clip-text", "clip-text-tokens", "autokl", "autokl-avg", "dinov2", "vgg19"} <= set(
        ENCODERS
    )
    with pytest.raises(ValueError, match="unknown encoder 'vgg16'"):
        make_encoder("vgg16")
    with pytest.raises(ValueError, match="needs weights"):
        make_encoder("autokl")
    factory = pickle.loads(
        pickle.dumps(encoder_factory("clip-text", tiny_clip, None, allow_random_init=True))
    )
    encoder = factory("cpu")
    assert encoder.name == "clip-text" and encoder.dim == 16


def test_clip_text_latents_of_a_store_follow_the_categories(
    tiny_run: Path, tiny_clip: str, tmp_path: Path
) -> None:
    from megdecode.data import store as epoch_store
    from megdecode.latents.cache import latent_info, load_latents
    from megdecode.latents.registry import make_encoder
    from megdecode.latents.stage import build_latents

    encoder = make_encoder("clip-text", clip_model=tiny_clip, allow_random_init=True)
    report = build_latents(tiny_run / "store", tiny_run / "bids", tmp_path, encoder)
    ids, latents = load_latents(report.path)
    meta = (
        epoch_store.load_metadata(tiny_run / "store")
        .drop_duplicates("image_id")
        .set_index("image_id")
    )
    # the shown images, then the twin's never-shown distractors (ids above every real id)
    listed = pd.read_csv(tiny_run / "bids" / "stimuli" / "distractors.tsv", sep="\t")
    everything = pd.concat([meta["category"], listed.set_index("image_id")["category"]])
    assert ids.tolist() == sorted(everything.index.tolist()) and latents.shape == (len(ids), 16)
    categories = everything.loc[ids].to_numpy()
    assert len(set(categories)) > 1
    for category in set(categories):
        rows = latents[categories == category]
        assert np.allclose(rows, rows[0])  # the text of an image is its category
    expected = encoder.encode_texts([encoder.prompt(categories[0])])[0]
    np.testing.assert_allclose(latents[0], expected, rtol=1e-6)
    assert latent_info(report.path)["fingerprint"] == encoder.fingerprint


def test_brain_module_trains_on_a_latent_written_by_the_cli(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from megdecode.cli import app
    from megdecode.evaluation.retrieval import evaluate_retrieval
    from megdecode.latents.cache import latent_info
    from megdecode.rundata import load_run_data
    from megdecode.train import fit, predict
    from megdecode.train_config import FitConfig, TrainConfig

    args = [
        "latents",
        "--store",
        str(tiny_run / "store"),
        "--bids",
        str(tiny_run / "bids"),
        "--out",
        str(tmp_path),
        "--encoder",
        "autokl-avg",
        "--allow-random-init",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert latent_info(tmp_path / "autokl-avg.parquet")["token_shape"] == [32, 32]

    cfg = FitConfig(
        store=str(tiny_run / "store"),
        latents_dir=str(tmp_path),
        model=SMALL_BRAIN,
        train=TrainConfig(latent="autokl-avg", max_epochs=1, batch_size=32),
    )
    run = fit(cfg)
    assert run.model.cfg.out_dim == 32 * 32
    assert len(run.history) == 1 and np.isfinite(run.history[0]["train/loss"])
    # the recorded score is the small-set top-5 of the model's own test predictions
    data = load_run_data(cfg)
    clip, _, _ = predict(run.model, run.loss, data.test, 32)
    small = evaluate_retrieval(clip, data.test.meta, data.latent_ids, data.latents, "small")
    assert run.metrics["test/top5"] == pytest.approx(small.top5)


@pytest.mark.slow
@pytest.mark.ray
def test_clip_text_on_a_ray_actor_pool_equals_the_local_loop(
    tiny_run: Path, tiny_clip_json: Path, tmp_path: Path
) -> None:
    import ray

    from megdecode.latents.cache import load_latents
    from megdecode.latents.distributed import ray_encode_fn
    from megdecode.latents.registry import encoder_factory, make_encoder
    from megdecode.latents.stage import build_latents
    from megdecode.raycluster import init_ray

    config = str(tiny_clip_json)  # a config path: the actors register the architecture too
    encoder = make_encoder("clip-text", clip_model=config, allow_random_init=True)
    local = build_latents(tiny_run / "store", tiny_run / "bids", tmp_path / "local", encoder)
    init_ray(num_cpus=2)
    try:
        factory = encoder_factory("clip-text", config, None, allow_random_init=True)
        remote = build_latents(
            tiny_run / "store",
            tiny_run / "bids",
            tmp_path / "ray",
            encoder,
            batch_size=4,
            encode_fn=ray_encode_fn(factory, actors=1),
        )
    finally:
        ray.shutdown()
    ids, latents = load_latents(remote.path)
    local_ids, expected = load_latents(local.path)
    assert np.array_equal(ids, local_ids)
    np.testing.assert_allclose(latents, expected, rtol=1e-5, atol=1e-6)
