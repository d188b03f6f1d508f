"""The non-cherry-picked grid: ranking groups and layout."""

from __future__ import annotations

import numpy as np
from PIL import Image

from megdecode.generate.grid import make_grid, pick_rows, rank_scores


def test_groups_are_best_middle_worst_and_disjoint() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])
    groups = dict(pick_rows(scores, per_group=2))
    assert list(groups) == ["best", "middle", "worst"]
    assert groups["best"].tolist() == [1, 6]
    assert groups["worst"].tolist() == [5, 0]
    assert set(groups["middle"].tolist()) <= {7, 2, 8}
    flat = np.concatenate(list(groups.values()))
    assert len(set(flat.tolist())) == len(flat)
    assert dict(pick_rows(scores[:4], per_group=4))["best"].tolist() == [1]  # n // 3 per group


def test_swav_distance_lowers_the_score_and_grid_has_one_row_per_pick() -> None:
    np.testing.assert_allclose(rank_scores([0.5, 0.5], [0.0, 1.0]), [1.5, 0.5])
    images = [Image.new("RGB", (16, 16), (i * 20, 0, 0)) for i in range(6)]
    grid = make_grid({"seen": images, "recon": images}, pick_rows(np.arange(6.0), 2), cell=32)
    assert grid.width == 64 + 2 * 34
    assert grid.height >= 6 * 34
    # the best row is the highest score: image 5 (red 100) at the top-left cell
    assert grid.getpixel((64 + 16, 18 + 16))[0] == 100
