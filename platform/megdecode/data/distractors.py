"""Never-shown distractor images: extra retrieval candidates for the large test set.

The paper scores its large test set (2,400 zero-shot images) against those images and,
in a harder variant, against 3,659 more THINGS images that no participant saw. Such an
image has no epoch, so it reaches the platform only through the latent tables: the
latents stage encodes it next to the shown images, and evaluation adds every distractor
latent it finds to the large set's candidates.

Identity: a distractor's id is ``DISTRACTOR_ID_BASE`` plus a hash of its relative path.
Real image ids (THINGS image numbers, the twin's 1..N, -1 for catch) stay far below the
base, so a distractor can never take a shown image's id, and `is_distractor` needs no
side table. Hashing the path (not numbering the files) keeps an image's id, and so its
cached latent, when other files are added to the folder.

Sources: the twin draws its own and lists them in ``<stimuli>/distractors.tsv``
(`DISTRACTOR_TABLE`, `read_distractor_table`); for THINGS, `scan_distractor_folder` lists
a folder of extra images (category = the image's parent folder, as in the THINGS-images
download ``object_images/<concept>/<file>``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

# THINGS has 26,107 images; 10**12 leaves room for any real numbering and keeps ids below
# 2**53, so they survive JSON (the serving API) as exact integers.
DISTRACTOR_ID_BASE = 10**12
DISTRACTOR_TABLE = "distractors.tsv"
COLUMNS = ("image_id", "image_path", "category", "shown")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def distractor_id(rel_path: str) -> int:
    """The id of the distractor at `rel_path` (POSIX, relative to its root): stable, >= base."""
    digest = hashlib.sha256(str(rel_path).encode()).digest()
    return DISTRACTOR_ID_BASE + int.from_bytes(digest[:8], "big") % DISTRACTOR_ID_BASE


def is_distractor(image_ids: np.ndarray) -> np.ndarray:
    """(N,) bool: which ids are never-shown distractors (see the module docstring)."""
    return np.asarray(image_ids, dtype=np.int64) >= DISTRACTOR_ID_BASE


def distractor_table(image_paths: list[str], categories: list[str]) -> pd.DataFrame:
    """The `COLUMNS` table of distractors at `image_paths`, sorted by id; refuses an id clash."""
    ids = np.array([distractor_id(p) for p in image_paths], dtype=np.int64)
    table = pd.DataFrame(
        {"image_id": ids, "image_path": image_paths, "category": categories, "shown": False}
    )
    clash = table[table["image_id"].duplicated(keep=False)]
    if len(clash):
        raise ValueError(
            f"distractor paths {clash['image_path'].tolist()[:4]} hash to one id; rename one"
        )
    return table.sort_values("image_id").reset_index(drop=True)


def read_distractor_table(stimuli_root: str | Path) -> pd.DataFrame | None:
    """``<stimuli_root>/distractors.tsv`` (the twin's), or None when there is none."""
    path = Path(stimuli_root) / DISTRACTOR_TABLE
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t", dtype={"image_path": str, "category": str})
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; expected {list(COLUMNS)}")
    if table["shown"].astype(bool).any() or not is_distractor(table["image_id"]).all():
        raise ValueError(f"{path} lists shown images or ids below {DISTRACTOR_ID_BASE}")
    return table[list(COLUMNS)]


def scan_distractor_folder(folder: str | Path) -> pd.DataFrame:
    """Every image file under `folder` as a `COLUMNS` table (paths relative to `folder`).

    Raises ValueError naming the folder when it is missing, not a folder, unreadable or
    holds no image, and naming the file when one is not a readable image: a bad folder
    fails here, before any encoder loads.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"distractor folder {root} does not exist or is not a folder")
    try:
        files = sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    except OSError as err:
        raise ValueError(f"distractor folder {root} cannot be read: {err}") from err
    if not files:
        raise ValueError(
            f"distractor folder {root} holds no image ({', '.join(IMAGE_SUFFIXES)} files)"
        )
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"distractor {path} is not a readable image: {err}") from err
    rel = [p.relative_to(root).as_posix() for p in files]
    table = distractor_table(rel, [p.parent.name for p in files])
    logger.info("distractor folder %s: %d images", root, len(table))
    return table
