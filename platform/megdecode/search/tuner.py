"""The Tuner of a search: OptunaSearch (TPE) behind a concurrency limit, ASHA or FIFO,
the console display, and the check that the searcher Tune saved is still Optuna.

`megdecode.search.driver.run_search` builds a new search with `build_tuner` (a resumed
one is restored by Tune from its folder) and calls `check_searcher` on `saved_trials`
after every search: Ray has had bugs where a restored search silently fell back to
random search. Ray, Tune and Optuna are imported where used, so importing this module
starts nothing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megdecode.search.space import SearchSpace
from megdecode.search.trial import trial_name

if TYPE_CHECKING:
    from megdecode.search.setup import SearchSetup

logger = logging.getLogger(__name__)


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
            value, spread = (
                result.get(self.metric),
                result.get(self.metric.replace("_mean", "_std")),
            )
            shown = (
                f"{value:.3f}" + (f"±{spread:.3f}" if spread is not None else "")
                if value is not None
                else "-"
            )
            self.bar.step(
                f"{trial} {state} at epoch {result.get('epoch', 0)}: {self.metric.removesuffix('_mean')} {shown}"
            )

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


def build_tuner(
    setup: SearchSetup,
    space: SearchSpace,
    trainable: Any,
    concurrent: int,
    verbose: int,
    callbacks: list[Any],
) -> Any:
    """Optuna (TPE, define-by-run) behind a concurrency limit, ASHA on the per-epoch mean."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from megdecode.logs import quiet_console

    quiet_console()  # optuna configures its console logger at import

    metric = f"{space.metric}_mean"
    storage_path, filesystem = tune_storage(setup.storage or setup.out)
    searcher = OptunaSearch(
        space=space.define_by_run, metric=metric, mode=space.mode, seed=setup.sampler_seed
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=space.mode,
            num_samples=setup.num_samples or space.num_samples,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
            scheduler=(
                ASHAScheduler(
                    time_attr="epoch", max_t=space.max_epochs, grace_period=space.grace_period
                )
                if setup.scheduler == "asha"
                else FIFOScheduler()
            ),
            time_budget_s=setup.time_budget_s or space.time_budget_s,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            reuse_actors=setup.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=setup.experiment,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=setup.max_failures),
            progress_reporter=_reporter(space, metric),
            verbose=verbose,
        ),
    )


def tune_storage(where: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) of Tune's `RunConfig` for a folder or a URI.

    Why an explicit filesystem for a URI: Tune would otherwise build one from the URI alone,
    on AWS's endpoint; `megdecode.files` builds it on the environment's endpoint, with short
    timeouts, the same for the driver and (pickled) for the trials.
    """
    from megdecode import files

    if not files.is_uri(where):
        return str(Path(where).resolve()), None
    files.check_access(where)
    return files.resolve(where)[1], files.resolve(where)[0]


def _reporter(space: SearchSpace, metric: str) -> Any:
    """A narrow table: the searched keys (last name part) and mean±std of the metric."""
    from ray.tune import CLIReporter

    params = {p.key: p.key.split(".")[-1] for p in space.params}
    metrics = {
        "epoch": "epoch",
        metric: metric.replace("_mean", ""),
        metric.replace("_mean", "_std"): "±std",
        "test/top5_mean": "test/top5",
    }
    return CLIReporter(
        metric_columns=metrics,
        parameter_columns=params,
        max_report_frequency=30,
        sort_by_metric=True,
        max_column_length=16,
    )


def check_searcher(experiment_path: str | Path, trials: list[Any]) -> tuple[str, int]:
    """The searcher Tune saved must be Optuna, and its study must hold every trial's params.

    `trials`: Tune's trials (anything with .trial_id and .config), see `saved_trials`.
    Raises RuntimeError otherwise (a resumed search that fell back to random search).
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from megdecode import files

    searcher = OptunaSearch()
    state = [n for n in files.listdir(experiment_path) if n.startswith("searcher-state")]
    # Optuna restores from a local folder: a remote experiment's searcher files are fetched
    with files.local_copy(experiment_path, include=state) as local:
        searcher.restore_from_dir(str(local))  # RuntimeError when Tune saved no searcher
    study = getattr(searcher, "_ot_study", None)
    if study is None or not isinstance(study.sampler, optuna.samplers.TPESampler):
        raise RuntimeError(f"the searcher saved in {experiment_path} is not an Optuna TPE study")
    asked = [t.params for t in study.trials]
    for trial in trials:
        config = trial.config or {}
        if not any(all(_same(config.get(k), v) for k, v in params.items()) for params in asked):
            raise RuntimeError(
                f"trial {trial.trial_id} was not suggested by the Optuna study "
                "(did the restored search fall back to random search?)"
            )
    return f"{type(searcher).__name__}/{type(study.sampler).__name__}", len(study.trials)


def _same(a: Any, b: Any) -> bool:
    """Equal, up to the rounding of stepped floats (`search.space.ParamSpec.suggest`)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-6)
    return bool(a == b)


def saved_trials(experiment_path: str | Path) -> list[Any]:
    """Tune's trials as saved in the experiment state (what a resume would see), pending ones too.

    The ResultGrid cannot tell an interrupted trial: after an interrupt Tune stops the
    running trials and marks them TERMINATED in memory, after it has saved them as RUNNING.
    """
    from ray.tune import ExperimentAnalysis

    from megdecode import files

    if not files.is_uri(experiment_path):
        return list(ExperimentAnalysis(str(experiment_path)).trials)
    fs, inner = files.resolve(experiment_path)
    return list(ExperimentAnalysis(inner, storage_filesystem=fs).trials)
