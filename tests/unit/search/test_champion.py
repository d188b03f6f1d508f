"""Which trial and which seed a search registers, on hand-written values and a real trial's seeds.

The end-to-end check (real Tune, MLflow and registry, both directions) is
tests/integration/test_search_champion.py (slow); these run in the default suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures.configs import SMALL_BRAIN
from fixtures.overfit import LATENT, write_overfitting_run
from megdecode.rundata import load_run_data
from megdecode.search.report import champion_row
from megdecode.search.trial import SEEDS_FILE, TrialPlan, _finish, best_seed
from megdecode.train import Trainer
from megdecode.train_config import FitConfig, TrainConfig

TRIALS = pd.DataFrame(
    {
        "trial": ["a", "b", "c", "d"],
        "val/loss_mean": [2.1, 1.9, np.nan, 2.4],
        "val/top5_mean": [0.30, 0.55, np.nan, 0.20],
    }
)


@pytest.mark.parametrize(
    "metric, mode, expected",
    [
        ("val/top5_mean", "max", "b"),
        ("val/loss_mean", "min", "b"),
        ("val/top5_mean", "min", "d"),  # the direction, not the metric's name, decides
        ("val/loss_mean", "max", "d"),
    ],
)
def test_champion_is_the_best_mean_in_the_spaces_direction_and_nan_never_wins(
    metric: str, mode: str, expected: str
) -> None:
    # the worst trial first, so that "the first row" or "the first after sorting the wrong
    # way" are both wrong answers
    shuffled = TRIALS.iloc[[3, 2, 0, 1]]
    assert champion_row(shuffled, metric, mode)["trial"] == expected


def test_champion_refuses_an_unknown_mode_and_a_metric_no_trial_has() -> None:
    with pytest.raises(ValueError, match="mode"):
        champion_row(TRIALS, "val/top5_mean", "maximize")
    with pytest.raises(ValueError, match="no finished trial"):
        champion_row(TRIALS.iloc[[2]], "val/top5_mean", "max")


def test_best_seed_follows_the_mode_and_the_first_seed_wins_a_tie() -> None:
    seeds = [{"seed": s, "metrics": {"val/loss": v}} for s, v in ((0, 2.0), (1, 1.5), (2, 1.5))]
    assert best_seed(seeds, "val/loss", "min")["seed"] == 1
    assert best_seed(seeds, "val/loss", "max")["seed"] == 0
    with pytest.raises(ValueError, match="mode"):
        TrialPlan(FitConfig(), {}, (0,), mode="maximise")


def test_a_trial_picks_its_seed_on_the_search_metric_and_reports_it(tmp_path: Path) -> None:
    """A space that minimises train/loss: the final report carries train/loss_mean (Tune
    refuses a final result without the search metric) and the saved best seed is the one
    with the lowest train/loss of its best epoch, read here from each seed's history."""
    run = write_overfitting_run(tmp_path / "run")
    base = FitConfig(
        store=str(run / "store"),
        latents_dir=str(run / "latents"),
        model=SMALL_BRAIN,
        train=TrainConfig(latent=LATENT, tmin=0.0, tmax=0.4, max_epochs=2, batch_size=16),
    )
    data = load_run_data(base)
    trainers = [Trainer(base.replace(train=base.train.replace(seed=s)), data) for s in (0, 1, 2)]
    for trainer in trainers:
        while not trainer.done:
            trainer.step()
    final = _finish(trainers, tmp_path / "trial", "train/loss", "min")
    losses = {t.cfg.train.seed: t.history[t.best_epoch]["train/loss"] for t in trainers}
    assert len(set(losses.values())) == 3
    assert final["train/loss_mean"] == pytest.approx(np.mean(list(losses.values())))
    expected = min(losses, key=losses.__getitem__)
    saved = json.loads((tmp_path / "trial" / SEEDS_FILE).read_text())
    assert saved["best_seed"] == expected == final["best_seed"]
    assert (tmp_path / "trial" / f"seed{expected}" / "bundle.json").exists()
