"""One training run: one config, one seed, one time window -> metrics and a model bundle.

`fit(config)` (a `megdecode.train_config.FitConfig`) is the single entry point used by the CLI, by Ray Tune trainables and by
the window curves, so every path trains the same way. The loop is plain: `train_step`
and `eval_step` are functions over a typed `Batch`; per-epoch metrics go to a callback so
Tune and MLflow can consume them without this module knowing about either. The epochs
and targets come as a `megdecode.rundata.RunData`, read from disk by `load_run_data`
unless the caller (a Tune trial, the window curves) already holds them. The bundle a
run saves is built in `megdecode.train_bundle`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from megdecode.bundle import PredictionStats
from megdecode.bundle_io import save_bundle
from megdecode.evaluation.retrieval import AVERAGED, evaluate_all, retrieval_ranks, topk_accuracy
from megdecode.logs import progress
from megdecode.losses import CombinedLoss
from megdecode.models.brain import BrainConfig, BrainModule
from megdecode.rundata import Batch, EpochSplit, RunData, load_run_data
from megdecode.train_bundle import make_bundle
from megdecode.train_config import MONITORS, FitConfig, TrainConfig

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class RunResult:
    """What `fit` returns: metrics, per-epoch history, the model and where it was saved."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    table: pd.DataFrame  # retrieval table (test set x mode)
    model: BrainModule
    loss: CombinedLoss  # with the learned temperature of the best epoch
    bundle_path: Path | None = None


def build_model(cfg: BrainConfig, data: RunData) -> BrainModule:
    """The brain module sized for this data (channels, window, subjects, latent size)."""
    sized = cfg.replace(
        n_channels=len(data.ch_names),
        n_times=data.train.n_times,
        n_subjects=len(data.subjects),
        out_dim=int(data.latents.shape[1]),
    )
    return BrainModule(sized, data.pos2d)


def train_step(
    model: BrainModule, loss_fn: CombinedLoss, optimizer: torch.optim.Optimizer, batch: Batch
) -> torch.Tensor:
    """One optimiser step; returns the detached (total, clip, mse) losses as a (3,) tensor."""
    model.train()
    out = model(batch.meg, batch.subject)
    parts = loss_fn(out.clip, out.mse, batch.target, batch.image)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    optimizer.step()
    loss_fn.clamp_()
    return torch.stack([parts.total, parts.clip, parts.mse]).detach()


