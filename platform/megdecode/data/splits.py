"""Train / val / test splits of THINGS-MEG trials, as in Benchetrit et al. 2023.

- "test": the test images (trial_type "test", 200 images repeated 12 times per subject
  in THINGS-MEG): the small test set.
- "test_large": zero-shot. Exp images whose category appears among the test images are
  taken out of training, so the decoder never trains on a test category; they alone form
  the large test set (paper: 200 categories x 12 = 2,400 images, each seen once).
- "val": a seeded random fraction of the remaining training IMAGES, for early stopping
  (the paper's ~20%: ~63k training and ~15.8k validation trials on THINGS-MEG).
  All trials of an image go to the same side, so val never holds an image seen in train.
- "catch": catch trials (only present when preprocessing keeps them); in no set.

Everything is decided per subject, so calling on one subject's table or on several
subjects at once gives the same rows. Val images are ranked by a hash of (seed, image_id)
rather than by a permutation of the image list, so an image is in val for every subject
that saw it, whichever other images the table holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from megdecode.config import ConfigError, FlatConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "test_large")
REQUIRED_COLUMNS = (
    "subject",
    "session",
    "run",
    "trial_index",
    "image_id",
    "category",
    "trial_type",
)
_TRIAL_TYPES = ("exp", "test", "catch")


@dataclass(frozen=True)
class SplitConfig(FlatConfig):
    """How trials are split; the defaults are the paper's protocol."""

    val_fraction: float = 0.2  # share of the training images held out for early stopping
    seed: int = 0  # picks the val images; another seed gives another val set
    zero_shot: bool = True  # exp images of test categories -> "test_large", not train

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")


def _hash_rank(image_ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per image id (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        x = image_ids.astype(np.uint64) + np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def val_images(image_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * n) of the unique `image_ids`, chosen at random by `seed`."""
    unique = np.unique(np.asarray(image_ids, dtype=np.int64))
    n_val = int(round(fraction * len(unique)))
    order = np.lexsort((unique, _hash_rank(unique, seed)))  # ties (never in practice) by id
    return np.sort(unique[order[:n_val]])


def _natural(values: pd.Series) -> pd.Series:
    """Session/run labels in numeric order when they are numbers ("2" before "10")."""
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if numbers.notna().all() else values.astype(str)


def recording_order(meta: pd.DataFrame) -> np.ndarray:
    """(N,) row positions of `meta` in recording order: session, run, trial_index.

    Sessions and runs compare as numbers when every label is one, so unpadded labels
    ("2" before "10") keep the order they were recorded in; zero-padded labels ("02",
    "10") sort the same either way. Equal keys keep their row order (stable sort).
    """
    keys = pd.DataFrame(
        {
            "session": _natural(meta["session"]).to_numpy(),
            "run": _natural(meta["run"]).to_numpy(),
            "trial_index": meta["trial_index"].to_numpy(),
        }
    )
    return keys.sort_values(list(keys.columns), kind="stable").index.to_numpy()


def repetitions(meta: pd.DataFrame) -> np.ndarray:
    """0-based rank of each presentation of an image within its subject, in recording order
    (`recording_order`). Catch trials get 0."""
    order = recording_order(meta)
    shows = pd.DataFrame(
        {
            "subject": meta["subject"].astype(str).to_numpy()[order],
            "image_id": meta["image_id"].to_numpy()[order],
        }
    )
    rep = np.empty(len(meta), dtype=np.int64)
    rep[order] = shows.groupby(["subject", "image_id"], sort=False).cumcount().to_numpy()
    return np.where(meta["trial_type"].to_numpy() == "catch", 0, rep).astype(np.int64)


def _test_splits(meta: pd.DataFrame, cfg: SplitConfig) -> np.ndarray:
    """train / test / test_large / catch for one subject (val is decided across subjects)."""
    trial_type = meta["trial_type"].to_numpy()
    split = np.full(len(meta), "train", dtype=object)
    split[trial_type == "test"] = "test"
    split[trial_type == "catch"] = "catch"
    if cfg.zero_shot:
        test_categories = set(meta.loc[trial_type == "test", "category"])
        split[(trial_type == "exp") & meta["category"].isin(test_categories).to_numpy()] = (
            "test_large"
        )
    return split


def assign_splits(meta: pd.DataFrame, cfg: SplitConfig | None = None) -> pd.DataFrame:
    """A copy of `meta` with columns `split` (SPLITS, or "catch") and `repetition` (int64)."""
    cfg = cfg or SplitConfig()
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise ValueError(f"assign_splits: metadata lacks column(s) {missing}")
    unknown = sorted(set(meta["trial_type"]) - set(_TRIAL_TYPES))
    if unknown:
        raise ValueError(
            f"assign_splits: unknown trial_type value(s) {unknown}; expected {_TRIAL_TYPES}"
        )
    out = meta.copy()
    split = np.empty(len(out), dtype=object)
    subjects = out["subject"].astype(str).to_numpy()
    for subject in np.unique(subjects):
        rows = subjects == subject
        split[rows] = _test_splits(out[rows], cfg)
    # Validation images are drawn once from the union of every subject's training images,
    # so an image is validation for all subjects or for none: a model trained on pooled
    # subjects never sees a validation image in training.
    image_id = out["image_id"].to_numpy()
    is_train = split == "train"
    held_out = val_images(image_id[is_train], cfg.val_fraction, cfg.seed)
    split[is_train & np.isin(image_id, held_out)] = "val"
    out["split"] = split.astype(str)
    out["repetition"] = repetitions(out)
    counts = out["split"].value_counts().to_dict()
    logger.info("splits over %d subject(s): %s", len(np.unique(subjects)), counts)
    return out


def split_mask(meta: pd.DataFrame, *splits: str) -> np.ndarray:
    """Boolean (N,) mask of the rows whose split is one of `splits`."""
    bad = sorted(set(splits) - set(SPLITS) - {"catch"})
    if bad:
        raise ValueError(f"unknown split name(s) {bad}; expected {SPLITS}")
    if "split" not in meta.columns:
        raise ValueError("metadata has no 'split' column; call assign_splits first")
    return meta["split"].isin(splits).to_numpy()


def small_test_mask(meta: pd.DataFrame) -> np.ndarray:
    """The paper's small test set: the repeated test images only."""
    return split_mask(meta, "test")


def large_test_mask(meta: pd.DataFrame) -> np.ndarray:
    """The paper's large test set: the zero-shot exp images only (the repeated test images
    are the small set; mixing them in would mix 12-trial averages with once-seen trials)."""
    return split_mask(meta, "test_large")
