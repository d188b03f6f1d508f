"""The research loop: Ray Tune + OptunaSearch (TPE) + ASHA over a search space, N seeds a trial.

`run_search` is what `jobs/tune.py` / `megdecode tune` call. It reads the epoch store once
(`tune_trial.SharedEpochs`), runs the Tuner (define-by-run Optuna space from
`search.SearchSpace`, ASHA on the per-epoch mean over seeds, a concurrency limit,
`num_samples` and a time budget), logs everything to MLflow from the driver
(`tune_mlflow.MlflowSearchCallback`), then writes the summary table (top configs vs ridge
and chance) and registers the best trial's best seed as ``megdecode-brain@champion``.

Fault tolerance:
- ``resume=True`` restores ``<out>/<experiment>`` with `Tuner.restore`: finished trials are
  kept (never re-run), unfinished ones restart (a trial has no mid-run checkpoint), errored
  ones stay failed unless ``retry_errored``. The setup of the interrupted search is read
  back from ``search.json``, so a resume trains the same space on the same data and logs
  to the same MLflow experiment, where trial runs are found again by trial id.
- After every search, `check_searcher` reloads the searcher Tune saved and requires an
  `OptunaSearch` whose study holds every trial's parameters: Ray has had bugs where a
  restored search silently fell back to random search.
- A trial that raises is retried ``max_failures`` times (`FailureConfig`), then marked
  FAILED in MLflow while the search goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from megdecode.search.mlflow import (
    SUMMARY_RUN,
    MlflowSearchCallback,
    final_metrics,
    summary_table,
    window_figure,
)
from megdecode.search.space import SearchSpace, load_space
from megdecode.search.trial import (
    SEEDS_FILE,
    SharedEpochs,
    TrialPlan,
    run_trial,
    trial_name,
)
from megdecode.tracking import browse_hint
from megdecode.train import FitConfig

logger = logging.getLogger(__name__)

SETUP_FILE = "search.json"


@dataclass(frozen=True)
class SearchSetup:
    """What defines a search; saved as ``<experiment>/search.json`` so `--resume` reuses it.

    None means "the space's value" (num_samples, time_budget_s, seeds, max_concurrent).
    """

    space: str
    data: str
    out: str
    experiment: str
    tracking_uri: str
    num_samples: int | None = None
    time_budget_s: float | None = None
    seeds: int | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    cpus_per_trial: int | None = None  # None: the cluster's CPUs / max_concurrent
    gpus_per_trial: float = 0.0
    sampler_seed: int = 0
    fail_trials: tuple[int, ...] = ()  # fault-injection drill, see `TrialPlan`
    scheduler: str = "asha"  # "asha" (early stopping on the per-epoch mean) | "fifo" (none: baselines)

    def __post_init__(self) -> None:
        if self.scheduler not in ("asha", "fifo"):
            raise ValueError(f"scheduler: expected 'asha' or 'fifo', got {self.scheduler!r}")

    @property
    def path(self) -> Path:
        return Path(self.out) / self.experiment

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / SETUP_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> SearchSetup:
        file = Path(path) / SETUP_FILE
        if not file.exists():
            raise FileNotFoundError(f"no {SETUP_FILE} in {path}: not a megdecode search folder, nothing to resume")
        raw = json.loads(file.read_text())
        return cls(**raw | {"fail_trials": tuple(raw.get("fail_trials", ()))})


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

    def text(self) -> str:
        lines = [self.summary.to_string(index=False), "",
                 f"trials: {self.counts}", f"searcher: {self.searcher} ({self.searcher_trials} trials in its study)",
                 f"tune experiment: {self.experiment_path}", f"mlflow: {self.tracking_uri} (experiment {self.experiment!r})",
                 f"summary: {self.summary_path}"]
        if self.best:
            lines.append(f"best: {self.best['trial']} seed {self.best['seed']} -> {self.best['bundle']}")
        if self.champion:
            lines.append(f"registered: {self.champion}")
        if self.experiment_id:
            lines.append(f"browse: {browse_hint(self.tracking_uri, self.experiment_id)}")
        if self.interrupted:
            lines.append(f"INTERRUPTED: resume with --resume --experiment {self.experiment} --out {self.experiment_path.parent}")
        return "\n".join(lines)


def latent_names(space: SearchSpace, base: FitConfig) -> list[str]:
    """Every latent a trial of this space can ask for (so the driver loads each once)."""
    names = {str(space.fixed.get("train.latent", base.train.latent))}
    for spec in space.params:
        if spec.key == "train.latent":
            names |= {str(c) for c in spec.choices}
    return sorted(names)


def latest_experiment(out: Path) -> str:
    """The most recently started search under `out` (for `--resume` without a name)."""
    found = sorted(Path(out).glob(f"*/{SETUP_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no search to resume under {out}")
    return found[-1].parent.name


def data_paths(data: Path) -> tuple[Path, Path]:
    """(store, latents_dir) of a run folder holding store/ and latents/, as absolute paths:
    trials run in their own trial folders, where a relative path would point elsewhere."""
    store, latents = Path(data).resolve() / "store", Path(data).resolve() / "latents"
    if not (store / "manifest.json").exists():
        raise FileNotFoundError(f"no epoch store at {store} (--data must be a run folder with store/ and latents/;"
                                " with `ray job submit --working-dir`, give an absolute path)")
    return store, latents


def run_search(setup: SearchSetup, resume: bool = False, address: str | None = None, top_k: int = 5,
               register: tuple[str, str] | None = ("megdecode-brain", "champion"), ridge: bool = True,
               retry_errored: bool = False, verbose: int | None = None, callbacks: Sequence[Any] = ()) -> SearchReport:
    """Run (or resume) one search; see the module docstring. Starts or attaches Ray.

    verbose: Tune's own console output (its status table every 30 s); None = 1 with ``-v``,
    else 0 and one line (or a progress bar on a terminal) per finished trial.

    callbacks: extra Tune callbacks for a new search (e.g. a benchmark's clock); a resumed
    search keeps the callbacks it was started with.
    """
    import ray
    from ray import tune

    from megdecode.raycluster import init_ray

    start = time.perf_counter()
    if resume:
        saved = SearchSetup.load(setup.path)
        if saved.tracking_uri != setup.tracking_uri:
            logger.warning("resume logs to the interrupted search's MLflow store %s, not %s",
                           saved.tracking_uri, setup.tracking_uri)
        setup = saved
    space = load_space(setup.space)
    seeds = tuple(range(setup.seeds or space.seeds))
    logger.info("search space %s: %d params, %d fixed, %d samples x %d seeds", space.name, len(space.params),
                len(space.fixed), setup.num_samples or space.num_samples, len(seeds))
    store, latents_dir = data_paths(Path(setup.data))
    base = FitConfig(store=str(store), latents_dir=str(latents_dir))
    plan = TrialPlan(base, dict(space.fixed), seeds, tuple(p.key for p in space.params),
                     device="cuda" if setup.gpus_per_trial > 0 else "cpu", fail_trials=frozenset(setup.fail_trials))
    concurrent = setup.max_concurrent or space.max_concurrent
    # Ray's new console output ignores `progress_reporter` and prints every trial's full
    # result; the classic table (`_reporter`) stays readable. Set RAY_AIR_NEW_OUTPUT=1 to undo.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    clock = _Clock(start)
    from megdecode.logs import verbose as verbose_logs

    verbose = (1 if verbose_logs() else 0) if verbose is None else verbose
    init_ray(address)
    cpus = setup.cpus_per_trial or max(1, int(ray.cluster_resources().get("CPU", 1)) // concurrent)
    plan = replace(plan, threads=cpus)
    clock.lap("start")
    shared = SharedEpochs.load(store, latents_dir, latent_names(space, base))
    trainable = tune.with_resources(tune.with_parameters(run_trial, shared=shared, plan=plan),
                                    {"cpu": cpus, "gpu": setup.gpus_per_trial})
    clock.lap("load")
    logger.info("epochs loaded once for all trials: %.1f MB in %.1f s", shared.nbytes / 1e6, clock.seconds["load"])
    mlflow_callback = None
    if resume:
        if not tune.Tuner.can_restore(str(setup.path)):
            raise FileNotFoundError(f"no Tune experiment state in {setup.path} to resume")
        logger.info("resuming %s", setup.path)
        tuner = tune.Tuner.restore(str(setup.path), trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=retry_errored)
    else:
        if (setup.path / "tuner.pkl").exists():
            raise FileExistsError(f"{setup.path} already holds a search; pass --resume or another --experiment")
        setup.save()
        tags = {"megdecode.space": space.name, "megdecode.space_path": str(setup.space),
                "megdecode.experiment_path": str(setup.path)}  # the Tracker adds git commit, dataset sha256
        mlflow_callback = MlflowSearchCallback(setup.tracking_uri, setup.experiment, plan, tags)
        shown = [] if verbose else [trial_progress(setup.num_samples or space.num_samples, f"{space.metric}_mean")]
        tuner = _new_tuner(setup, space, trainable, concurrent, verbose, [mlflow_callback, *shown, *callbacks])
    results = tuner.fit()
    clock.lap("tune")
    if mlflow_callback is not None:
        clock.seconds["mlflow"] = mlflow_callback.seconds
    trials = saved_trials(setup.path)
    searcher_name, searcher_trials = check_searcher(setup.path, trials)
    clock.lap("check")
    return _report(setup, space, plan, shared, results, trials, clock, resume, top_k, register, ridge,
                   searcher_name, searcher_trials)


def trial_progress(total: int, metric: str) -> Any:
    """A Tune callback that shows each finished trial (a class made here: Tune is imported lazily)."""
    from ray import tune

    from megdecode.logs import StageProgress

    class _TrialProgress(tune.Callback):
        """The search's one progress display in quiet mode: a bar on a terminal, else a line
        per finished, stopped or failed trial with its metric, so the status tables can go."""

        def __init__(self, total: int, metric: str) -> None:
            self.metric, self.bar = metric, StageProgress("trials", total, logger)

        def _show(self, trial: Any, state: str) -> None:
            result = dict(trial.last_result or {})
            value, spread = result.get(self.metric), result.get(self.metric.replace("_mean", "_std"))
            shown = f"{value:.3f}" + (f"±{spread:.3f}" if spread is not None else "") if value is not None else "-"
            self.bar.step(f"{trial} {state} at epoch {result.get('epoch', 0)}: {self.metric.removesuffix('_mean')} {shown}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._show(trial, "finished" if result_final(trial) else "stopped")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._show(trial, "FAILED")

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.bar.close()

    return _TrialProgress(total, metric)


def result_final(trial: Any) -> bool:
    """Whether a trial ran to its end (its last report is the final one), not stopped by ASHA."""
    return bool((trial.last_result or {}).get("final"))


class _Clock:
    """Seconds per phase of a search, measured on the driver (`SearchReport.timings`)."""

    def __init__(self, start: float) -> None:
        self._last = start
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def _new_tuner(setup: SearchSetup, space: SearchSpace, trainable: Any, concurrent: int, verbose: int,
               callbacks: list[Any]) -> Any:
    """Optuna (TPE, define-by-run) behind a concurrency limit, ASHA on the per-epoch mean."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from megdecode.logs import quiet_console

    quiet_console()  # optuna configures its console logger at import

    metric = f"{space.metric}_mean"
    searcher = OptunaSearch(space=space.define_by_run, metric=metric, mode=space.mode, seed=setup.sampler_seed)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=metric, mode=space.mode, num_samples=setup.num_samples or space.num_samples,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
            scheduler=(ASHAScheduler(time_attr="epoch", max_t=space.max_epochs, grace_period=space.grace_period)
                       if setup.scheduler == "asha" else FIFOScheduler()),
            time_budget_s=setup.time_budget_s or space.time_budget_s,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name, reuse_actors=True),
        run_config=tune.RunConfig(
            name=setup.experiment, storage_path=str(Path(setup.out).resolve()),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=setup.max_failures),
            progress_reporter=_reporter(space, metric), verbose=verbose),
    )