@torch.no_grad()
def eval_step(
    model: BrainModule, loss_fn: CombinedLoss, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clip_pred (B, F), mse_pred (B, F), losses (3,)) in eval mode."""
    model.eval()
    out = model(batch.meg, batch.subject)
    parts = loss_fn(out.clip, out.mse, batch.target, batch.image)
    return out.clip, out.mse, torch.stack([parts.total, parts.clip, parts.mse])


def predict(
    model: BrainModule, loss_fn: CombinedLoss, data: EpochSplit, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """clip (N, F), mse (N, F) predictions and the batch-size-weighted mean losses (3,)."""
    clips, mses, losses, sizes = [], [], [], []
    for batch in data.batches(batch_size):
        clip, mse, loss = eval_step(model, loss_fn, batch)
        clips.append(clip)
        mses.append(mse)
        losses.append(loss)
        sizes.append(len(batch.meg))
    weights = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    mean_loss = (torch.stack(losses) * weights[:, None]).sum(0)
    return torch.cat(clips).numpy(), torch.cat(mses).numpy(), mean_loss.numpy()


def _val_top5(pred: np.ndarray, val: EpochSplit) -> float:
    """Single-trial top-5 among the validation images."""
    ids = val.meta["image_id"].to_numpy()
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return topk_accuracy(retrieval_ranks(pred, val.target.numpy()[first], inverse), 5)


class Trainer:
    """One seed's run, stepped one epoch at a time.

    Stepping lets several seeds advance in lockstep inside one Tune trial and report
    their mean per epoch to the scheduler. Each trainer owns its random state (restored
    around every step), so interleaving seeds gives exactly the run `fit` gives alone.
    """

    def __init__(self, cfg: FitConfig, data: RunData) -> None:
        t: TrainConfig = cfg.train
        self.cfg, self.data = cfg, data
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            self.model = build_model(cfg.model, data).to(t.device)
            self.loss_fn = CombinedLoss(cfg.loss).to(t.device)
            self._rng_state = torch.get_rng_state()
        params = list(self.model.parameters()) + list(self.loss_fn.parameters())
        self.optimizer = torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2))
        self.generator = torch.Generator().manual_seed(t.seed)
        self.sign = 1.0 if MONITORS[t.monitor] == "min" else -1.0
        self.best, self.best_epoch = float("inf"), -1
        self.best_state: tuple[dict, dict] | None = None
        self.history: list[dict[str, float]] = []
        self.seconds, self.n_seen = 0.0, 0

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def done(self) -> bool:
        """Max epochs reached, or `patience` epochs without improving the monitor."""
        t = self.cfg.train
        stalled = self.best_epoch >= 0 and self.epoch - 1 - self.best_epoch >= t.patience
        return self.epoch >= t.max_epochs or stalled

    def step(self) -> dict[str, float]:
        """Train one epoch, validate, keep the best weights; returns the epoch's metrics."""
        t, data = self.cfg.train, self.data
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng_state)
            losses = [
                train_step(self.model, self.loss_fn, self.optimizer, b.to(t.device))
                for b in data.train.batches(t.batch_size, self.generator)
            ]
            self._rng_state = torch.get_rng_state()
        self.n_seen += len(data.train.meta)
        train_loss = torch.stack(losses).mean(0).tolist()
        val_clip, _, val_loss = predict(self.model, self.loss_fn, data.val, t.batch_size)
        self.seconds += time.perf_counter() - start
        row = {
            "epoch": float(self.epoch),
            "train/loss": train_loss[0],
            "train/clip_loss": train_loss[1],
            "train/mse_loss": train_loss[2],
            "val/loss": float(val_loss[0]),
            "val/clip_loss": float(val_loss[1]),
            "val/mse_loss": float(val_loss[2]),
            "val/top5": _val_top5(val_clip, data.val),
            "temperature": float(1.0 / self.loss_fn.clip.scale().item()),
        }
        if self.sign * row[t.monitor] < self.best:
            self.best, self.best_epoch = self.sign * row[t.monitor], self.epoch
            self.best_state = (
                copy.deepcopy(self.model.state_dict()),
                copy.deepcopy(self.loss_fn.state_dict()),
            )
        self.history.append(row)
        logger.info(
            "seed %d epoch %d: train %.4f val %.4f val/top5 %.3f",
            t.seed,
            self.epoch - 1,
            row["train/loss"],
            row["val/loss"],
            row["val/top5"],
        )
        return row

    def finish(self, out_dir: Path | None = None) -> RunResult:
        """Restore the best epoch's weights, score the test sets, optionally save a bundle."""
        if self.best_state is None:
            raise RuntimeError("finish() before any epoch was trained")
        self.model.load_state_dict(self.best_state[0])
        self.loss_fn.load_state_dict(self.best_state[1])
        data, t = self.data, self.cfg.train
        test_clip, _, _ = predict(self.model, self.loss_fn, data.test, t.batch_size)
        table = evaluate_all(test_clip, data.test.meta, data.latent_ids, data.latents)
        metrics = _summary_metrics(
            table,
            self.history[self.best_epoch],
            self.best_epoch,
            len(self.history),
            self.seconds,
            self.n_seen,
        )
        result = RunResult(
            metrics=metrics, history=self.history, table=table, model=self.model, loss=self.loss_fn
        )
        if out_dir is not None:
            # the reference set of the served scaling: validation predictions of the restored
            # best weights (never the test set, which the evaluation scores)
            _, val_mse, _ = predict(self.model, self.loss_fn, data.val, t.batch_size)
            stats = PredictionStats.of(val_mse, reference="val")
            bundle = make_bundle(
                self.cfg, data, self.model, metrics, prediction_stats=stats, loss=self.loss_fn
            )
            result.bundle_path = save_bundle(bundle, Path(out_dir))
        return result


def fit(
    cfg: FitConfig,
    callback: EpochCallback | None = None,
    out_dir: Path | None = None,
    data: RunData | None = None,
) -> RunResult:
    """Train one brain module with early stopping; evaluate; save a bundle to `out_dir`."""
    trainer = Trainer(cfg, data or load_run_data(cfg))
    bar = iter(
        progress(
            range(cfg.train.max_epochs),
            desc=f"seed {cfg.train.seed} epochs",
            total=cfg.train.max_epochs,
        )
    )
    while not trainer.done:
        next(bar, None)
        row = trainer.step()
        if callback is not None:
            callback(trainer.epoch - 1, row)
    if trainer.epoch < cfg.train.max_epochs:
        logger.info("early stop after epoch %d (best %d)", trainer.epoch - 1, trainer.best_epoch)
    return trainer.finish(out_dir)


def _summary_metrics(
    table: pd.DataFrame,
    best_row: dict[str, float],
    best_epoch: int,
    epochs: int,
    seconds: float,
    n_seen: int,
) -> dict[str, float]:
    """DESIGN §6 names: val/top5, test/top5, test/top5_avg, test/median_rank, and the rest.

    Prefixes: test (small set), test_large, test_large_distractors; "_avg" marks the small
    set's averaged scores (the large sets have single-trial scores only)."""
    metrics = {k: v for k, v in best_row.items() if k.startswith("val/")}
    for r in table.to_dict("records"):
        prefix = "test" if r["test_set"] == "small" else f"test_{r['test_set']}"
        suffix = "_avg" if r["mode"] == AVERAGED else ""
        for name in ("top1", "top5", "median_rank"):
            metrics[f"{prefix}/{name}{suffix}"] = float(r[name])
        metrics[f"{prefix}/chance_top5"] = float(r["chance_top5"])
    metrics.update(
        {
            "best_epoch": float(best_epoch),
            "epochs": float(epochs),
            "train_seconds": seconds,
            "train_samples_per_s": n_seen / seconds if seconds > 0 else float("nan"),
        }
    )
    return metrics
