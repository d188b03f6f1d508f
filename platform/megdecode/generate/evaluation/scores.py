"""Scoring the reconstructions against the seen images: the metrics table and the per-image
score that ranks the grid.

Next to the image metrics, each row carries ``latent_r``, the mean per-dimension r of its
latents vs the truth (`report.fidelity_table`): it separates what the brain module failed
to decode from what the generator failed to draw.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from megdecode.bundle import ModelBundle
from megdecode.data import bids
from megdecode.generate.evaluation.config import DECODED, NOT_SCALED, GenEvalConfig
from megdecode.generate.evaluation.decode import EvalInputs
from megdecode.generate.grid import rank_scores
from megdecode.latents.cache import open_rgb

if TYPE_CHECKING:
    from megdecode.generate.features import FeatureNets

logger = logging.getLogger(__name__)


def metric_nets(weights: str) -> FeatureNets | None:
    """FeatureNets for the networks whose weights are in the folder `weights`, plus
    EfficientNet-Lite0 (effnet_lite0_2way) from the folder or the `pretrained` extra.

    Without a folder: EfficientNet-Lite0 alone, or None (PixCorr/SSIM only) when its
    weights are not installed; the log says which metric is skipped and why.
    """
    from megdecode.generate.features import (
        EFFNET,
        EFFNET_FILE,
        EFFNET_METRIC,
        NETWORKS,
        WEIGHT_FILES,
        FeatureNets,
        effnet_weights,
    )

    present = [n for n in NETWORKS if weights and (Path(weights) / WEIGHT_FILES[n]).is_file()]
    if weights and not present and not (Path(weights) / EFFNET_FILE).is_file():
        names = sorted((*WEIGHT_FILES.values(), EFFNET_FILE))
        raise FileNotFoundError(f"no weights at {weights}: none of {names}")
    try:
        effnet_weights(weights or None)
        present.append(EFFNET)
    except FileNotFoundError as err:
        logger.warning("%s skipped: %s", EFFNET_METRIC, err)
    return FeatureNets.load(weights or None, present) if present else None


def image_paths(cfg: GenEvalConfig, bundle: ModelBundle) -> dict[int, Path]:
    """image id -> the seen image's file, for every image of the store."""
    from megdecode.latents.stage import store_images

    store = cfg.store or bundle.fit_config.store
    if not cfg.bids_root:
        raise ValueError("bids_root must be set (the images live under bids_root/stimuli)")
    ids, rel = store_images(Path(store))
    return {
        int(i): bids.image_file(cfg.bids_root, p, cfg.images_root or None)
        for i, p in zip(ids, rel, strict=True)
    }


def seen_images(
    inputs: EvalInputs, kinds: list[str], paths: dict[int, Path]
) -> dict[str, list[Image.Image]]:
    """kind -> the seen image of each of its rows (each file opened once)."""
    opened: dict[int, Image.Image] = {}
    seen = {}
    for kind in kinds:
        for i in inputs.image_ids[kind].tolist():
            if i not in opened:
                opened[i] = open_rgb(paths[i])
        seen[kind] = [opened[i] for i in inputs.image_ids[kind].tolist()]
    return seen


def score_kinds(
    inputs: EvalInputs,
    recon: dict[str, list[Image.Image]],
    seen: dict[str, list[Image.Image]],
    nets: FeatureNets | None,
    fidelity: pd.DataFrame,
) -> pd.DataFrame:
    """The metrics table: one row per kind (in `recon`'s order) with its image metrics,
    its mean latent r and how its latents were z-scored."""
    from megdecode.generate.metrics import compute_metrics

    rows = []
    for kind, images in recon.items():
        scores = compute_metrics(images, seen[kind], nets)
        rows.append(
            {
                "kind": kind,
                "n": len(images),
                **scores,
                "latent_r": float(fidelity.loc[fidelity.kind == kind, "r"].mean()),
                "pred_stats": inputs.pred_stats if kind in DECODED else NOT_SCALED,
            }
        )
        logger.info("%s: %s", kind, {k: round(v, 4) for k, v in scores.items()})
    return pd.DataFrame(rows)


def per_image_scores(
    recons: list[Image.Image], seen: list[Image.Image], nets: FeatureNets | None
) -> np.ndarray:
    """Per-image ranking score (SSIM, + 1 - SwAV distance when the SwAV net is loaded)."""
    from megdecode.generate.features import as_float_images
    from megdecode.generate.metrics import paired_correlation, ssim

    s = np.array([ssim([r], [g]) for r, g in zip(recons, seen, strict=True)])
    swav = None
    if nets is not None and "swav" in nets.nets:
        rec, gt = as_float_images(recons), as_float_images(seen)
        swav = 1.0 - paired_correlation(nets.features("swav", rec), nets.features("swav", gt))
    return rank_scores(s, swav)
