"""ConvNet vs ridge vs chance on the same epochs: the paper's headline comparison.

The ridge baseline sees exactly the window, splits and targets of the brain module
(DESIGN §4: the paper's ConvNet retrieves ~7x better than ridge); the ridge is fitted
per subject, as in the paper, and its test predictions pooled. `ridge_table` scores
it like `train.fit` scores the brain module; `ridge_metrics` and `convnet_metrics` score
either model as one flat row of `retrieval_metrics`, the row a window curve
(`megdecode.evaluation.windows.window_table`) holds per window. `shuffle_targets` is the
control that must bring either model down to chance.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import torch

from megdecode.evaluation.retrieval import (
    AVERAGED,
    TEST_SET_MODES,
    available_test_sets,
    evaluate_all,
    evaluate_retrieval,
)
from megdecode.models.ridge import RidgeConfig
from megdecode.models.subject_ridge import SubjectRidge, fit_subject_ridges
from megdecode.rundata import RunData, SplitTensors
from megdecode.train import fit, predict
from megdecode.train_config import FitConfig

logger = logging.getLogger(__name__)


def retrieval_metrics(pred: np.ndarray, data: RunData) -> dict[str, float]:
    """Flat retrieval metrics of test predictions pred (N_test, F), for test set S in
    `available_test_sets` (small, large, and large_distractors when the latents hold
    distractors; see `megdecode.evaluation.retrieval`):

        S_top5, S_top5_avg                top-5 accuracy, single-trial / averaged over
                                          repetitions (the averaged keys: small set only)
        S_median_rank, S_median_rank_avg  relative median rank (0 best, 0.5 chance)
        S_mean_rank, S_mean_rank_avg      relative mean rank: smoother than the two above,
                                          the metric of choice to locate a peak on small
                                          test sets
        S_chance_top5                     5 / number of candidates ranked
    """
    return retrieval_metrics_of(pred, data.test.meta, data.latent_ids, data.latents)


def retrieval_metrics_of(
    pred: np.ndarray, meta: pd.DataFrame, latent_ids: np.ndarray, latents: np.ndarray
) -> dict[str, float]:
    """`retrieval_metrics` of predictions aligned with the rows of a test `meta`."""
    out: dict[str, float] = {}
    for test_set in available_test_sets(latent_ids):
        for mode in TEST_SET_MODES[test_set]:
            r = evaluate_retrieval(pred, meta, latent_ids, latents, test_set, mode)
            suffix = "_avg" if mode == AVERAGED else ""
            out[f"{test_set}_top5{suffix}"] = r.top5
            out[f"{test_set}_median_rank{suffix}"] = r.median_rank
            out[f"{test_set}_mean_rank{suffix}"] = float(np.mean(r.ranks / (r.n_candidates - 1)))
        out[f"{test_set}_chance_top5"] = r.chance_top5
    return out


def metrics_by_subject(pred: np.ndarray, data: RunData) -> pd.DataFrame:
    """`retrieval_metrics` of each subject's test rows alone: one row per subject.

    The paper reports per-subject scores next to the pooled ones. A subject's candidates
    are the test images it saw (every subject sees the same test images in THINGS-MEG and
    the twin, so chance is the pooled one).
    """
    meta = data.test.meta
    pred = np.asarray(pred)
    if pred.ndim != 2 or pred.shape[0] != len(meta):
        raise ValueError(f"pred must be (len(test meta)={len(meta)}, F), got {pred.shape}")
    subjects = meta["subject"].to_numpy()
    rows = []
    for subject in pd.unique(subjects):
        keep = subjects == subject
        sub_meta = meta.loc[keep].reset_index(drop=True)
        rows.append(
            {
                "subject": subject,
                **retrieval_metrics_of(pred[keep], sub_meta, data.latent_ids, data.latents),
            }
        )
    return pd.DataFrame(rows)


def shuffle_targets(data: RunData, seed: int = 0) -> RunData:
    """Control: every training and validation image gets another image's latent.

    The permutation is over images, not trials, so all repetitions of an image share one
    wrong target (a decoder can still fit them consistently) while the brain signal no
    longer relates to the target. Test targets and the candidate latents are untouched:
    retrieval must then sit at chance.
    """
    ids = np.union1d(data.train.meta["image_id"].to_numpy(), data.val.meta["image_id"].to_numpy())
    rows = np.searchsorted(data.latent_ids, ids)
    if (rows >= len(data.latent_ids)).any() or (
        data.latent_ids[np.minimum(rows, len(data.latent_ids) - 1)] != ids
    ).any():
        raise KeyError("some training images have no latent")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    while len(ids) > 1 and (perm == np.arange(len(ids))).any():  # no image keeps its own
        perm = rng.permutation(len(ids))
    wrong = dict(zip(ids.tolist(), data.latents[rows[perm]], strict=True))

    def remap(split: SplitTensors) -> SplitTensors:
        target = np.stack([wrong[i] for i in split.meta["image_id"].tolist()]).astype(np.float32)
        return dataclasses.replace(split, target=torch.from_numpy(target))

    return dataclasses.replace(data, train=remap(data.train), val=remap(data.val))


def _fit_train_val(data: RunData, cfg: RidgeConfig | None) -> SubjectRidge:
    """One ridge per subject on its train+val rows: alpha comes from its own CV over slices
    of every session (`megdecode.models.subject_ridge`), so no early-stopping split."""
    blocks = [
        (split.meg.numpy(), split.target.numpy(), split.meta) for split in (data.train, data.val)
    ]
    return fit_subject_ridges(blocks, cfg)


def ridge_predictions(
    data: RunData, cfg: RidgeConfig | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """(test predictions aligned with data.test.meta, {subject: CV alpha}) of the
    per-subject ridges fitted on train+val of `data`: each test row by its subject's ridge."""
    model = _fit_train_val(data, cfg)
    pred = model.predict(data.test.meg.numpy(), data.test.meta["subject"].to_numpy())
    return pred, dict(model.alphas)


