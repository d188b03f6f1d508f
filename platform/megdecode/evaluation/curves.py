"""Decoding over time: one model per time window, scored with the retrieval metrics.

The epochs are read once (the whole stored window) and each model's window is a slice
of those tensors in memory: a 57-window sliding curve would otherwise read the store 57
times. `window_table` drives `megdecode.evaluation.windows.window_curve` with either the ridge
baseline (`fit_ridge` on train+val, alpha by CV) or the brain module (`train.fit`, with
the window recorded in its TrainConfig), and `save_window_figure` draws the curve with
chance and, on the twin, the latencies the simulator used.

Metric columns (one row per window), for test set S in {small, large}:
    S_top5, S_top5_avg              top-5 accuracy, single trials / averaged over repetitions
    S_median_rank, S_median_rank_avg  relative median rank (0 best, 0.5 chance)
    S_mean_rank, S_mean_rank_avg    relative mean rank: smoother than the two above, the
                                    metric of choice to locate a peak on small test sets
    S_chance_top5                   5 / number of candidates
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from megdecode.evaluation.retrieval import MODES, TEST_SPLITS, evaluate_retrieval
from megdecode.evaluation.windows import Window, plot_window_curves, window_curve, window_grid
from megdecode.models.ridge import RidgeConfig, fit_ridge
from megdecode.train import FitConfig, RunData, SplitTensors, fit, load_run_data, predict

logger = logging.getLogger(__name__)

MODELS = ("ridge", "convnet")
FitEval = Callable[[float, float], dict[str, float]]


def retrieval_metrics(pred: np.ndarray, data: RunData) -> dict[str, float]:
    """Flat retrieval metrics (see module docstring) of test predictions pred (N_test, F)."""
    out: dict[str, float] = {}
    for test_set in TEST_SPLITS:
        for mode in MODES:
            r = evaluate_retrieval(pred, data.test.meta, data.latent_ids, data.latents, test_set, mode)
            suffix = "_avg" if mode == "averaged" else ""
            out[f"{test_set}_top5{suffix}"] = r.top5
            out[f"{test_set}_median_rank{suffix}"] = r.median_rank
            out[f"{test_set}_mean_rank{suffix}"] = float(np.mean(r.ranks / (r.n_candidates - 1)))
        out[f"{test_set}_chance_top5"] = r.chance_top5
    return out


def times_of(data: RunData) -> np.ndarray:
    """(T,) sample times (s) of the epochs held in `data`."""
    n = int(data.train.meg.shape[2])
    times = data.tmin + np.arange(n) / data.sfreq
    if abs(times[-1] - data.tmax) > 0.5 / data.sfreq:
        raise ValueError(f"{n} samples at {data.sfreq} Hz do not span [{data.tmin}, {data.tmax}] s")
    return times


def slice_window(data: RunData, tmin: float, tmax: float) -> RunData:
    """The samples with tmin <= t <= tmax (inclusive, as the store's reader) of every split.

    Tensors are copied contiguous so a model never holds a view of the full epochs.
    """
    times = times_of(data)
    tol = 1e-6 / data.sfreq
    keep = np.flatnonzero((times >= tmin - tol) & (times <= tmax + tol))
    if len(keep) < 2:
        raise ValueError(f"window [{tmin}, {tmax}] s holds {len(keep)} samples of "
                         f"[{data.tmin:.4f}, {data.tmax:.4f}] s")
    lo, hi = int(keep[0]), int(keep[-1]) + 1

    def cut(split: SplitTensors) -> SplitTensors:  # windows are contiguous: a slice, copied
        meg = np.ascontiguousarray(split.meg.numpy()[:, :, lo:hi])
        return dataclasses.replace(split, meg=torch.from_numpy(meg))

    return dataclasses.replace(data, train=cut(data.train), val=cut(data.val), test=cut(data.test),
                               tmin=float(times[keep[0]]), tmax=float(times[keep[-1]]))


def shuffle_targets(data: RunData, seed: int = 0) -> RunData:
    """Control: every training and validation image gets another image's latent.

    The permutation is over images, not trials, so all repetitions of an image share one
    wrong target (a decoder can still fit them consistently) while the brain signal no
    longer relates to the target. Test targets and the candidate latents are untouched:
    retrieval must then sit at chance.
    """
    ids = np.union1d(data.train.meta["image_id"].to_numpy(), data.val.meta["image_id"].to_numpy())
    rows = np.searchsorted(data.latent_ids, ids)
    if (rows >= len(data.latent_ids)).any() or (data.latent_ids[np.minimum(rows, len(data.latent_ids) - 1)] != ids).any():
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


def ridge_fit_eval(data: RunData, cfg: RidgeConfig | None = None) -> FitEval:
    """fit_eval(tmin, tmax) for window_curve: ridge on train+val of the window, test metrics."""

    def run(tmin: float, tmax: float) -> dict[str, float]:
        part = slice_window(data, tmin, tmax)
        X = torch.cat([part.train.meg, part.val.meg]).numpy()
        Y = torch.cat([part.train.target, part.val.target]).numpy()
        model = fit_ridge(X, Y, cfg)
        metrics = retrieval_metrics(model.predict(part.test.meg.numpy()), part)
        return {**metrics, "alpha": model.alpha}

    return run


def convnet_fit_eval(data: RunData, cfg: FitConfig) -> FitEval:
    """fit_eval(tmin, tmax) for window_curve: the brain module trained by `train.fit`."""

    def run(tmin: float, tmax: float) -> dict[str, float]:
        part = slice_window(data, tmin, tmax)
        window_cfg = cfg.replace(train=cfg.train.replace(tmin=tmin, tmax=tmax))
        result = fit(window_cfg, data=part)
        clip, _, _ = predict(result.model, result.loss, part.test, cfg.train.batch_size)
        return {**retrieval_metrics(clip, part), "best_epoch": result.metrics["best_epoch"],
                "val_top5": result.metrics["val/top5"]}

    return run


def window_table(
    data: RunData | FitConfig,
    kind: str = "sliding",
    model: str = "ridge",
    *,
    windows: list[Window] | None = None,
    ridge: RidgeConfig | None = None,
    fit_config: FitConfig | None = None,
    progress: bool = True,
    **grid: float,
) -> pd.DataFrame:
    """One model per window -> one row per window: tmin, tmax, center, metrics.

    data: loaded epochs (RunData, the whole span the windows need), or a FitConfig whose
    store/latent/window are loaded once. windows default to `window_grid(kind, data span,
    **grid)`. model="ridge" uses `ridge` (RidgeConfig); model="convnet" trains with
    `fit_config` (default: `data` when it is a FitConfig, else FitConfig()) per window.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if isinstance(data, FitConfig):
        fit_config = fit_config or data
        data = load_run_data(data)
    if windows is None:
        windows = window_grid(kind, epoch_tmin=data.tmin, epoch_tmax=data.tmax, **grid)
    fit_eval = (ridge_fit_eval(data, ridge) if model == "ridge"
                else convnet_fit_eval(data, fit_config or FitConfig()))
    table = window_curve(fit_eval, windows, progress=progress)
    table.insert(0, "model", model)
    table.insert(1, "kind", kind)
    return table


def _lower_is_better(metric: str) -> bool:
    return "rank" in metric


def curve_peak(table: pd.DataFrame, metric: str = "large_mean_rank", x: str = "center",
               smooth: int = 1) -> float:
    """Time (column x) of the best window: highest top-k, lowest rank.

    smooth > 1 first averages `smooth` neighbouring windows (centred): a response that
    decodes over a plateau of windows then peaks at the plateau's middle instead of at
    whichever window the noise favours. The table must be sorted by x.
    """
    if table.empty:
        raise ValueError("empty window table")
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    values = table[metric].astype(float).rolling(smooth, center=True, min_periods=1).mean()
    best = np.nanargmin(values) if _lower_is_better(metric) else np.nanargmax(values)
    return float(table[x].to_numpy()[int(best)])


def chance_level(table: pd.DataFrame, metric: str) -> float:
    """Chance of `metric`: 0.5 for relative ranks, 5 / candidates for top-5."""
    if _lower_is_better(metric):
        return 0.5
    test_set = metric.split("_", 1)[0]
    column = f"{test_set}_chance_top5"
    if column not in table.columns:
        raise ValueError(f"no chance column {column!r} for metric {metric!r}")
    return float(table[column].iloc[0])


def onset_latencies(latencies_s: Mapping[str, float]) -> dict[str, float]:
    """The twin's latencies that are times after image onset (drops *_after_image_offset)."""
    return {k: float(v) for k, v in latencies_s.items() if "after" not in k}


def save_window_figure(
    table: pd.DataFrame,
    path: str | Path,
    truth: Mapping[str, float] | None = None,
    metric: str = "small_top5_avg",
    hue: str | None = None,
    title: str | None = None,
) -> Path:
    """PNG of `metric` per window, chance dashed, truth latencies (s after onset) dotted.

    truth: e.g. read_ground_truth(bids)["latencies_s"] (the twin); None for real data.
    """
    marks = onset_latencies(truth) if truth is not None else None
    return plot_window_curves(table, metric, chance_level(table, metric), path,
                              truth_latencies=marks, hue=hue, title=title)
