"""DINOv2 and VGG-19 latents: the paper's two other image models, from local weights.

- ``dinov2``: a timm ``vit_*_patch14_dinov2`` ViT, CLS token of the last block after the
  final LayerNorm (what timm's head sees with ``global_pool="token"``), F = embed_dim
  (1024 for ViT-L/14, 1536 for ViT-g/14; the model name must match the checkpoint).
  Images are resized to `image_size` (224 px, bicubic; the position embeddings of a
  518 px checkpoint are resampled to that grid on load, as timm does for its own
  pretrained weights) and normalised with ImageNet statistics. The checkpoint file may
  be timm's or Meta's original ``dinov2_vit*14_pretrain.pth``: timm's
  ``checkpoint_filter_fn`` converts both.
- ``vgg19``: torchvision's VGG-19, output of the last layer, i.e. the 1,000 ImageNet
  class logits before the softmax (``classifier.6``), at 224 px (bilinear) with
  ImageNet normalisation. The state_dict file is torchvision's (``vgg19-dcbb9e9d.pth``).

Nothing is downloaded; a missing file is an error that names it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from megdecode.latents.weights import (
    load_state_dict,
    require_weights,
    seeded_init,
    weights_identity,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_pixels(images: Sequence[Image.Image], size: int, resample: Image.Resampling):
    """RGB images -> (N, 3, size, size) float tensor, ImageNet-normalised."""
    import torch

    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), resample), np.float32) for im in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


class _TorchImageEncoder:
    """Shared encode loop: preprocess, forward in inference mode, (N, F) float32."""

    name: str
    dim: int
    image_size: int
    resample: Image.Resampling
    device: str
    model: Any

    def _forward(self, pixels):
        return self.model(pixels)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, F) float32."""
        import torch

        if not images:
            return np.empty((0, self.dim), np.float32)
        pixels = imagenet_pixels(images, self.image_size, self.resample).to(self.device)
        with torch.inference_mode():
            out = self._forward(pixels)
        return out.float().cpu().numpy().reshape(len(images), -1)


class DinoV2Encoder(_TorchImageEncoder):
    """RGB images -> DINOv2 CLS tokens (N, embed_dim) float32."""

    name = "dinov2"
    resample = Image.Resampling.BICUBIC

    def __init__(
        self,
        model_name: str = "vit_large_patch14_dinov2",
        weights: str | Path | None = None,
        image_size: int = 224,
        device: str = "cpu",
        allow_random_init: bool = False,
        **model_kwargs: Any,
    ) -> None:
        """model_kwargs go to ``timm.create_model`` (tests shrink depth/width with them)."""
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        who = f"DinoV2Encoder({model_name!r})"
        path = require_weights(
            weights, who, "a local timm/DINOv2 checkpoint file", allow_random_init
        )
        with seeded_init():
            model = timm.create_model(
                model_name,
                pretrained=False,
                num_classes=0,
                global_pool="token",
                img_size=image_size,
                **model_kwargs,
            )
        if path is not None:
            # timm types `model` as its VisionTransformer; create_model returns nn.Module
            state = checkpoint_filter_fn(load_state_dict(path), model)  # type: ignore[arg-type]
            model.load_state_dict(state, strict=True)
            logger.info("DINOv2 %s: weights from %s", model_name, path)
        self.model = model.to(device).eval()
        self.device, self.image_size = device, int(image_size)
        self.dim = int(model.num_features)  # type: ignore[arg-type]  # timm sets it; nn.Module's __getattr__ types it Tensor | Module
        kwargs = ",".join(f"{k}={v}" for k, v in sorted(model_kwargs.items()))
        self.fingerprint = f"{model_name}({kwargs})|{weights_identity(path)}|{image_size}px"


class Vgg19Encoder(_TorchImageEncoder):
    """RGB images -> VGG-19 class logits (N, 1000) float32 (before the softmax)."""

    name = "vgg19"
    resample = Image.Resampling.BILINEAR

    def __init__(
        self,
        weights: str | Path | None = None,
        image_size: int = 224,
        device: str = "cpu",
        allow_random_init: bool = False,
    ) -> None:
        from torchvision.models import vgg19

        path = require_weights(
            weights, "Vgg19Encoder", "a local torchvision VGG-19 state_dict file", allow_random_init
        )
        with seeded_init():
            model = vgg19(weights=None)
        if path is not None:
            model.load_state_dict(load_state_dict(path), strict=True)
            logger.info("VGG-19: weights from %s", path)
        self.model = model.to(device).eval()  # eval: the classifier's dropout is off
        self.device, self.image_size = device, int(image_size)
        self.dim = int(model.classifier[-1].out_features)
        self.fingerprint = f"vgg19-logits|{weights_identity(path)}|{image_size}px"
