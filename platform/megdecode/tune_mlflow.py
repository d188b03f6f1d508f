"""MLflow logging of a Tune search, from the driver only, and the end-of-search summary.

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
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import tune

from megdecode.tune_trial import CURVE, SEEDS_FILE, TrialPlan

logger = logging.getLogger(__name__)

EPOCH_PREFIXES = ("val/", "train/", "temperature")
SUMMARY_RUN = "search-summary"  # name of the run that holds the summary table
# Columns of the summary table: (label, metric), each shown as mean±std over seeds.
SUMMARY_METRICS = (("val/top5", "val/top5"), ("test/top5", "test/top5"), ("test/top5_avg", "test/top5_avg"),
                   ("test_large/top5", "test_large/top5"), ("test/median_rank", "test/median_rank"))


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """This epoch's point of every curve (val/*, train/*, temperature; mean and std).

    A trial's final result holds the final metrics under the plain names and its last
    epoch's values under curve/<name>; those are the curve points then.
    """
    curve = {k.removeprefix(CURVE): v for k, v in result.items() if k.startswith(CURVE)}
    return {k: float(v) for k, v in (curve or result).items()
            if k.startswith(EPOCH_PREFIXES) and isinstance(v, int | float) and not isinstance(v, bool)}


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Every numeric metric of a trial's final result except Tune's own bookkeeping."""
    skip = {"done", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s",
            "time_since_restore", "iterations_since_restore", "pid"}
    return {k: float(v) for k, v in result.items() if k not in skip and not k.startswith(CURVE)
            and isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)}