def _reporter(space: SearchSpace, metric: str) -> Any:
    """A narrow table: the searched keys (last name part) and mean±std of the metric."""
    from ray.tune import CLIReporter

    params = {p.key: p.key.split(".")[-1] for p in space.params}
    metrics = {"epoch": "epoch", metric: metric.replace("_mean", ""), metric.replace("_mean", "_std"): "±std",
               "test/top5_mean": "test/top5"}
    return CLIReporter(metric_columns=metrics, parameter_columns=params, max_report_frequency=30,
                       sort_by_metric=True, max_column_length=16)


def check_searcher(experiment_path: Path, trials: list[Any]) -> tuple[str, int]:
    """The searcher Tune saved must be Optuna, and its study must hold every trial's params.

    `trials`: Tune's trials (anything with .trial_id and .config), see `saved_trials`.
    Raises RuntimeError otherwise (a resumed search that fell back to random search).
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(experiment_path))  # RuntimeError when Tune saved no searcher
    study = getattr(searcher, "_ot_study", None)
    if study is None or not isinstance(study.sampler, optuna.samplers.TPESampler):
        raise RuntimeError(f"the searcher saved in {experiment_path} is not an Optuna TPE study")
    asked = [t.params for t in study.trials]
    for trial in trials:
        config = trial.config or {}
        if not any(all(_same(config.get(k), v) for k, v in params.items()) for params in asked):
            raise RuntimeError(f"trial {trial.trial_id} was not suggested by the Optuna study "
                               "(did the restored search fall back to random search?)")
    return f"{type(searcher).__name__}/{type(study.sampler).__name__}", len(study.trials)


def _same(a: Any, b: Any) -> bool:
    """Equal, up to the rounding of stepped floats (`search.ParamSpec.suggest`)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-6)
    return bool(a == b)


