"""Encoding images on a Ray Data actor pool: one encoder per actor, a GPU each if any.

Each actor builds its encoder once (loading CLIP weights is the slow part) and then
encodes batches of image files; Ray Data streams the files to the pool. Plugs into
`encode_cached(..., encode_fn=...)`, so caching works the same as the local loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from megdecode.latents.base import ImageEncoder, TextEncoder

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[str], ImageEncoder | TextEncoder]  # device -> encoder


class _EncodeActor:
    """Ray Data callable class: {"row", "path"} batches -> {"row", "latent"} batches.

    For a `TextEncoder` the "path" column holds the texts to encode.
    """

    def __init__(self, factory: EncoderFactory) -> None:
        import torch

        self.encoder = factory("cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from megdecode.latents.cache import open_rgb

        if isinstance(self.encoder, TextEncoder):
            latents = self.encoder.encode_texts([str(t) for t in batch["path"]])
        else:
            latents = self.encoder.encode([open_rgb(str(p)) for p in batch["path"]])
        return {"row": batch["row"], "latent": np.asarray(latents, np.float32)}


def ray_encode_fn(factory: EncoderFactory, actors: int | None = None) -> Callable[[Sequence[str | Path], int], np.ndarray]:
    """An `encode_fn` for `encode_cached` that runs on a Ray Data actor pool."""

    def encode(paths: Sequence[str | Path], batch_size: int) -> np.ndarray:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray-distributed encoding needs ray.init() first")
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        pool = actors or max(1, gpus or int(resources.get("CPU", 1)) // 2)
        items = [{"row": i, "path": str(p)} for i, p in enumerate(paths)]
        logger.info("encoding %d images on %d actor(s)%s", len(items), pool, " with a GPU each" if gpus else "")
        out = ray.data.from_items(items).map_batches(
            _EncodeActor, fn_constructor_kwargs={"factory": factory}, batch_size=batch_size,
            concurrency=pool, num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, batch_format="numpy",
        )
        rows, latents = [], []
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            rows.append(batch["row"])
            latents.append(batch["latent"])
        order = np.argsort(np.concatenate(rows))
        return np.concatenate(latents)[order].astype(np.float32)

    return encode
