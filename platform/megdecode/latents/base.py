"""What every image encoder provides: a name, a width, and images -> vectors.

Latents are the decoder's targets, so an encoder is a frozen function of the pixels:
the same image must give the same vector on every call, machine and batch split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

logger = logging.getLogger(__name__)


@runtime_checkable
class ImageEncoder(Protocol):
    """An image model frozen into a feature extractor.

    name: file stem of its cache (``<cache_dir>/<name>.parquet``), unique per output.
    dim: F, the width of one flattened latent.
    An encoder may also carry ``fingerprint: str`` (config and weights identity); the cache
    stores it and refuses to mix vectors from a different fingerprint under the same name.
    Multi-dimensional latents (e.g. a token grid) are flattened to F and may record their
    shape in ``token_shape``.
    """

    name: str
    dim: int

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, F) float32."""
        ...


def fingerprint(encoder: ImageEncoder) -> str:
    """The encoder's identity for cache checks: ``fingerprint`` if it has one, else name."""
    return str(getattr(encoder, "fingerprint", encoder.name))
