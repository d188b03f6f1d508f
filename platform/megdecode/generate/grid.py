"""A non-cherry-picked reconstruction grid: rows ranked by a score, best / middle / worst.

Showing only the best reconstructions is the classic way to oversell a decoder. The grid
ranks every test image by a per-image score (SwAV + SSIM when SwAV is available, else
SSIM) and shows fixed groups from the top, the middle and the bottom of the ranking,
so a reader sees the typical and the failed cases next to the good ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)


def pick_rows(scores: np.ndarray, per_group: int) -> list[tuple[str, np.ndarray]]:
    """Indices of the best, middle and worst `per_group` rows by `scores` (higher = better).

    Groups never overlap; with fewer than 3 * per_group rows, each group gets its share.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    n = len(order)
    k = max(1, min(per_group, n // 3)) if n >= 3 else n
    if n < 3:
        return [("all", order)]
    mid = n // 2 - k // 2
    return [("best", order[:k]), ("middle", order[mid : mid + k]), ("worst", order[n - k :])]


def rank_scores(ssim: np.ndarray, swav_distance: np.ndarray | None = None) -> np.ndarray:
    """Per-image ranking score: SSIM, plus (1 - SwAV correlation distance) when available."""
    score = np.asarray(ssim, dtype=np.float64)
    if swav_distance is not None:
        score = score + (1.0 - np.asarray(swav_distance, dtype=np.float64))
    return score


def make_grid(
    columns: Mapping[str, Sequence[Image.Image]],
    groups: list[tuple[str, np.ndarray]],
    cell: int = 96,
    title: str = "",
) -> Image.Image:
    """Columns {label: N images} (e.g. seen | reconstructions); one row per picked index.

    Images are upscaled to `cell` px with nearest-neighbour, so small generators' pixels
    stay visible rather than blurred into something that looks better than it is.
    """
    labels = list(columns)
    n_rows = sum(len(idx) for _, idx in groups)
    label_w, head_h, gap = 64, 18 + (16 if title else 0), 6
    width = label_w + len(labels) * (cell + 2)
    height = head_h + n_rows * (cell + 2) + gap * (len(groups) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black")
    for j, label in enumerate(labels):
        draw.text((label_w + j * (cell + 2) + 2, head_h - 14), label[: cell // 6], fill="black")
    y = head_h
    for g, (name, idx) in enumerate(groups):
        draw.text((4, y + 4), name, fill="black")
        for i in idx:
            for j, label in enumerate(labels):
                image = (
                    columns[label][int(i)]
                    .convert("RGB")
                    .resize((cell, cell), Image.Resampling.NEAREST)
                )
                canvas.paste(image, (label_w + j * (cell + 2), y))
            y += cell + 2
        if g < len(groups) - 1:
            y += gap
    return canvas


def save_grid(
    path: str | Path,
    columns: Mapping[str, Sequence[Image.Image]],
    scores: np.ndarray,
    per_group: int = 4,
    cell: int = 96,
    title: str = "",
) -> Path:
    """Rank by `scores`, build the grid, write a PNG; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(columns, pick_rows(scores, per_group), cell=cell, title=title).save(path)
    return path
