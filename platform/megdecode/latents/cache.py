"""Latent caches: ``<cache_dir>/<encoder.name>.parquet``, one row per image id.

Encoding 22k THINGS images through CLIP takes hours on CPU, and every subject, split,
seed and search trial needs the same vectors, so each image is encoded once. Columns:
``image_id`` int64 and ``latent``, a canonical ``arrow.fixed_shape_tensor`` of shape
(F,) float32 (the same choice as the epoch store: pyarrow and Ray Data both read it as
an array). The schema metadata records the encoder name, dim, fingerprint and token shape.
A cache folder is a local path or an object-store URI (`megdecode.files`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from megdecode import files
from megdecode.latents.base import ImageEncoder, TextEncoder, fingerprint
from megdecode.logs import progress

logger = logging.getLogger(__name__)

_META_KEY = b"megdecode.latents"


class LatentCacheError(ValueError):
    """A cache file does not match the encoder asking for it; the message names the file."""


def cache_path(cache_dir: str | Path, name: str) -> Path | str:
    """``<cache_dir>/<name>.parquet``: a `Path` for a local folder, a URI string otherwise."""
    if files.is_uri(cache_dir):
        return files.join(cache_dir, f"{name}.parquet")
    return Path(cache_dir) / f"{name}.parquet"


def latent_info(path: str | Path) -> dict[str, Any]:
    """Encoder name, dim, fingerprint and token_shape stored with a cache file."""
    if not files.exists(path):
        raise FileNotFoundError(f"no latent cache at {path}")
    fs, inner = files.resolve(path)
    with files.named_errors(path):
        meta = pq.read_schema(inner, filesystem=fs).metadata or {}
    if _META_KEY not in meta:
        raise LatentCacheError(f"{path} is not a megdecode latent cache (no {_META_KEY!r})")
    return dict(json.loads(meta[_META_KEY]))


def load_latents(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,) int64, latents (N, F) float32), sorted by image id."""
    latent_info(path)
    fs, inner = files.resolve(path)
    with files.named_errors(path):
        table = pq.read_table(inner, filesystem=fs)
    ids = table.column("image_id").to_numpy()
    latents = table.column("latent").combine_chunks().to_numpy_ndarray()
    return ids.astype(np.int64), np.ascontiguousarray(latents, dtype=np.float32)


def write_latents(
    path: str | Path, ids: np.ndarray, latents: np.ndarray, info: dict[str, Any]
) -> None:
    """Write sorted by id to a temp file, then rename: readers never see half a cache.

    On an object store the object is written in one piece (it appears whole on close)."""
    order = np.argsort(ids, kind="stable")
    table = pa.table(
        {
            "image_id": pa.array(ids[order], pa.int64()),
            "latent": pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.ascontiguousarray(latents[order])
            ),
        }
    )
    table = table.replace_schema_metadata({_META_KEY: json.dumps(info).encode()})
    if files.is_uri(path):
        fs, inner = files.resolve(path)
        with files.named_errors(path):
            pq.write_table(table, inner, filesystem=fs, compression="zstd")
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as RGB, its file closed: how every stage (the encoders, the generator's
    training and evaluation) reads a stimulus, so grey or palette PNGs are handled once."""
    with Image.open(path) as image:
        return image.convert("RGB")


EncodeFn = Callable[[Sequence[str | Path], int], np.ndarray]


def encode_files(encoder: ImageEncoder, paths: Sequence[str | Path], batch_size: int) -> np.ndarray:
    """(len(paths), F) float32: the images encoded in batches, in order, in this process."""
    chunks = []
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, desc=f"encode {encoder.name}", total=len(starts)):
        images = [open_rgb(p) for p in paths[start : start + batch_size]]
        chunks.append(np.asarray(encoder.encode(images)))
    return np.concatenate(chunks) if chunks else np.empty((0, encoder.dim), np.float32)


def encode_cached(
    encoder: ImageEncoder | TextEncoder,
    image_ids: Sequence[int] | np.ndarray,
    image_paths: Sequence[str | Path],
    cache_dir: str | Path,
    batch_size: int = 32,
    encode_fn: EncodeFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Latents of `image_ids`, encoding only the ids missing from the cache.

    Returns (ids (N,) int64 in the order given, latents (N, F) float32), duplicates
    included. `image_paths[i]` is the file of `image_ids[i]`. `encode_fn(paths,
    batch_size) -> (n, F)` replaces the local loop (e.g. a Ray Data actor pool); a
    `TextEncoder` needs one, and its "paths" are then the texts to encode.
    """
    ids = np.asarray(image_ids, dtype=np.int64)
    if len(ids) != len(image_paths):
        raise ValueError(f"{len(ids)} image ids but {len(image_paths)} image paths")
    path = cache_path(cache_dir, encoder.name)
    info = {
        "name": encoder.name,
        "dim": int(encoder.dim),
        "fingerprint": fingerprint(encoder),
        "token_shape": getattr(encoder, "token_shape", None),
    }
    cached_ids = np.empty(0, np.int64)
    cached = np.empty((0, encoder.dim), np.float32)
    if files.exists(path):
        stored = latent_info(path)
        for key in ("dim", "fingerprint"):
            if stored.get(key) != info[key]:
                raise LatentCacheError(
                    f"{path} was written with {key}={stored.get(key)!r}, the encoder has "
                    f"{info[key]!r}; delete it or use another cache_dir"
                )
        cached_ids, cached = load_latents(path)

    known = set(cached_ids.tolist())
    todo: dict[int, str | Path] = {}
    for image_id, image_path in zip(ids.tolist(), image_paths, strict=True):
        if image_id not in known and image_id not in todo:
            todo[image_id] = image_path
    if todo:
        new_ids = np.fromiter(todo, np.int64, len(todo))
        paths = list(todo.values())
        if encode_fn is None:
            if not isinstance(encoder, ImageEncoder):
                raise TypeError(f"{encoder.name} does not encode images: pass encode_fn")
            encode_fn = partial(encode_files, encoder)
        encoded = encode_fn(paths, batch_size)
        if encoded.shape != (len(paths), encoder.dim) or encoded.dtype != np.float32:
            raise LatentCacheError(
                f"{encoder.name} returned {encoded.shape} {encoded.dtype}, "
                f"expected ({len(paths)}, {encoder.dim}) float32"
            )
        logger.info(
            "%s: encoded %d new images (%d cached)", encoder.name, len(new_ids), len(cached_ids)
        )
        cached_ids = np.concatenate([cached_ids, new_ids])
        cached = np.concatenate([cached, encoded])
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_latents(path, cached_ids, cached, info)

    row = {image_id: i for i, image_id in enumerate(cached_ids.tolist())}
    return ids, cached[[row[i] for i in ids.tolist()]]
