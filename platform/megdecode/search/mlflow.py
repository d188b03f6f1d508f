"""MLflow logging of a Tune search, from the driver only.

Trials never touch MLflow: with a SQLite store only one process may write, and a trial
that is retried or resumed must not leave a second run behind. `MlflowSearchCallback`
runs in the Tune driver and maps Tune events onto `megdecode.tracking.Tracker`:

- trial start -> the trial's parent run (`Tracker.trial_run` is idempotent by trial id,
  so a retried or resumed trial finds its run instead of opening a new one); params =
  the flat FitConfig, tags = git commit, dataset checksum, search space, trial name;
- every result -> per-epoch metrics (mean and std over seeds) at step = epoch; epochs
  already logged are skipped, since a retried trial replays its epochs from the start;
- completion -> one child run per seed (metrics + per-epoch history), the final metrics
  (mean and std over seeds), the per-seed table and the best seed's bundle as artifacts;
  a trial stopped early by ASHA has no test metrics and is tagged as such;
- error (after the retries of `FailureConfig`) -> the run is marked FAILED with the error.

The writes run in one background thread, in the order of the events. Tune's function API
reports synchronously: a trial waits in `tune.report` until the driver has run every
callback on its result, so SQLite writes made in the callback itself would stall every
epoch of every trial (and a finished trial's child runs and bundle upload would delay the
next trial's start). `MlflowSearchCallback.flush` waits for the queue; Tune's experiment
checkpoints and the end of the experiment flush it, so the saved state never runs ahead
of MLflow, and a write that failed is raised there (or at the next event).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import tune

from megdecode.search.space import fit_config
from megdecode.search.trial import CURVE, SEEDS_FILE, TIMING, TrialPlan

logger = logging.getLogger(__name__)

EPOCH_PREFIXES = ("val/", "train/", "temperature")


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """This epoch's point of every curve (val/*, train/*, temperature; mean and std).

    A trial's final result holds the final metrics under the plain names and its last
    epoch's values under curve/<name>; those are the curve points then.
    """
    curve = {k.removeprefix(CURVE): v for k, v in result.items() if k.startswith(CURVE)}
    return {
        k: float(v)
        for k, v in (curve or result).items()
        if k.startswith(EPOCH_PREFIXES) and isinstance(v, int | float) and not isinstance(v, bool)
    }


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Every numeric metric of a trial's final result except Tune's own bookkeeping."""
    skip = {
        "done",
        "training_iteration",
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "iterations_since_restore",
        "pid",
    }
    return {
        k: float(v)
        for k, v in result.items()
        if k not in skip
        and not k.startswith(CURVE)
        and not (k.startswith(TIMING) and k.endswith("_at"))  # instants, not metrics
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and np.isfinite(v)
    }


