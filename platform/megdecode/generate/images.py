"""Images in and out of a generator: PIL images <-> (N, 3, H, W) tensors in [-1, 1]."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> N RGB PIL images."""
    arr = (
        ((images.clamp(-1, 1) + 1) * 127.5)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .cpu()
        .numpy()
    )
    return [Image.fromarray(a) for a in arr]


def from_pil(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """N PIL images -> (N, 3, size, size) float32 in [-1, 1] (bilinear resize)."""
    arr = np.stack(
        [
            np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
            for im in images
        ]
    )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
