"""The champion a search registers is its best finished trial's best seed, in both directions.

Two small searches (real local Ray, real MLflow in tmp), one maximising
val/top5 and one minimising val/loss, each with FIFO scheduling so every trial finishes.
The expected champion is computed here from what MLflow holds: each finished trial's
mean over its seed runs of the search metric, the arg-best in the space's direction, then
that trial's best seed run; the registered bundle must be that seed's bundle in the
trial's Tune checkpoint (recorded seed and weights). A flipped `mode` anywhere (the
report's sort, the trial's seed choice) registers another trial or seed and fails here.

The data is `fixtures.overfit`'s synthetic run written as a store: there the trials learn
within three epochs and score apart; on the tiny twin every trial's val/top5 sits at chance
(4 validation images: always 1.0; with more, the same 0.25 for all), and every trial ties.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fixtures.overfit import write_overfitting_run
from megdecode.predict import load_model
from megdecode.search.driver import run_search
from megdecode.search.setup import SearchSetup

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]

SEEDS = 2
SPACE = """
name: champion-{mode}
seeds: 2
metric: {metric}
mode: {mode}
num_samples: 3
max_concurrent: 2
max_epochs: 3
grace_period: 3
fixed:
  train.latent: synthetic
  train.tmin: 0.0
  train.tmax: 0.4
  model.hidden_channels: 16
  model.merger_channels: 16
  model.fourier_freqs: 3
  model.projection_hidden: 16
  train.batch_size: 16
  train.patience: 5
params:
  model.depth: {{type: int, low: 1, high: 2}}
  train.lr: {{type: float, low: 1.0e-4, high: 3.0e-2, log: true}}
"""
METRICS = {"max": "val/top5", "min": "val/loss"}


@pytest.fixture(scope="module")
def learnable_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_overfitting_run(tmp_path_factory.mktemp("learnable_run"))


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", params=sorted(METRICS))
def search(
    request: pytest.FixtureRequest,
    learnable_run: Path,
    local_ray: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> SimpleNamespace:
    mode = request.param
    root = tmp_path_factory.mktemp(f"champion-{mode}")
    (root / "space.yaml").write_text(SPACE.format(mode=mode, metric=METRICS[mode]))
    setup = SearchSetup(
        space=str(root / "space.yaml"),
        data=str(learnable_run),
        out=str(root / "out"),
        experiment=f"champion-{mode}",
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        scheduler="fifo",
    )
    report = run_search(setup, ridge=False, verbose=0)
    return SimpleNamespace(mode=mode, metric=METRICS[mode], setup=setup, report=report)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _finished_trials(search: SimpleNamespace) -> dict[str, dict]:
    """parent run id -> {trial (its Tune folder), seeds: {seed: metric value}}, read from MLflow."""
    client = _client(search.setup.tracking_uri)
    experiment = client.get_experiment_by_name(search.setup.experiment).experiment_id
    trials = {}
    for parent in client.search_runs([experiment], "tags.`megdecode.kind` = 'trial'"):
        children = client.search_runs(
            [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        if parent.info.status == "FINISHED" and children:
            seeds = {
                int(c.data.tags["megdecode.seed"]): c.data.metrics[search.metric] for c in children
            }
            trials[parent.info.run_id] = {
                "trial": parent.data.tags["megdecode.trial"],
                "seeds": seeds,
            }
    return trials


def test_the_registered_champion_is_the_best_trials_best_seed(search: SimpleNamespace) -> None:
    from megdecode.model_registry import resolve_bundle

    trials = _finished_trials(search)
    assert len(trials) == 3 and all(len(t["seeds"]) == SEEDS for t in trials.values())
    means = {run_id: float(np.mean(list(t["seeds"].values()))) for run_id, t in trials.items()}
    best_of = min if search.mode == "min" else max
    top = best_of(means.values())
    assert top != (max if search.mode == "min" else min)(means.values()), (
        f"every trial scored {top}: this search cannot tell the best trial from the worst"
    )
    client = _client(search.setup.tracking_uri)
    version = client.get_model_version_by_alias("megdecode-brain", "champion")
    assert means[version.run_id] == pytest.approx(top, abs=1e-12), (search.mode, means)
    assert search.report.best["run_id"] == version.run_id

    seeds = trials[version.run_id]["seeds"]
    seed = best_of(sorted(seeds), key=lambda s: seeds[s])  # the first seed wins a tie
    checkpoint = search.setup.path / trials[version.run_id]["trial"] / "checkpoint_000000"
    folder, _ = resolve_bundle("models:/megdecode-brain@champion", search.setup.tracking_uri)
    model, bundle = load_model(folder)
    assert bundle.fit_config.flat["train.seed"] == seed
    expected, _ = load_model(checkpoint / f"seed{seed}")
    other, _ = load_model(checkpoint / f"seed{1 - seed}")
    state = model.state_dict()
    assert state.keys() == expected.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in expected.state_dict().items())
    assert not all(torch.equal(state[k], v) for k, v in other.state_dict().items())


def test_the_summary_ranks_trials_in_the_spaces_direction(search: SimpleNamespace) -> None:
    trials = _finished_trials(search)
    by_trial = {t["trial"]: float(np.mean(list(t["seeds"].values()))) for t in trials.values()}
    ranked = [c for c in search.report.summary["config"] if c in by_trial]
    assert sorted(ranked) == sorted(by_trial)
    values = [by_trial[c] for c in ranked]  # best first; trials that tie in either order
    assert values == sorted(values, reverse=search.mode == "max"), values