class MlflowSearchCallback(tune.Callback):
    """Writes one search to one MLflow experiment; see the module docstring.

    Pickled into the experiment (Tune saves its callbacks), so it holds only names and
    the plan; the `Tracker` is rebuilt lazily in whichever driver resumes the search.
    """

    def __init__(self, tracking_uri: str, experiment: str, plan: TrialPlan, tags: dict[str, str]) -> None:
        self.tracking_uri, self.experiment, self.plan, self.tags = tracking_uri, experiment, plan, tags
        self._tracker: Any = None
        self._runs: dict[str, str] = {}
        self._logged: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_tracker": None}

    @property
    def tracker(self) -> Any:
        if self._tracker is None:
            from megdecode.tracking import Tracker

            self._tracker = Tracker(self.tracking_uri, self.experiment)
        return self._tracker

    def get_state(self) -> dict[str, Any]:
        return {"runs": dict(self._runs), "logged": dict(self._logged)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._runs.update(state.get("runs", {}))
        self._logged.update(state.get("logged", {}))

    def trial_params(self, config: dict[str, Any]) -> dict[str, Any]:
        """The flat FitConfig of the trial (train.seed dropped: it is per child run) + seeds."""
        flat = self.plan.fit_config(config, self.plan.seeds[0]).to_flat_dict()
        flat.pop("train.seed")
        return flat | {"seeds": json.dumps(list(self.plan.seeds))}

    def run_id(self, trial_id: str, config: dict[str, Any], name: str) -> str:
        if trial_id not in self._runs:
            tags = self.tags | {"megdecode.trial": name, "megdecode.kind": "trial"}
            self._runs[trial_id] = self.tracker.trial_run(trial_id, self.trial_params(config), tags)
        return self._runs[trial_id]

    def _run(self, trial: Any) -> str:
        return self.run_id(trial.trial_id, trial.config, str(trial))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch = int(result.get("epoch", 0))
        if epoch <= self._logged.get(trial.trial_id, 0):
            return
        self.tracker.log_epoch(self._run(trial), epoch, epoch_metrics(result))
        self._logged[trial.trial_id] = epoch

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id, result = self._run(trial), dict(trial.last_result or {})
        checkpoint = trial.checkpoint
        if not result.get("final") or checkpoint is None:
            metrics = epoch_metrics(result) | {"epochs": float(result.get("epoch", 0)), "early_stopped": 1.0}
            self.tracker.finish(run_id, metrics, "FINISHED")
            return
        with checkpoint.as_directory() as folder:
            seeds = json.loads((Path(folder) / SEEDS_FILE).read_text())
            for s in seeds["seeds"]:
                self.tracker.seed_run(run_id, s["seed"], {"train.seed": s["seed"]}, s["metrics"], s["history"])
            table = pd.DataFrame([{"seed": s["seed"]} | s["metrics"] for s in seeds["seeds"]])
            self.tracker.log_table(run_id, table, "seeds.csv")
            self.tracker.log_artifacts(run_id, Path(folder) / f"seed{seeds['best_seed']}", "bundle")
        self.tracker.finish(run_id, final_metrics(result) | {"num_failures": float(trial.num_failures)}, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run(trial)
        if trial.error_file and Path(trial.error_file).exists():
            self.tracker.log_artifacts(run_id, Path(trial.error_file), "error")
        self.tracker.finish(run_id, {"num_failures": float(trial.num_failures)}, "FAILED")


def _pm(mean: float, std: float) -> str:
    return "-" if not np.isfinite(mean) else f"{mean:.3f}±{std:.3f}"


def summary_table(trials: pd.DataFrame, ridge: pd.DataFrame | None, by: str = "val/top5_mean",
                  ascending: bool = False, top_k: int = 5) -> pd.DataFrame:
    """The top configs by `by` (the search metric's mean over seeds), then ridge and chance rows.

    `trials`: one row per finished trial with columns trial, the searched params, and
    `<metric>_mean` / `<metric>_std`; `ridge`: `compare.ridge_table` output (or None).
    Returns a frame of strings "mean±std" ready to print and log.
    """
    if not len(trials):
        return pd.DataFrame(columns=["rank", "config", *(label for label, _ in SUMMARY_METRICS)])
    top = trials.sort_values(by, ascending=ascending).head(top_k)
    param_cols = [c for c in trials.columns if c.startswith(("model.", "loss.", "train."))]
    rows = []
    for rank, (_, r) in enumerate(top.iterrows(), start=1):
        row = {"rank": str(rank), "config": r["trial"]} | {c: _short(r[c]) for c in param_cols}
        row |= {label: _pm(r.get(f"{m}_mean", np.nan), r.get(f"{m}_std", 0.0)) for label, m in SUMMARY_METRICS}
        rows.append(row)
    blank = {c: "" for c in param_cols} | {"val/top5": "-"}
    if ridge is not None:
        ref = ridge.set_index(["test_set", "mode"])
        rows.append({"rank": "", "config": "ridge (base window)"} | blank | {
            "test/top5": f"{ref.loc[('small', 'single'), 'top5']:.3f}",
            "test/top5_avg": f"{ref.loc[('small', 'averaged'), 'top5']:.3f}",
            "test_large/top5": f"{ref.loc[('large', 'single'), 'top5']:.3f}",
            "test/median_rank": f"{ref.loc[('small', 'single'), 'median_rank']:.3f}"})
    if len(top):
        best = top.iloc[0]
        chance = {k: f"{best.get(f'{k}/chance_top5_mean', np.nan):.3f}" for k in ("test", "test_large")}
        rows.append({"rank": "", "config": "chance"} | blank | {
            "test/top5": chance["test"], "test/top5_avg": chance["test"],
            "test_large/top5": chance["test_large"], "test/median_rank": "0.500"})
    return pd.DataFrame(rows).fillna("")


def window_figure(trials: pd.DataFrame, plan: TrialPlan, path: Path, metric: str = "test/top5") -> Path | None:
    """`metric` (mean±std over seeds) against each finished trial's window, when windows were searched."""
    from megdecode.windows import plot_window_curves

    keys = set(plan.searched)
    if not keys & {"train.tmin", "train.tmax"} or trials.empty:
        return None
    base = plan.fit_config({}, plan.seeds[0]).train
    table = pd.DataFrame({
        "tmin": trials["train.tmin"] if "train.tmin" in keys else base.tmin,
        "tmax": trials["train.tmax"] if "train.tmax" in keys else base.tmax,
        metric: trials[f"{metric}_mean"], f"{metric}_std": trials[f"{metric}_std"],
    }).astype(float)
    table["center"] = (table["tmin"] + table["tmax"]) / 2
    chance = float(trials[f"{metric.split('/')[0]}/chance_top5_mean"].iloc[0])
    return plot_window_curves(table, metric, chance, path, x="center",
                              title=f"{metric} by window (mean ± std over {len(plan.seeds)} seeds)")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
