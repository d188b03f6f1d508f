"""Ground-truth latents of the MEG twin: the factors the simulator drove its sources with.

The twin knows what each image made the brain respond to: per-image low-level factors
(hue, saturation, luminance, position, size, orientation, contrast; drive the early
response) and a per-category semantic embedding (drives the late response). Written as
ordinary latent caches, they let the platform be checked against the truth (which
latents decode when, whether retrieval is at the level the signal allows). They exist
only for the twin: a real THINGS-MEG root has no ground truth and is refused.

    twin-lowlevel   (N, 11)  `stimuli.low_level_features`, z-scored over the shown images
    twin-category   (N, D)   the category embedding, scaled to unit variance exactly as
                             `simulate` scales it (images of one category share it)

Files: ``<out_dir>/<name>.parquet`` in the `megdecode.latents.cache` format (image_id,
fixed-shape tensor ``latent``, schema metadata), so `load_latents` and `train` read them
like any encoder's. Catch images (image_id -1, never kept in the store) are left out;
the never-shown distractors (`megdecode.data.distractors`) are in, as in every latent table.

Retrieval caveat: all images of a category share one twin-category vector, and ties
count against the prediction (`megdecode.evaluation.retrieval`), so on the large test set (several
images per test category) twin-category top-5 is 0 by construction; use the small set
or the rank metrics for it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from megdecode import files
from megdecode.latents.cache import cache_path, write_latents
from megdecode.twin import bids_writer as twin_bids
from megdecode.twin import stimuli

logger = logging.getLogger(__name__)


class NotATwinError(FileNotFoundError):
    """The BIDS root has no twin ground truth (real data, or a partial twin)."""


def _truth_tables(bids_root: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(ground truth json, image factors, categories), or NotATwinError naming the file."""
    try:
        truth = twin_bids.read_ground_truth(bids_root)
    except FileNotFoundError as err:
        raise NotATwinError(
            f"{bids_root} is not a megdecode twin: {err}. Ground-truth latents exist only "
            "for simulated data; use an image encoder (`megdecode latents`) for real data."
        ) from err
    folder = Path(bids_root) / twin_bids.TRUTH_DIR
    tables = {}
    for key in ("images", "categories"):
        path = folder / truth["tables"][key]
        if not path.is_file():
            raise NotATwinError(f"twin ground truth {path} is missing")
        tables[key] = pd.read_parquet(path)
    return truth, tables["images"], tables["categories"]


def twin_latents(bids_root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (image ids (N,) int64 sorted, latents (N, F) float32), catch images excluded."""
    truth, images, categories = _truth_tables(Path(bids_root))
    images = images[images["image_id"] >= 0].sort_values("image_id").reset_index(drop=True)
    low = stimuli.low_level_features(images)
    # standardised with the shown images' statistics: how many distractors a twin draws
    # must not move the training targets (twins written before distractors: all shown)
    shown = images["shown"].to_numpy(bool) if "shown" in images else np.ones(len(images), bool)
    low = (low - low[shown].mean(0)) / np.maximum(low[shown].std(0), 1e-12)
    sem_cols = truth["semantic_columns"]
    missing = [c for c in sem_cols if c not in categories.columns]
    if missing:
        raise KeyError(f"categories table lacks semantic column(s) {missing[:3]}")
    by_nr = categories.set_index("category_nr")
    sem = by_nr.loc[images["category_nr"].to_numpy(), sem_cols].to_numpy(np.float64, copy=True)
    # the simulator's scaling (see simulate.make_stimuli): unit variance per dimension
    sem /= np.sqrt(1.0 + float(truth["config"]["semantic_within_sd"]) ** 2)
    ids = images["image_id"].to_numpy(np.int64)
    return {
        "twin-lowlevel": (ids, low.astype(np.float32)),
        "twin-category": (ids, sem.astype(np.float32)),
    }


def write_twin_latents(bids_root: str | Path, out_dir: str | Path) -> list[Path | str]:
    """Write out_dir/twin-lowlevel.parquet and twin-category.parquet; returns their paths.

    Raises NotATwinError (a FileNotFoundError) when bids_root holds no twin ground truth.
    Existing files of the same names are replaced (they are a pure function of the truth).
    """
    latents_by_name = twin_latents(bids_root)  # first: a non-twin root writes nothing
    if not files.is_uri(out_dir):  # a URI: the latents folder is on an object store
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths: list[Path | str] = []
    for name, (ids, latents) in latents_by_name.items():
        digest = hashlib.sha256(ids.tobytes() + latents.tobytes()).hexdigest()[:16]
        info = {
            "name": name,
            "dim": int(latents.shape[1]),
            "fingerprint": f"{name}:{digest}",
            "token_shape": None,
            "source": "twin ground truth",
        }
        path = cache_path(out_dir, name)
        write_latents(path, ids, latents, info)
        logger.info("%s: %d images x %d dims -> %s", name, len(ids), latents.shape[1], path)
        paths.append(path)
    return paths
