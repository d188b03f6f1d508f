"""What a Tune trial runs: one config over N seeds in lockstep, on data shared by the node.

One trial = one flat config from the search space, trained for every seed of the space in
lockstep (`train.Trainer`, one epoch each per step), so the trial can report the mean and
standard deviation over seeds of every validation metric after every epoch: ASHA stops
and Optuna ranks on the *mean*. Seeds live inside the trial rather than in Tune's
`Repeater` because the Repeater cannot resume an interrupted search and hides the per-epoch
mean from the scheduler; here a resumed search sees whole trials only.

At the end of a trial each seed is scored on the test sets and saved as a model bundle in
the trial's checkpoint (``<experiment>/<trial>/checkpoint_000000/seed<s>/``), next to
``seeds.json`` (per-seed metrics and per-epoch history). Nothing in a trial talks to
MLflow: the driver-side callback of `megdecode.search.mlflow` is the only writer;
`megdecode.search.driver.run_search` drives the search.

Data: the trials share one read of the epoch store (`megdecode.search.shared.SharedEpochs`),
or each trial streams its epochs from the store (`megdecode.search.streamed.StreamedEpochs`)
when they do not fit the object store; a streaming trial's final report carries
``data/peak_meg_rows``, the most MEG rows one of its splits held at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megdecode.logs import PhaseClock
from megdecode.search.space import fit_config
from megdecode.search.streamed import EpochSource
from megdecode.train import RunResult, Trainer
from megdecode.train_config import FitConfig

logger = logging.getLogger(__name__)

SEEDS_FILE = "seeds.json"
CURVE = "curve/"  # prefix of the last epoch's values in a trial's final report


class InjectedFault(RuntimeError):
    """Raised on purpose by a fault-injection drill (`TrialPlan.fail_trials`)."""


@dataclass(frozen=True)
class TrialPlan:
    """What every trial shares besides the data: the base config, the space's fixed keys, the seeds.

    A seed's config is base, then `fixed`, then the trial's own keys, with the seed and the
    device: `search.space.fit_config`, the merge that `search.space_file.load_space` has already
    checked on the extremes of the space. The plan holds no `SearchSpace`, so a Tune worker
    imports neither the YAML nor the Optuna machinery (seconds of start-up per worker).

    fail_trials: fault-injection drill (tests, chaos checks): the trials numbered so (1-based,
    in creation order, as in their names ``trial_0003_...``) raise `InjectedFault` after
    their first epoch (unless it is their last) on every attempt, so that retries and
    failure handling can be exercised deterministically. Empty in normal use.
    """

    base: FitConfig
    fixed: dict[str, Any]
    seeds: tuple[int, ...]
    searched: tuple[str, ...] = ()  # the keys the space searches (for tables and figures)
    device: str = "cpu"
    threads: int = 1  # torch threads of a trial = the CPUs Tune reserved for it
    fail_trials: frozenset[int] = field(default_factory=frozenset)
    # the space's metric and direction: a trial's best seed is the one the search would pick
    metric: str = "val/top5"
    mode: str = "max"

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode: expected 'max' or 'min', got {self.mode!r}")


def trial_name(trial: Any) -> str:
    """``trial_0003_<id>``: creation order first, so names sort and the reporter stays narrow."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return (
        f"trial_{int(number):04d}_{trial.trial_id}"
        if number.isdigit()
        else f"trial_{trial.trial_id}"
    )


def trial_number(name: str) -> int | None:
    parts = name.split("_")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "trial" and parts[1].isdigit() else None


