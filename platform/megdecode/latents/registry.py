"""Encoder names -> encoders, and the latents stage: every stimulus of a store, encoded.

Latents are keyed by image id, so one cache serves every subject and every split; the
image list comes from the epoch store (what was actually shown and kept), and the files
from the BIDS tree (or a separate images folder for the real THINGS images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from megdecode.data import bids, shards
from megdecode.latents.base import ImageEncoder
from megdecode.latents.cache import EncodeFn, encode_cached

logger = logging.getLogger(__name__)

ENCODERS = ("handcrafted", "clip-vision", "clip-vision-tokens")


@dataclass(frozen=True)
class LatentsReport:
    name: str
    path: Path
    n_images: int
    dim: int


def make_encoder(
    name: str,
    clip_model: str = "ViT-L-14",
    clip_weights: Path | None = None,
    device: str = "cpu",
) -> ImageEncoder:
    """Build the encoder called `name`; CLIP needs weights at a local path."""
    if name == "handcrafted":
        from megdecode.latents.handcrafted import HandcraftedEncoder

        return HandcraftedEncoder()
    if name in ("clip-vision", "clip-vision-tokens"):
        from megdecode.latents.clip import ClipVisionEncoder

        output = "tokens" if name.endswith("tokens") else "cls"
        return ClipVisionEncoder(clip_model, pretrained=clip_weights, output=output, device=device)
    raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")


def _make_on_device(name: str, clip_model: str, clip_weights: Path | None, device: str) -> ImageEncoder:
    return make_encoder(name, clip_model=clip_model, clip_weights=clip_weights, device=device)


def encoder_factory(name: str, clip_model: str = "ViT-L-14", clip_weights: Path | None = None) -> Callable[[str], ImageEncoder]:
    """A picklable `device -> encoder` builder, for actors that pick their own device."""
    return partial(_make_on_device, name, clip_model, clip_weights)


def store_images(store: Path) -> tuple[np.ndarray, list[str]]:
    """Unique (image_id, image_path) pairs of every epoch in the store, sorted by id."""
    meta = shards.load_metadata(store)
    unique = meta[["image_id", "image_path"]].drop_duplicates("image_id").sort_values("image_id")
    return unique["image_id"].to_numpy(np.int64), unique["image_path"].astype(str).tolist()


def build_latents(
    store: Path,
    bids_root: Path,
    out_dir: Path,
    encoder: ImageEncoder,
    images_root: Path | None = None,
    batch_size: int = 32,
    encode_fn: EncodeFn | None = None,
) -> LatentsReport:
    """Encode every stimulus of `store` with `encoder` into out_dir/<name>.parquet.

    `encode_fn` runs the encoding elsewhere (e.g. `distributed.ray_encode_fn`).
    """
    ids, rel_paths = store_images(store)
    files = [bids.image_file(bids_root, p, images_root) for p in rel_paths]
    ids_out, vectors = encode_cached(encoder, ids, files, out_dir, batch_size=batch_size, encode_fn=encode_fn)
    path = Path(out_dir) / f"{encoder.name}.parquet"
    logger.info("%s: %d images x %d dims -> %s", encoder.name, len(ids_out), vectors.shape[1], path)
    return LatentsReport(encoder.name, path, len(ids_out), int(vectors.shape[1]))
