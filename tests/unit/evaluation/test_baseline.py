"""Ridge and ConvNet scores on one window, the shuffled-target control, the comparison table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from megdecode.evaluation.baseline import (
    format_table,
    results_table,
    retrieval_metrics,
    ridge_metrics,
    ridge_table,
    shuffle_targets,
)
from megdecode.evaluation.windows import slice_window
from megdecode.rundata import RunData


def test_shuffled_targets_are_other_images_latents_consistently(run: RunData) -> None:
    shuffled = shuffle_targets(run, seed=1)
    for split in ("train", "val"):
        old, new = getattr(run, split), getattr(shuffled, split)
        frame = pd.DataFrame(new.target.numpy()).assign(image=new.meta["image_id"].to_numpy())
        assert (frame.groupby("image").nunique() == 1).all().all()  # one target per image
        assert not np.isclose(new.target.numpy(), old.target.numpy()).all(axis=1).any()
    # a permutation: the same set of vectors over train+val images
    before = np.unique(torch.cat([run.train.target, run.val.target]).numpy(), axis=0)
    after = np.unique(torch.cat([shuffled.train.target, shuffled.val.target]).numpy(), axis=0)
    np.testing.assert_array_equal(before, after)
    assert torch.equal(shuffled.test.target, run.test.target)
    assert not torch.equal(shuffle_targets(run, seed=2).train.target, shuffled.train.target)


def test_perfect_predictions_score_perfectly(run: RunData) -> None:
    metrics = retrieval_metrics(run.test.target.numpy(), run)
    for test_set in ("small", "large"):
        assert metrics[f"{test_set}_top5"] == metrics[f"{test_set}_top5_avg"] == 1.0
        assert metrics[f"{test_set}_mean_rank"] == metrics[f"{test_set}_median_rank"] == 0.0
    assert metrics["small_chance_top5"] == pytest.approx(5 / 12)
    assert metrics["large_chance_top5"] == pytest.approx(5 / 36)


def test_ridge_metrics_and_table_score_the_same_fit(run: RunData) -> None:
    part = slice_window(run, 0.2, 0.3)
    metrics = ridge_metrics(part)
    assert metrics["alpha"] > 0 and metrics["large_top5"] > 0.9
    table = ridge_table(part).set_index(["test_set", "mode"])
    assert table.loc[("small", "single"), "top5"] == metrics["small_top5"]
    assert table.loc[("large", "averaged"), "median_rank"] == metrics["large_median_rank_avg"]
    joined = results_table(ridge_table(part), ridge_table(part))
    assert (joined["convnet_top5"] == joined["ridge_top5"]).all()
    assert "ridge_median_rank" in format_table(joined)