def saved_trials(experiment_path: Path) -> list[Any]:
    """Tune's trials as saved in the experiment state (what a resume would see), pending ones too.

    The ResultGrid cannot tell an interrupted trial: after an interrupt Tune stops the
    running trials and marks them TERMINATED in memory, after it has saved them as RUNNING.
    """
    from ray.tune import ExperimentAnalysis

    return list(ExperimentAnalysis(str(experiment_path)).trials)


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
        row = {"trial": Path(result.path).name, "trial_id": trial_id, "status": status,
               "epochs": metrics.get("epoch", 0), "checkpoint": result.checkpoint}
        row |= {k: (result.config or {}).get(k) for k in searched}
        row |= final_metrics(metrics)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["trial", "trial_id", "status", "epochs", "checkpoint"])


def trial_runs(tracker: Any) -> dict[str, str]:
    """trial id -> parent run id, for every trial run of the experiment (read-only)."""
    from megdecode.tracking import TAG_KIND, TAG_TRIAL

    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{TAG_KIND}` = 'trial'", max_results=50000)
    return {r.data.tags[TAG_TRIAL]: r.info.run_id for r in runs}


def summary_run(tracker: Any, params: dict[str, Any]) -> str:
    """The experiment's one summary run (tag megdecode.kind=summary), reopened on resume."""
    from megdecode.tracking import TAG_KIND

    found = tracker.client.search_runs([tracker.experiment_id], f"tags.`{TAG_KIND}` = 'summary'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        tracker.client.update_run(run_id, status="RUNNING")
    else:
        run_id = tracker.client.create_run(tracker.experiment_id, run_name=SUMMARY_RUN, tags={TAG_KIND: "summary"}).info.run_id
        for key, value in params.items():
            tracker.client.log_param(run_id, key, str(value))
    return run_id


def _local_dir(checkpoint: Any) -> Path:
    """A local folder with the checkpoint's files (a copy when the storage is remote)."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(checkpoint.path)
    return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="megdecode-champion-")))


def _report(setup: SearchSetup, space: SearchSpace, plan: TrialPlan, shared: SharedEpochs, results: Any,
            saved: list[Any], clock: _Clock, resumed: bool, top_k: int, register: tuple[str, str] | None,
            ridge: bool, searcher_name: str, searcher_trials: int) -> SearchReport:
    """Summary table, MLflow summary run, champion registration, files on disk."""
    from megdecode.evaluation.baseline import ridge_table
    from megdecode.tracking import Tracker

    tracker = Tracker(setup.tracking_uri, setup.experiment)
    statuses = {t.trial_id: str(t.status) for t in saved}
    trials = _trial_rows(results, statuses, plan)
    runs = trial_runs(tracker)  # a trial still pending when the search was interrupted has none
    trials["run_id"] = [runs.get(trial_id, "") for trial_id in trials["trial_id"]]
    metric_col = f"{space.metric}_mean"
    finished = trials[trials["status"] == "FINISHED"] if len(trials) else trials
    ridge_frame = ridge_table(shared.run_data(plan.fit_config({}, plan.seeds[0]))) if ridge and len(finished) else None
    summary = summary_table(finished, ridge_frame, metric_col, ascending=space.mode == "min", top_k=top_k)
    interrupted = any(status not in ("TERMINATED", "ERROR") for status in statuses.values())
    for row in trials[(trials["status"] == "UNFINISHED") & (trials["run_id"] != "")].itertuples():
        tracker.finish(row.run_id, {}, "KILLED")  # reopened by trial_run when the search resumes
    best, champion = None, None
    if len(finished):
        top = finished.sort_values(metric_col, ascending=space.mode == "min").iloc[0]
        folder = _local_dir(top["checkpoint"])
        seed = json.loads((folder / SEEDS_FILE).read_text())["best_seed"]
        best = {"trial": top["trial"], "trial_id": top["trial_id"], "run_id": top["run_id"], "seed": seed,
                "bundle": folder / f"seed{seed}", "metrics": {k: top[k] for k in top.index if "/" in k}}
        if register and not interrupted:
            tracker.register_bundle(top["run_id"], best["bundle"], register[0], register[1])
            champion = f"models:/{register[0]}@{register[1]}"
    summary_path = setup.path / ("summary-interrupted.txt" if interrupted else "summary.txt")
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    report = SearchReport(setup.experiment, setup.tracking_uri, setup.path,
                          trials.drop(columns=["checkpoint"]) if len(trials) else trials, summary,
                          summary_path, best, champion, searcher_name, searcher_trials, resumed,
                          interrupted, 0.0, {str(k): int(v) for k, v in counts.items()}, clock.seconds,
                          tracker.experiment_id)
    summary_path.write_text(report.text() + "\n")
    report.trials.to_csv(setup.path / "trials.csv", index=False)
    run_id = summary_run(tracker, {"space": space.name, "seeds": len(plan.seeds), "experiment_path": str(setup.path)})
    tracker.log_table(run_id, summary, "summary.csv")
    tracker.log_artifacts(run_id, summary_path, "summary")
    figure = window_figure(finished, plan, setup.path / "window_curve.png")
    if figure is not None:
        tracker.log_artifacts(run_id, figure, "figures")
    tracker.finish(run_id, {f"best/{k}": float(v) for k, v in (best or {}).get("metrics", {}).items()}, "FINISHED")
    clock.lap("report")
    report.seconds = sum(v for k, v in clock.seconds.items() if k != "mlflow")
    return report