def seed_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    """{key_mean, key_std} over seeds for every numeric key; std is the sample std (ddof=1)."""
    out: dict[str, float] = {}
    for key in rows[0]:
        values = np.array([float(r[key]) for r in rows if key in r], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def _current_row(trainer: Trainer) -> dict[str, float]:
    """This epoch's row, or the best epoch's row once the seed has stopped (the model it keeps)."""
    row = (
        trainer.history[trainer.best_epoch]
        if trainer.done and trainer.best_epoch >= 0
        else trainer.history[-1]
    )
    return {k: v for k, v in row.items() if k != "epoch"}


def run_trial(config: dict[str, Any], shared: EpochSource, plan: TrialPlan) -> None:
    """The Tune trainable: every seed in lockstep, one report per epoch, bundles at the end.

    Reports {epoch, <metric>_mean, <metric>_std} after every epoch (ASHA's time attribute
    is ``epoch``); the last report also carries the final metrics, the checkpoint and
    where the trial's time went (`TIMING` keys, see `timing_metrics`).
    """
    from ray import tune

    start_at, clock = time.time(), PhaseClock(*TRIAL_PHASES)
    name = tune.get_context().get_trial_name()
    torch.set_num_threads(plan.threads)
    cfgs = [
        fit_config(plan.base, plan.fixed, config, seed=seed, device=plan.device)
        for seed in plan.seeds
    ]
    data = shared.run_data(cfgs[0])
    trainers = [Trainer(cfg, data) for cfg in cfgs]
    clock.lap("setup")
    epoch = 0
    while True:
        for trainer in trainers:
            if not trainer.done:
                trainer.step()
        epoch += 1
        clock.lap("epochs")
        metrics: dict[str, Any] = {
            "epoch": epoch,
            **seed_stats([_current_row(t) for t in trainers]),
        }
        if not all(t.done for t in trainers):
            tune.report(
                metrics
            )  # blocks until the driver has taken the result (Tune's function API)
            clock.lap("report")
            if trial_number(name) in plan.fail_trials:
                raise InjectedFault(
                    f"{name}: fault injected after epoch {epoch} (TrialPlan.fail_trials)"
                )
            continue
        # The last epoch and the final metrics share one report: ASHA stops a trial that
        # reaches max_t on that epoch's report, so a later report would never arrive. The
        # final (best-epoch) values take the metric names Optuna and ASHA read; the last
        # epoch's own values ride along as curve/<name> for the per-epoch curves.
        curve = {f"{CURVE}{k}": v for k, v in metrics.items() if k != "epoch"}
        folder = Path(tempfile.mkdtemp(prefix="megdecode-trial-"))
        try:
            final = _finish(trainers, folder, plan.metric, plan.mode) | {"epoch": epoch} | curve
            clock.lap("finish")
            tune.report(
                final | timing_metrics(clock, start_at) | {NODE_ID: node_id()} | peak_rows(data),
                checkpoint=tune.Checkpoint.from_directory(str(folder)),
            )
        finally:  # report() has copied the checkpoint to the experiment's storage
            shutil.rmtree(folder, ignore_errors=True)
        return


PEAK_ROWS = "data/peak_meg_rows"


def peak_rows(data: Any) -> dict[str, float]:
    """{PEAK_ROWS: the most MEG rows a streamed split held at once}; {} for in-memory data."""
    splits = (data.train, data.val, data.test)
    if not all(hasattr(s, "peak_rows") for s in splits):
        return {}
    return {PEAK_ROWS: float(max(int(s.peak_rows) for s in splits))}


NODE_ID = "node_id"  # the Ray node that ran the trial (Tune's node_ip is the same for two
# nodes of one machine), in the final report


def node_id() -> str:
    """The Ray node id of this process (hex)."""
    import ray

    return str(ray.get_runtime_context().get_node_id())


TIMING = "timing/"  # prefix of a trial's timing keys in its final report


TRIAL_PHASES = ("setup", "epochs", "report", "finish")


def timing_metrics(clock: PhaseClock, start_at: float) -> dict[str, float]:
    """Where a trial's seconds went, as keys of its final report (``timing/*``).

    Phases (seconds, `TRIAL_PHASES`): ``setup`` (configs, window views, models and
    optimisers), ``epochs`` (training and validation of every seed), ``report`` (blocked in
    `tune.report` until the driver has processed the epoch: Tune's function API reports
    synchronously), ``finish`` (test sets and bundles). Instants (Unix time):
    ``process_start_at`` (the worker process was created; absent off Linux) and
    ``start_at`` (`start_at`: the trainable was entered, so imports and the object-store
    get of the shared data are done). The driver's own clock (trial added, trial complete)
    turns these into actor start + imports, and the cost of the last report (checkpoint
    upload) and of the driver's completion work.
    """
    out = {f"{TIMING}{k}_s": v for k, v in clock.as_dict().items()}
    out[f"{TIMING}start_at"] = start_at
    started = process_start_time()
    if started is not None:
        out[f"{TIMING}process_start_at"] = started
    return out


def process_start_time() -> float | None:
    """When this process was created (Unix time, ~10 ms resolution); None without Linux's /proc."""
    try:
        ticks = int(
            Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]
        )  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


def seed_metrics(result: RunResult) -> dict[str, float]:
    """A finished seed's metrics with every per-epoch metric of its best epoch (train/* too).

    The search metric may be any per-epoch metric (`search.space.EPOCH_METRICS`); the final
    report must carry it, or Tune refuses the result and Optuna cannot rank the trial.
    """
    best = result.history[int(result.metrics["best_epoch"])]
    return {k: float(v) for k, v in best.items() if k != "epoch"} | result.metrics


def best_seed(seeds: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """The seed whose `metric` is best in direction `mode`; the first seed wins a tie.

    Chosen on the search's own metric (a per-epoch one: validation or training, never test),
    so a search that minimises a loss registers its lowest-loss seed.
    """
    pick = min if mode == "min" else max
    return pick(seeds, key=lambda s: s["metrics"][metric])


def _finish(trainers: list[Trainer], folder: Path, metric: str, mode: str) -> dict[str, float]:
    """Test every seed and save its bundle in `folder`; mean/std of the final metrics.

    The trial's best seed is the best on the search's `metric` in direction `mode`.
    """
    seeds: list[dict[str, Any]] = []
    for trainer in trainers:
        seed = trainer.cfg.train.seed
        result = trainer.finish(folder / f"seed{seed}")
        seeds.append(
            {
                "seed": seed,
                "metrics": seed_metrics(result),
                "history": result.history,
                "bundle": f"seed{seed}",
            }
        )
    best = best_seed(seeds, metric, mode)
    (folder / SEEDS_FILE).write_text(
        json.dumps({"best_seed": best["seed"], "seeds": seeds}, default=float)
    )
    return seed_stats([s["metrics"] for s in seeds]) | {
        "best_seed": float(best["seed"]),
        "final": 1.0,
    }
