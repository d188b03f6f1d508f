"""Ridge and ConvNet scores on one window, the shuffled-target control, the comparison table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from megdecode.data.distractors import DISTRACTOR_ID_BASE
from megdecode.evaluation.baseline import (
    format_table,
    metrics_by_subject,
    results_table,
    retrieval_metrics,
    ridge_metrics,
    ridge_predictions,
    ridge_table,
    shuffle_targets,
)
from megdecode.evaluation.windows import slice_window
from megdecode.rundata import RunData, SplitTensors


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
    assert metrics["small_top5"] == metrics["small_top5_avg"] == metrics["large_top5"] == 1.0
    for test_set in ("small", "large"):
        assert metrics[f"{test_set}_mean_rank"] == metrics[f"{test_set}_median_rank"] == 0.0
    assert metrics["small_chance_top5"] == pytest.approx(5 / 12)
    # the 24 zero-shot images only (not the 12 repeated test images as well), seen once:
    # no averaged keys, and no distractor set without distractor latents
    assert metrics["large_chance_top5"] == pytest.approx(5 / 24)
    assert not any(k.startswith("large_") and k.endswith("_avg") for k in metrics)
    assert not any(k.startswith("large_distractors") for k in metrics)


def test_distractor_latents_add_the_large_distractors_metrics(run: RunData) -> None:
    rng = np.random.default_rng(0)
    extra = DISTRACTOR_ID_BASE + np.arange(36)
    with_extra = dataclasses.replace(
        run,
        latent_ids=np.concatenate([run.latent_ids, extra]),
        latents=np.concatenate(
            [run.latents, rng.standard_normal((36, run.latents.shape[1])).astype(np.float32)]
        ),
    )
    metrics = retrieval_metrics(run.test.target.numpy(), with_extra)
    assert metrics["large_distractors_chance_top5"] == pytest.approx(5 / (24 + 36))
    assert metrics["large_chance_top5"] == pytest.approx(5 / 24)
    assert metrics["large_distractors_top5"] == 1.0


def test_ridge_metrics_and_table_score_the_same_fit(run: RunData) -> None:
    part = slice_window(run, 0.2, 0.3)
    metrics = ridge_metrics(part)
    assert metrics["alpha"] > 0 and metrics["large_top5"] > 0.9
    table = ridge_table(part).set_index(["test_set", "mode"])
    assert table.loc[("small", "single-trial"), "top5"] == metrics["small_top5"]
    assert table.loc[("small", "averaged"), "median_rank"] == metrics["small_median_rank_avg"]
    assert table.loc[("large", "single-trial"), "median_rank"] == metrics["large_median_rank"]
    joined = results_table(ridge_table(part), ridge_table(part))
    assert (joined["convnet_top5"] == joined["ridge_top5"]).all()
    assert "ridge_median_rank" in format_table(joined)


def _flipped_second_subject(run: RunData) -> RunData:
    """`run` as subject S1 plus a copy as S2 whose sensors carry the latent with the opposite
    sign (same images, a flipped field map), with two sessions each."""

    def both(split: SplitTensors) -> SplitTensors:
        n = len(split.meta)
        session = np.where(np.arange(n) < n // 2, "01", "02")
        meta = pd.concat(
            [split.meta.assign(subject=s, session=session) for s in ("S1", "S2")],
            ignore_index=True,
        )
        return SplitTensors(
            meg=torch.cat([split.meg, -split.meg]),
            subject=torch.cat([split.subject, split.subject + 1]),
            target=torch.cat([split.target, split.target]),
            meta=meta,
        )

    return dataclasses.replace(
        run, train=both(run.train), val=both(run.val), test=both(run.test), subjects=["S1", "S2"]
    )


def test_ridge_is_fitted_per_subject(run: RunData) -> None:
    """A ridge pooled over subjects averages the two opposite maps to nothing (chance);
    one ridge per subject retrieves both, and reports each subject's alpha."""
    data = slice_window(_flipped_second_subject(run), 0.2, 0.3)
    metrics = ridge_metrics(data)
    assert metrics["large_top5"] > 0.9 and metrics["small_top5"] > 0.9
    assert {"alpha_S1", "alpha_S2"} <= set(metrics)
    assert metrics["alpha"] == pytest.approx(np.median([metrics["alpha_S1"], metrics["alpha_S2"]]))
    table = ridge_table(data).set_index(["test_set", "mode"])
    assert table.loc[("large", "single-trial"), "top5"] == metrics["large_top5"]


def test_metrics_by_subject_score_each_subjects_rows_alone(run: RunData) -> None:
    """S1 predicts its targets, S2 their opposites: S1 is perfect, S2 always last, and the
    pooled score is the mean of the two."""
    data = _flipped_second_subject(run)
    is_s2 = (data.test.meta["subject"] == "S2").to_numpy()[:, None]
    target = data.test.target.numpy()
    pred = np.where(is_s2, -target, target)
    table = metrics_by_subject(pred, data).set_index("subject")
    assert list(table.index) == ["S1", "S2"]
    assert table.loc["S1", ["small_top5", "small_top5_avg", "large_top5"]].tolist() == [1.0] * 3
    assert table.loc["S2", ["small_top5", "small_top5_avg", "large_top5"]].tolist() == [0.0] * 3
    assert (
        table.loc["S1", "large_median_rank"] == 0.0 and table.loc["S2", "large_median_rank"] == 1.0
    )
    assert table.loc["S2", "large_chance_top5"] == pytest.approx(5 / 24)
    assert retrieval_metrics(pred, data)["small_top5"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pred must be"):
        metrics_by_subject(pred[:-1], data)


def test_ridge_predictions_are_what_ridge_metrics_scores(run: RunData) -> None:
    data = slice_window(_flipped_second_subject(run), 0.2, 0.3)
    pred, alphas = ridge_predictions(data)
    assert pred.shape == data.test.target.shape and set(alphas) == {"S1", "S2"}
    metrics = ridge_metrics(data)
    assert retrieval_metrics(pred, data) == {k: metrics[k] for k in retrieval_metrics(pred, data)}
    assert metrics["alpha_S1"] == alphas["S1"]