def ridge_metrics(data: RunData, cfg: RidgeConfig | None = None) -> dict[str, float]:
    """`retrieval_metrics` of the per-subject ridges fitted on train+val of `data`, pooled
    over subjects like the ConvNet's, plus `alpha` (the median of the subjects' CV alphas)
    and `alpha_<subject>` for each subject."""
    pred, alphas = ridge_predictions(data, cfg)
    return {
        **retrieval_metrics(pred, data),
        "alpha": float(np.median(list(alphas.values()))),
        **{f"alpha_{subject}": alpha for subject, alpha in alphas.items()},
    }


def convnet_predictions(data: RunData, cfg: FitConfig) -> tuple[np.ndarray, dict[str, float]]:
    """(CLIP-head test predictions aligned with data.test.meta, the run's metrics) of the
    brain module trained on `data` by `train.fit`."""
    result = fit(cfg, data=data)
    clip, _, _ = predict(result.model, result.loss, data.test, cfg.train.batch_size)
    return clip, result.metrics


def convnet_metrics(data: RunData, cfg: FitConfig) -> dict[str, float]:
    """`retrieval_metrics` of the brain module trained on `data` by `train.fit`, plus its
    best epoch and validation top-5 (cfg.train's window is what the run records)."""
    clip, metrics = convnet_predictions(data, cfg)
    return {
        **retrieval_metrics(clip, data),
        "best_epoch": metrics["best_epoch"],
        "val_top5": metrics["val/top5"],
    }


def ridge_table(data: RunData, cfg: RidgeConfig | None = None) -> pd.DataFrame:
    """Fit one ridge per subject on train+val (alpha by CV inside) and score the pooled
    test predictions like the brain module."""
    pred, _ = ridge_predictions(data, cfg)
    return evaluate_all(pred, data.test.meta, data.latent_ids, data.latents)


def results_table(convnet: pd.DataFrame, ridge: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows (test_set, mode); columns top5/median_rank per model and the chance level."""
    keys = ["test_set", "mode"]
    table = convnet[keys + ["n_candidates", "chance_top5"]].copy()
    for name, frame in (("convnet", convnet), ("ridge", ridge)):
        if frame is None:
            continue
        merged = frame.set_index(keys)[["top1", "top5", "median_rank"]].add_prefix(f"{name}_")
        table = table.join(merged, on=keys)
    return table


def format_table(table: pd.DataFrame) -> str:
    """A fixed-width text table for terminals and logs."""
    return table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
