"""The latents stage: every stimulus of an epoch store, encoded and cached.

Latents are keyed by image id, so one cache serves every subject and every split; the
image list comes from the epoch store (what was actually shown and kept), and the files
from the BIDS tree (or a separate images folder for the real THINGS images). Text
encoders (CLIP-Text) get each image's category, as `encoder.prompt(category)`, instead.
Which encoder a name means is `megdecode.latents.registry`'s job.

Never-shown distractor images (`megdecode.data.distractors`) are encoded too, so every
latent table holds the large test set's extra candidates: the twin's, listed in
``<bids>/stimuli/distractors.tsv``, always; for THINGS, a folder of extra images given as
`distractors` (ids far above any real image id, so they cannot collide).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from megdecode import files
from megdecode.data import bids
from megdecode.data import distractors as never_shown
from megdecode.data import store as epoch_store
from megdecode.latents.base import TextEncoder
from megdecode.latents.cache import EncodeFn, cache_path, encode_cached
from megdecode.latents.registry import Encoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatentsReport:
    """What `build_latents` wrote: the latent's name, its parquet file, rows and width."""

    name: str
    path: Path | str  # a URI when the latents folder is on an object store
    n_images: int  # rows written, distractors included
    dim: int
    n_distractors: int = 0


def store_images(store: str | Path) -> tuple[np.ndarray, list[str]]:
    """Unique (image_id, image_path) pairs of every epoch in the store, sorted by id."""
    ids, table = _unique_images(store)
    return ids, table["image_path"].astype(str).tolist()


def store_categories(store: str | Path) -> tuple[np.ndarray, list[str]]:
    """Unique (image_id, category) pairs of every epoch in the store, sorted by id."""
    ids, table = _unique_images(store)
    return ids, table["category"].astype(str).tolist()


def _unique_images(store: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    meta = epoch_store.load_metadata(store)
    unique = meta[["image_id", "image_path", "category"]].drop_duplicates("image_id")
    unique = unique.sort_values("image_id")
    return unique["image_id"].to_numpy(np.int64), unique


def distractor_images(
    bids_root: Path, images_root: Path | None = None, folder: Path | None = None
) -> tuple[np.ndarray, list[Path], list[str]]:
    """(ids, files, categories) of the distractors to encode, sorted by id: the twin's list
    under the stimuli root (`images_root`, default ``bids_root/stimuli``) and every image of
    `folder` (ValueError when it is missing, empty or unreadable)."""
    stimuli_root = Path(images_root) if images_root is not None else Path(bids_root) / "stimuli"
    tables = []
    listed = never_shown.read_distractor_table(stimuli_root)
    if listed is not None:
        tables.append(listed.assign(file=[stimuli_root / p for p in listed["image_path"]]))
    if folder is not None:
        found = never_shown.scan_distractor_folder(folder)
        tables.append(found.assign(file=[Path(folder) / p for p in found["image_path"]]))
    if not tables:
        return np.empty(0, np.int64), [], []
    table = pd.concat(tables, ignore_index=True).drop_duplicates("image_id")
    table = table.sort_values("image_id")
    return (
        table["image_id"].to_numpy(np.int64),
        list(table["file"]),
        table["category"].astype(str).tolist(),
    )


def _encode_texts(encoder: TextEncoder, texts: list[str], batch_size: int) -> np.ndarray:
    chunks = [
        encoder.encode_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.empty((0, encoder.dim), np.float32)


def build_latents(
    store: str | Path,
    bids_root: str | Path,
    out_dir: str | Path,
    encoder: Encoder,
    images_root: Path | None = None,
    batch_size: int = 32,
    encode_fn: EncodeFn | None = None,
    distractors: Path | None = None,
) -> LatentsReport:
    """Encode every stimulus of `store`, and the distractors, into out_dir/<name>.parquet.

    Image encoders read the image files; text encoders encode `encoder.prompt(category)`
    of each image. `encode_fn` runs the encoding elsewhere (e.g. `distributed.ray_encode_fn`).
    `distractors`: a folder of never-shown images (THINGS) added to the twin's own list
    (`distractor_images`). `store`, `bids_root` and `out_dir` may be object-store URIs: the
    stimuli of a remote BIDS root are fetched to a temporary folder for the encoders.
    """
    with contextlib.ExitStack() as stack:
        if images_root is None and files.is_uri(bids_root):
            images_root = stack.enter_context(files.local_copy(files.join(bids_root, "stimuli")))
        return _build_latents(
            store, Path(bids_root) if not files.is_uri(bids_root) else Path("."), out_dir,
            encoder, images_root, batch_size, encode_fn, distractors,
        )  # fmt: skip


def _build_latents(
    store: str | Path,
    bids_root: Path,
    out_dir: str | Path,
    encoder: Encoder,
    images_root: Path | None,
    batch_size: int,
    encode_fn: EncodeFn | None,
    distractors: Path | None,
) -> LatentsReport:
    extra_ids, extra_files, extra_categories = distractor_images(
        bids_root, images_root, distractors
    )
    items: list[str] | list[Path]
    if isinstance(encoder, TextEncoder):
        ids, categories = store_categories(store)
        items = [encoder.prompt(c) for c in [*categories, *extra_categories]]
        encode_fn = encode_fn or partial(_encode_texts, encoder)
    else:
        ids, rel_paths = store_images(store)
        items = [bids.image_file(bids_root, p, images_root) for p in rel_paths] + extra_files
    ids = np.concatenate([ids, extra_ids])
    ids_out, vectors = encode_cached(
        encoder, ids, items, out_dir, batch_size=batch_size, encode_fn=encode_fn
    )
    path = cache_path(out_dir, encoder.name)
    logger.info(
        "%s: %d images (%d distractors) x %d dims -> %s",
        encoder.name,
        len(ids_out),
        len(extra_ids),
        vectors.shape[1],
        path,
    )
    return LatentsReport(
        encoder.name, path, len(ids_out), int(vectors.shape[1]), n_distractors=len(extra_ids)
    )
