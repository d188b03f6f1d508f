"""ConvNet vs ridge vs chance on the same epochs: the paper's headline comparison.

The ridge baseline sees exactly the window, splits and targets of the brain module
(DESIGN §4: the paper's ConvNet retrieves ~7x better than ridge).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from megdecode.evaluation.retrieval import evaluate_all
from megdecode.models.ridge import RidgeConfig, fit_ridge
from megdecode.train import RunData

logger = logging.getLogger(__name__)


def ridge_table(data: RunData, cfg: RidgeConfig | None = None) -> pd.DataFrame:
    """Fit ridge on train+val (alpha by CV inside) and score it like the brain module."""
    X = np.concatenate([data.train.meg.numpy(), data.val.meg.numpy()])
    Y = np.concatenate([data.train.target.numpy(), data.val.target.numpy()])
    model = fit_ridge(X, Y, cfg)
    pred = model.predict(data.test.meg.numpy())
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
