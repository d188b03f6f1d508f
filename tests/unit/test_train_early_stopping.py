"""Early stopping on a run built to get worse (`fixtures.overfit`), for both monitor directions.

The expected best epoch is read from the history with the direction written here (not
from `MONITORS`), the first of equal values winning (a tie is no improvement); the
weights `finish` restores are compared exactly with a copy taken after every epoch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fixtures.configs import SMALL_BRAIN
from fixtures.overfit import overfitting_run
from megdecode.train import Trainer, fit
from megdecode.train_config import FitConfig, TrainConfig

PATIENCE, MAX_EPOCHS = 3, 40
# monitor -> (the argbest of a history, a learning rate at which the run peaks early)
CASES = {
    "val/clip_loss": (np.argmin, 3e-3),  # minimised
    "val/top5": (np.argmax, 1e-2),  # maximised
}


def _cfg(monitor: str) -> FitConfig:
    train = TrainConfig(
        monitor=monitor,
        lr=CASES[monitor][1],
        max_epochs=MAX_EPOCHS,
        patience=PATIENCE,
        batch_size=16,
    )
    return FitConfig(model=SMALL_BRAIN, train=train)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("monitor", sorted(CASES))
def test_stops_after_patience_epochs_and_restores_the_best_epochs_weights(monitor: str) -> None:
    data = overfitting_run()
    trainer = Trainer(_cfg(monitor), data)
    after_epoch = []  # (model, loss) state after every epoch, before any restore
    while not trainer.done:
        trainer.step()
        after_epoch.append(
            (copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.loss_fn.state_dict()))
        )
    values = np.array([row[monitor] for row in trainer.history])
    argbest = CASES[monitor][0]
    best = int(argbest(values))
    # the run improves, then gets worse: the best epoch is neither the first nor the last
    assert 0 < best < len(values) - 1, values
    assert argbest(values[best:]) == 0 and values[best + 1 :].tolist() != [values[best]] * PATIENCE
    # it stops `patience` epochs after its best one, long before max_epochs
    assert len(values) == best + PATIENCE + 1 < MAX_EPOCHS

    result = trainer.finish()
    model_best, loss_best = after_epoch[best]
    assert _same(result.model.state_dict(), model_best)
    assert _same(result.loss.state_dict(), loss_best)
    assert not _same(result.model.state_dict(), after_epoch[-1][0])
    assert result.metrics["best_epoch"] == best and result.metrics["epochs"] == len(values)
    assert result.metrics[monitor] == values[best]

    # `fit`, the loop of the CLI and the window curves, stops and restores the same way
    alone = fit(_cfg(monitor), data=data)
    assert alone.history == trainer.history
    assert _same(alone.model.state_dict(), model_best)
