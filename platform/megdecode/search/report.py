"""What a search leaves behind: trial rows, the summary table, the champion, and where they are.

`write_report` runs once the Tuner has returned (or been interrupted): one row per trial
with its status and final metrics (`trials.csv`), the top configs against ridge on the
space's base window and chance (`summary.txt`, ``summary-interrupted.txt`` while trials
are unfinished), the window figure when the space searches the window (both built in
`megdecode.search.summary`), all of it logged
to the experiment's one summary run in MLflow, and the best trial's best seed registered
as the champion unless the search was interrupted.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from megdecode.logs import PhaseClock
from megdecode.search.mlflow import final_metrics
from megdecode.search.space import SearchSpace, fit_config
from megdecode.search.summary import summary_table, window_figure
from megdecode.search.trial import SEEDS_FILE, TrialPlan
from megdecode.tracking import browse_hint

if TYPE_CHECKING:
    from megdecode.search.setup import SearchSetup
    from megdecode.search.streamed import EpochSource

logger = logging.getLogger(__name__)

SUMMARY_RUN = "search-summary"  # name of the run that holds the summary table


@dataclass
class SearchReport:
    """What a search produced and where it lives."""

    experiment: str
    tracking_uri: str
    experiment_path: Path
    trials: pd.DataFrame  # one row per trial: trial, trial_id, run_id, status, params, metrics
    summary: pd.DataFrame  # the printed table (strings "mean±std")
    summary_path: Path
    best: dict[str, Any] | None  # trial, trial_id, run_id, seed, bundle, metrics
    champion: str | None  # "models:/<name>@<alias>"
    searcher: str
    searcher_trials: int
    resumed: bool
    interrupted: bool  # some trials are unfinished: resume the search to finish them
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    # where the search's seconds went on the driver: start (setup, Ray start/attach), load (the store
    # through Ray Data, once), tune (Tuner.fit: the trials), mlflow (the callback's share
    # of `tune`, new searches only), check (searcher check), report (summary, registry)
    timings: dict[str, float] = field(default_factory=dict)
    experiment_id: str = ""  # MLflow's id of `experiment`, for the browse hint
    epochs: str = "shared"  # how the trials got their epochs: "shared" or "stream"

    def text(self) -> str:
        lines = [
            self.summary.to_string(index=False),
            "",
            f"trials: {self.counts}",
            f"searcher: {self.searcher} ({self.searcher_trials} trials in its study)",
            f"epochs: {self.epochs} ("
            + (
                "streamed from the store by every trial"
                if self.epochs == "stream"
                else "shared through the object store"
            )
            + ")",
            f"tune experiment: {self.experiment_path}",
            f"mlflow: {self.tracking_uri} (experiment {self.experiment!r})",
            f"summary: {self.summary_path}",
        ]
        if self.best:
            lines.append(
                f"best: {self.best['trial']} seed {self.best['seed']} -> {self.best['bundle']}"
            )
        if self.champion:
            lines.append(f"registered: {self.champion}")
        if self.experiment_id:
            lines.append(f"browse: {browse_hint(self.tracking_uri, self.experiment_id)}")
        if self.interrupted:
            lines.append(
                f"INTERRUPTED: resume with --resume --experiment {self.experiment} --out {self.experiment_path.parent}"
            )
        return "\n".join(lines)


def _trial_rows(results: Any, statuses: dict[str, str], plan: TrialPlan) -> pd.DataFrame:
    """One row per trial: FINISHED (test metrics, bundles), FAILED, EARLY_STOPPED (by ASHA),
    UNFINISHED (interrupted: a resume reruns it)."""
    rows = []
    searched = list(plan.searched)
    for result in results:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1]
        saved = statuses.get(trial_id, "TERMINATED")
        if result.error or saved == "ERROR":
            status = "FAILED"
        elif saved != "TERMINATED":
            status = "UNFINISHED"
        else:
            status = "FINISHED" if metrics.get("final") else "EARLY_STOPPED"
        row = {
            "trial": Path(result.path).name,
            "trial_id": trial_id,
            "status": status,
            "epochs": metrics.get("epoch", 0),
            "checkpoint": result.checkpoint,
        }
        row |= {k: (result.config or {}).get(k) for k in searched}
        row |= final_metrics(metrics)
        rows.append(row)
    return pd.DataFrame(
        rows, columns=None if rows else ["trial", "trial_id", "status", "epochs", "checkpoint"]
    )


def trial_runs(tracker: Any) -> dict[str, str]:
    """trial id -> parent run id, for every trial run of the experiment (read-only)."""
    from megdecode.tracking import TAG_KIND, TAG_TRIAL

    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`{TAG_KIND}` = 'trial'", max_results=50000
    )
    return {r.data.tags[TAG_TRIAL]: r.info.run_id for r in runs}


def summary_run(tracker: Any, params: dict[str, Any]) -> str:
    """The experiment's one summary run (tag megdecode.kind=summary), reopened on resume."""
    from megdecode.tracking import TAG_KIND

    found = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`{TAG_KIND}` = 'summary'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        tracker.client.update_run(run_id, status="RUNNING")
    else:
        run_id = tracker.client.create_run(
            tracker.experiment_id, run_name=SUMMARY_RUN, tags={TAG_KIND: "summary"}
        ).info.run_id
        for key, value in params.items():
            tracker.client.log_param(run_id, key, str(value))
    return run_id


