"""Ray Data actor pools: a model loaded once per actor, results back in row order.

`map_in_row_order` is the one pool both heavy models of the platform run on: encoders
here (`ray_encode_fn`) and the generator in `megdecode.generate.evaluation`. For
encoding, each actor builds its encoder once (loading CLIP weights is the slow part) and
then encodes batches of image files; Ray Data streams the files to the pool. Plugs into
`encode_cached(..., encode_fn=...)`, so caching works the same as the local loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megdecode.latents.base import ImageEncoder, TextEncoder

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[str], ImageEncoder | TextEncoder]  # device -> encoder
ROW = "row"  # the column that numbers the items; an actor returns it unchanged


def map_in_row_order(
    items: Sequence[dict[str, Any]],
    actor: type,
    constructor_kwargs: dict[str, Any],
    output: str,
    *,
    actors: int,
    batch_size: int,
    num_cpus: float,
    num_gpus: float = 0.0,
) -> np.ndarray:
    """The `output` column of the callable class `actor` run over `items` on a fixed pool of
    `actors` actors (each built once with `constructor_kwargs`): one row per item, in the
    items' order.

    Why the rows: Ray Data yields batches as they finish, not in the order given, so each
    item gets a ``"row"`` column (`ROW`) that `actor` must return next to `output`; the
    outputs are put back in that order. Why here: latents is the lower of the two packages
    that need it (generation already depends on latents), and Ray is already its business.
    Ray must be initialised; `num_cpus` / `num_gpus` are each actor's share.
    """
    import ray

    numbered = [{ROW: i, **item} for i, item in enumerate(items)]
    ds = ray.data.from_items(numbered).map_batches(
        actor,
        fn_constructor_kwargs=constructor_kwargs,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_format="numpy",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    rows, outputs = [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows.append(batch[ROW])
        outputs.append(batch[output])
    return np.concatenate(outputs)[np.argsort(np.concatenate(rows))]


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
        return {ROW: batch[ROW], "latent": np.asarray(latents, np.float32)}


def ray_encode_fn(
    factory: EncoderFactory, actors: int | None = None
) -> Callable[[Sequence[str | Path], int], np.ndarray]:
    """An `encode_fn` for `encode_cached` that runs on a Ray Data actor pool."""

    def encode(paths: Sequence[str | Path], batch_size: int) -> np.ndarray:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray-distributed encoding needs ray.init() first")
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        pool = actors or max(1, gpus or int(resources.get("CPU", 1)) // 2)
        logger.info(
            "encoding %d images on %d actor(s)%s",
            len(paths),
            pool,
            " with a GPU each" if gpus else "",
        )
        latents = map_in_row_order(
            [{"path": str(p)} for p in paths],
            _EncodeActor,
            {"factory": factory},
            "latent",
            actors=pool,
            batch_size=batch_size,
            num_cpus=0 if gpus else 1,
            num_gpus=1 if gpus else 0,
        )
        return latents.astype(np.float32)

    return encode
