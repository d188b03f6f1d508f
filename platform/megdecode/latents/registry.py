"""Encoder names -> encoders: the one place a latent's name becomes a model.

The latents stage (`megdecode.latents.stage`), the Ray actors that build their own
encoder (`encoder_factory`) and the CLI all resolve names here, so a name means the same
weights everywhere.

    name                 model                           F (paper's weights)
    handcrafted          colour hist + HOG + LBP         depends on its config
    clip-vision          open_clip image embedding       768 (ViT-L/14)
    clip-vision-tokens   open_clip image token grid      257 x 768
    clip-text            open_clip text, token mean      768
    clip-text-tokens     open_clip text token grid       77 x 768
    autokl               diffusers AutoencoderKL mean    4 x 64 x 64 (512 px)
    autokl-avg           its channel average             64 x 64
    dinov2               timm DINOv2 CLS token           1024 (ViT-L/14)
    vgg19                torchvision VGG-19 logits       1000
    efficientnet-lite0   timm EfficientNet-Lite0 pooled  1280 (ImageNet weights from the
                                                         `pretrained` extra or a file)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from megdecode.latents.base import ImageEncoder, TextEncoder

logger = logging.getLogger(__name__)

ENCODERS = (
    "handcrafted",
    "clip-vision",
    "clip-vision-tokens",
    "clip-text",
    "clip-text-tokens",
    "autokl",
    "autokl-avg",
    "dinov2",
    "vgg19",
    "efficientnet-lite0",
)
Encoder = ImageEncoder | TextEncoder


def make_encoder(
    name: str,
    clip_model: str = "ViT-L-14",
    clip_weights: Path | None = None,
    device: str = "cpu",
    *,
    autokl_weights: Path | None = None,
    dinov2_weights: Path | None = None,
    vgg19_weights: Path | None = None,
    efficientnet_weights: Path | None = None,
    dinov2_model: str = "vit_large_patch14_dinov2",
    autokl_size: int | None = None,
    allow_random_init: bool = False,
) -> Encoder:
    """Build the encoder called `name` from weights at a local path (see the table above).

    `clip_weights` serves the four CLIP latents (a full open_clip checkpoint holds both
    towers); `clip_model` is an open_clip name or a JSON config path. `autokl_weights` is
    a diffusers folder, the others are files. `efficientnet_weights` defaults to the file of
    the installed `pretrained` extra.
    `autokl_size` defaults to 512 px with weights and 64 px for the tiny random VAE.
    `allow_random_init` (tests and twin demos only) builds random weights where a path is
    missing, with a loud warning; the cache fingerprint records it.
    """
    if name.startswith("clip-"):
        clip_model = open_clip_architecture(clip_model)
    if name == "handcrafted":
        from megdecode.latents.encoders.handcrafted import HandcraftedEncoder

        return HandcraftedEncoder()
    if name in ("clip-vision", "clip-vision-tokens", "clip-text", "clip-text-tokens"):
        from megdecode.latents.encoders.clip import ClipVisionEncoder
        from megdecode.latents.encoders.clip_text import ClipTextEncoder

        vision = name.startswith("clip-vision")
        output = "tokens" if name.endswith("tokens") else ("cls" if vision else "mean")
        return (ClipVisionEncoder if vision else ClipTextEncoder)(
            clip_model,
            pretrained=clip_weights,
            output=output,
            device=device,
            allow_random_init=allow_random_init,
        )
    if name in ("autokl", "autokl-avg"):
        from megdecode.latents.encoders.autokl import AutoKLEncoder

        size = autokl_size or (512 if autokl_weights is not None else 64)
        output = "avg" if name.endswith("avg") else "latent"
        return AutoKLEncoder(
            autokl_weights,
            output=output,
            image_size=size,
            device=device,
            allow_random_init=allow_random_init,
        )
    if name == "dinov2":
        from megdecode.latents.encoders.vision import DinoV2Encoder

        return DinoV2Encoder(
            dinov2_model,
            weights=dinov2_weights,
            device=device,
            allow_random_init=allow_random_init,
        )
    if name == "vgg19":
        from megdecode.latents.encoders.vision import Vgg19Encoder

        return Vgg19Encoder(
            vgg19_weights,
            device=device,
            allow_random_init=allow_random_init,
        )
    if name == "efficientnet-lite0":
        from megdecode.latents.encoders.efficientnet import EfficientNetLite0Encoder

        return EfficientNetLite0Encoder(
            efficientnet_weights, device=device, allow_random_init=allow_random_init
        )
    raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")


def open_clip_architecture(clip_model: str) -> str:
    """An open_clip model name, or the path of an open_clip JSON config (registered here).

    A config path lets a custom (e.g. tiny test) architecture travel to Ray actors, which
    register it again when they build their encoder from the same arguments.
    """
    if clip_model.endswith(".json"):
        import open_clip

        path = Path(clip_model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no open_clip model config at {path}")
        open_clip.add_model_config(path)
        return path.stem
    return clip_model


def _make_on_device(
    name: str, clip_model: str, clip_weights: Path | None, kwargs: dict, device: str
) -> Encoder:
    return make_encoder(
        name, clip_model=clip_model, clip_weights=clip_weights, device=device, **kwargs
    )


def encoder_factory(
    name: str, clip_model: str = "ViT-L-14", clip_weights: Path | None = None, **kwargs: object
) -> Callable[[str], Encoder]:
    """A picklable `device -> encoder` builder, for actors that pick their own device.

    kwargs: the keyword-only arguments of `make_encoder` (other weights, random init).
    """
    return partial(_make_on_device, name, clip_model, clip_weights, dict(kwargs))
