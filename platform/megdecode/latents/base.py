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


@runtime_checkable
class TextEncoder(Protocol):
    """A text model frozen into a feature extractor (e.g. CLIP-Text of an image's category).

    Same contract as ImageEncoder (name, dim, optional fingerprint and token_shape), but it
    encodes the text attached to each image: the stage that builds latents turns each
    image's ``category`` (from the store) into ``prompt(category)`` and feeds those texts
    instead of pixels; the cache is still keyed by image id.
    """

    name: str
    dim: int

    def prompt(self, category: str) -> str:
        """The text to encode for an image of `category` (part of the fingerprint)."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts, encoded verbatim -> (N, F) float32."""
        ...


def fingerprint(encoder: ImageEncoder | TextEncoder) -> str:
    """The encoder's identity for cache checks: ``fingerprint`` if it has one, else name."""
    return str(getattr(encoder, "fingerprint", encoder.name))