class MlflowSearchCallback(tune.Callback):
    """Writes one search to one MLflow experiment; see the module docstring.

    Pickled into the experiment (Tune saves its callbacks), so it holds only names and
    the plan; the `Tracker` and the writer thread are rebuilt lazily in whichever driver
    resumes the search. `seconds`: time spent writing to MLflow (in the writer thread).
    """

    def __init__(
        self, tracking_uri: str, experiment: str, plan: TrialPlan, tags: dict[str, str]
    ) -> None:
        self.tracking_uri, self.experiment, self.plan, self.tags = (
            tracking_uri,
            experiment,
            plan,
            tags,
        )
        self._tracker: Any = None
        self._runs: dict[str, str] = {}
        self._logged: dict[str, int] = {}
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self.seconds = 0.0

    def __getstate__(self) -> dict[str, Any]:
        self.flush()
        return self.__dict__ | {"_tracker": None, "_writer": None, "_pending": [], "seconds": 0.0}

    def __setstate__(
        self, state: dict[str, Any]
    ) -> None:  # also reads callbacks pickled before the writer
        self.__dict__.update({"_writer": None, "_pending": [], "seconds": 0.0} | state)

    @property
    def tracker(self) -> Any:
        if self._tracker is None:
            from megdecode.tracking import Tracker

            self._tracker = Tracker(self.tracking_uri, self.experiment)
        return self._tracker

    def _submit(self, write: Callable[..., object], *args: Any) -> None:
        """Queue `write(*args)` on the writer thread; raise a failure of an earlier write."""
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="megdecode-mlflow")
        self._pending.append(self._writer.submit(self._timed, write, *args))

    def _timed(self, write: Callable[..., object], *args: Any) -> None:
        start = time.perf_counter()
        try:
            write(*args)
        finally:
            self.seconds += time.perf_counter() - start

    def flush(self) -> None:
        """Wait until every queued write is in MLflow; re-raise the first that failed."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def get_state(self) -> dict[str, Any]:
        self.flush()  # the state Tune saves must not claim epochs MLflow does not hold yet
        return {"runs": dict(self._runs), "logged": dict(self._logged)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._runs.update(state.get("runs", {}))
        self._logged.update(state.get("logged", {}))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def trial_params(self, config: dict[str, Any]) -> dict[str, Any]:
        """The flat FitConfig of the trial (train.seed dropped: it is per child run) + seeds."""
        plan = self.plan
        flat = fit_config(
            plan.base, plan.fixed, config, seed=plan.seeds[0], device=plan.device
        ).to_flat_dict()
        flat.pop("train.seed")
        return flat | {"seeds": json.dumps(list(self.plan.seeds))}

    def run_id(self, trial_id: str, config: dict[str, Any], name: str) -> str:
        """The trial's parent run (opened on first use); call it on the writer thread."""
        if trial_id not in self._runs:
            tags = self.tags | {"megdecode.trial": name, "megdecode.kind": "trial"}
            self._runs[trial_id] = self.tracker.trial_run(trial_id, self.trial_params(config), tags)
        return self._runs[trial_id]

    @staticmethod
    def _key(trial: Any) -> tuple[str, dict[str, Any], str]:
        """What `run_id` needs, read now: the trial object changes while the write waits."""
        return trial.trial_id, dict(trial.config or {}), str(trial)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(self.run_id, *self._key(trial))

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        epoch = int(result.get("epoch", 0))
        if epoch <= self._logged.get(trial.trial_id, 0):
            return
        self._logged[trial.trial_id] = epoch
        self._submit(self._log_epoch, self._key(trial), epoch, epoch_metrics(result))

    def _log_epoch(
        self, key: tuple[str, dict[str, Any], str], epoch: int, metrics: dict[str, float]
    ) -> None:
        self.tracker.log_epoch(self.run_id(*key), epoch, metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(
            self._complete,
            self._key(trial),
            dict(trial.last_result or {}),
            trial.checkpoint,
            float(trial.num_failures),
        )

    def _complete(
        self,
        key: tuple[str, dict[str, Any], str],
        result: dict[str, Any],
        checkpoint: Any,
        num_failures: float,
    ) -> None:
        run_id = self.run_id(*key)
        if not result.get("final") or checkpoint is None:
            metrics = epoch_metrics(result) | {
                "epochs": float(result.get("epoch", 0)),
                "early_stopped": 1.0,
            }
            self.tracker.finish(run_id, metrics, "FINISHED")
            return
        with checkpoint.as_directory() as folder:
            seeds = json.loads((Path(folder) / SEEDS_FILE).read_text())
            for s in seeds["seeds"]:
                self.tracker.seed_run(
                    run_id, s["seed"], {"train.seed": s["seed"]}, s["metrics"], s["history"]
                )
            table = pd.DataFrame([{"seed": s["seed"]} | s["metrics"] for s in seeds["seeds"]])
            self.tracker.log_table(run_id, table, "seeds.csv")
            self.tracker.log_artifacts(run_id, Path(folder) / f"seed{seeds['best_seed']}", "bundle")
        self.tracker.finish(
            run_id, final_metrics(result) | {"num_failures": num_failures}, "FINISHED"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(self._error, self._key(trial), trial.error_file, float(trial.num_failures))

    def _error(
        self, key: tuple[str, dict[str, Any], str], error_file: str | None, num_failures: float
    ) -> None:
        run_id = self.run_id(*key)
        if error_file and Path(error_file).exists():
            self.tracker.log_artifacts(run_id, Path(error_file), "error")
        self.tracker.finish(run_id, {"num_failures": num_failures}, "FAILED")