def champion_row(finished: pd.DataFrame, metric_col: str, mode: str) -> pd.Series:
    """The finished trial whose `metric_col` (a mean over seeds) is best in direction `mode`.

    A trial without a value (NaN) never wins; the first trial wins a tie.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode: expected 'max' or 'min', got {mode!r}")
    values = pd.to_numeric(finished[metric_col], errors="coerce")
    if values.isna().all():
        raise ValueError(f"no finished trial has a value of {metric_col}")
    return finished.loc[values.idxmin() if mode == "min" else values.idxmax()]


def _local_dir(checkpoint: Any) -> Path:
    """A local folder with the checkpoint's files (a copy when the storage is remote)."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(checkpoint.path)
    return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="megdecode-champion-")))


def write_report(
    setup: SearchSetup,
    space: SearchSpace,
    plan: TrialPlan,
    shared: EpochSource,
    results: Any,
    saved: list[Any],
    clock: PhaseClock,
    resumed: bool,
    top_k: int,
    register: tuple[str, str] | None,
    ridge: bool,
    searcher_name: str,
    searcher_trials: int,
    epochs: str = "shared",
) -> SearchReport:
    """Trial rows, summary table, champion registration, summary run, files on disk.

    `clock`: the search's phases so far; the time spent here is lapped as ``report``.
    """
    from megdecode.evaluation.baseline import ridge_table
    from megdecode.model_registry import register_bundle
    from megdecode.tracking import Tracker

    tracker = Tracker(setup.tracking_uri, setup.experiment)
    statuses = {t.trial_id: str(t.status) for t in saved}
    trials = _trial_rows(results, statuses, plan)
    runs = trial_runs(tracker)  # a trial still pending when the search was interrupted has none
    trials["run_id"] = [runs.get(trial_id, "") for trial_id in trials["trial_id"]]
    metric_col = f"{space.metric}_mean"
    finished = trials[trials["status"] == "FINISHED"] if len(trials) else trials
    base = fit_config(
        plan.base, plan.fixed, seed=plan.seeds[0], device=plan.device
    )  # the space's base window
    ridge_frame = ridge_table(shared.resident_run_data(base)) if ridge and len(finished) else None
    summary = summary_table(
        finished, ridge_frame, metric_col, ascending=space.mode == "min", top_k=top_k
    )
    interrupted = any(status not in ("TERMINATED", "ERROR") for status in statuses.values())
    for row in trials[(trials["status"] == "UNFINISHED") & (trials["run_id"] != "")].itertuples():
        tracker.finish(row.run_id, {}, "KILLED")  # reopened by trial_run when the search resumes
    best, champion = None, None
    if len(finished):
        top = champion_row(finished, metric_col, space.mode)
        folder = _local_dir(top["checkpoint"])
        seed = json.loads((folder / SEEDS_FILE).read_text())["best_seed"]
        best = {
            "trial": top["trial"],
            "trial_id": top["trial_id"],
            "run_id": top["run_id"],
            "seed": seed,
            "bundle": folder / f"seed{seed}",
            "metrics": {k: top[k] for k in top.index if "/" in k},
        }
        if register and not interrupted:
            register_bundle(tracker, top["run_id"], best["bundle"], register[0], register[1])
            champion = f"models:/{register[0]}@{register[1]}"
    summary_path = setup.path / ("summary-interrupted.txt" if interrupted else "summary.txt")
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    report = SearchReport(
        setup.experiment,
        setup.tracking_uri,
        setup.path,
        trials.drop(columns=["checkpoint"]) if len(trials) else trials,
        summary,
        summary_path,
        best,
        champion,
        searcher_name,
        searcher_trials,
        resumed,
        interrupted,
        0.0,
        {str(k): int(v) for k, v in counts.items()},
        experiment_id=tracker.experiment_id,
        epochs=epochs,
    )
    summary_path.write_text(report.text() + "\n")
    report.trials.to_csv(setup.path / "trials.csv", index=False)
    run_id = summary_run(
        tracker, {"space": space.name, "seeds": len(plan.seeds), "experiment_path": str(setup.path)}
    )
    tracker.log_table(run_id, summary, "summary.csv")
    tracker.log_artifacts(run_id, summary_path, "summary")
    figure = window_figure(finished, plan, setup.path / "window_curve.png")
    if figure is not None:
        tracker.log_artifacts(run_id, figure, "figures")
    tracker.finish(
        run_id,
        {f"best/{k}": float(v) for k, v in (best or {}).get("metrics", {}).items()},
        "FINISHED",
    )
    clock.lap("report")
    report.timings, report.seconds = clock.as_dict(), clock.total
    return report
