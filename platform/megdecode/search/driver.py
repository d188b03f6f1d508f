"""The research loop: Ray Tune + OptunaSearch (TPE) + ASHA over a search space, N seeds a trial.

`run_search` is what `jobs/tune.py` / `megdecode tune` call. It reads the epoch store once
(`search.shared.SharedEpochs`), or, when the epochs exceed the object store budget (or
with ``epochs="stream"``), only its metadata, and each trial streams its epochs from the
store (`search.streamed.StreamedEpochs`, `search.epoch_memory.choose_epochs`); it runs the Tuner that `search.tuner.build_tuner` builds
(define-by-run Optuna space from `search.space.SearchSpace`, ASHA on the per-epoch mean
over seeds, a concurrency limit, `num_samples` and a time budget), logs everything to
MLflow from the driver (`search.mlflow.MlflowSearchCallback`), then hands over to
`search.report.write_report`: the summary table (top configs vs ridge and chance) and the
best trial's best seed registered as ``megdecode-brain@champion``.

Fault tolerance:
- ``resume=True`` restores ``<out>/<experiment>`` with `Tuner.restore`: finished trials are
  kept (never re-run), unfinished ones restart (a trial has no mid-run checkpoint), errored
  ones stay failed unless ``retry_errored``. The setup of the interrupted search is read
  back from ``search.json``, so a resume trains the same space on the same data and logs
  to the same MLflow experiment, where trial runs are found again by trial id. With a
  ``storage``, search.json is also kept next to Tune's state, so a driver with an empty
  ``out`` (a new Ray job, a new head node) resumes from the storage alone.
- After every search, `search.tuner.check_searcher` reloads the searcher Tune saved and
  requires an `OptunaSearch` whose study holds every trial's parameters: Ray has had bugs
  where a restored search silently fell back to random search.
- A trial that raises is retried ``max_failures`` times (`FailureConfig`), then marked
  FAILED in MLflow while the search goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from megdecode import files
from megdecode.logs import PhaseClock
from megdecode.rundata_stream import StreamConfig
from megdecode.search.mlflow import MlflowSearchCallback
from megdecode.search.report import SearchReport, write_report
from megdecode.search.setup import NothingToResumeError, SearchSetup
from megdecode.search.shared import SharedEpochs
from megdecode.search.space import SearchSpace
from megdecode.search.space_file import load_space
from megdecode.search.streamed import EpochSource, StreamedEpochs
from megdecode.search.trial import TrialPlan, run_trial
from megdecode.search.tuner import (
    build_tuner,
    check_searcher,
    saved_trials,
    trial_progress,
    tune_storage,
)
from megdecode.train_config import FitConfig

logger = logging.getLogger(__name__)


def latent_names(space: SearchSpace, base: FitConfig) -> list[str]:
    """Every latent a trial of this space can ask for (so the driver loads each once)."""
    names = {str(space.fixed.get("train.latent", base.train.latent))}
    for spec in space.params:
        if spec.key == "train.latent":
            names |= {str(c) for c in spec.choices}
    return sorted(names)


def data_paths(data: str | Path) -> tuple[str | Path, str | Path]:
    """(store, latents_dir) of a run folder holding store/ and latents/, as absolute paths
    (or URIs): trials run in their own trial folders, where a relative path would point
    elsewhere."""
    if files.is_uri(data):
        store_uri, latents_uri = files.join(data, "store"), files.join(data, "latents")
        if not files.exists(files.join(store_uri, "manifest.json")):
            raise FileNotFoundError(f"no epoch store at {store_uri} (--data: store/, latents/)")
        return store_uri, latents_uri
    store, latents = Path(data).resolve() / "store", Path(data).resolve() / "latents"
    if not (store / "manifest.json").exists():
        raise FileNotFoundError(
            f"no epoch store at {store} (--data must be a run folder with store/ and latents/;"
            " with `ray job submit --working-dir`, give an absolute path)"
        )
    return store, latents


def storage_paths(setup: SearchSetup, store: str | Path) -> dict[str, str | None]:
    """The places a search's workers read or write: the store, Tune's storage, MLflow artifacts."""
    from megdecode.tracking import Tracker

    artifacts = Tracker(setup.tracking_uri).artifact_root  # None: an MLflow server keeps them
    return {
        "epoch store": str(store),
        "Tune storage (--storage, else --out)": str(setup.tune_path),
        "MLflow artifacts": None if artifacts is None else str(artifacts),
    }


def check_cluster(setup: SearchSetup, store: str | Path) -> str:
    """Before the read and any trial: paths every node can see, and how the trials get their
    epochs: "shared" (they fit the object store budget) or "stream" (`setup.epochs`).

    Raises `SharedStorageError`, or `EpochsTooLargeError` (``epochs="shared"`` only), with
    what to change.
    """
    from megdecode.data.store import read_manifest
    from megdecode.search.cluster_storage import check_storage
    from megdecode.search.epoch_memory import choose_epochs

    check_storage(storage_paths(setup, store), setup.assume_shared_fs)
    return choose_epochs(
        read_manifest(store),
        setup.epochs,
        setup.max_object_store_fraction,
        setup.object_store_budget_bytes,
    )


def load_epochs(
    mode: str, setup: SearchSetup, store: str | Path, latents_dir: str | Path, latents: list[str]
) -> EpochSource:
    """The search's epochs: read once to share (mode "shared"), or planned to stream."""
    if mode == "shared":
        return SharedEpochs.load(store, latents_dir, latents)
    return StreamedEpochs.load(store, latents_dir, latents, StreamConfig(setup.stream_buffer_rows))


def run_search(
    setup: SearchSetup,
    resume: bool = False,
    address: str | None = None,
    top_k: int = 5,
    register: tuple[str, str] | None = ("megdecode-brain", "champion"),
    ridge: bool = True,
    retry_errored: bool = False,
    verbose: int | None = None,
    callbacks: Sequence[Any] = (),
) -> SearchReport:
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
    if resume:  # before Ray starts: a resume with nothing to resume fails in seconds
        setup = setup.resumed()
        restore_path, restore_fs = tune_storage(str(setup.tune_path))
        if not tune.Tuner.can_restore(restore_path, storage_filesystem=restore_fs):
            raise NothingToResumeError(
                f"nothing to resume: no Tune experiment state in {setup.tune_path}"
            )
        setup.save()  # this driver's `out` may be new: the report and a later resume need it
    space = load_space(setup.space)
    seeds = tuple(range(setup.seeds or space.seeds))
    logger.info(
        "search space %s: %d params, %d fixed, %d samples x %d seeds",
        space.name,
        len(space.params),
        len(space.fixed),
        setup.num_samples or space.num_samples,
        len(seeds),
    )
    store, latents_dir = data_paths(setup.data)
    base = FitConfig(store=str(store), latents_dir=str(latents_dir))
    plan = TrialPlan(
        base,
        dict(space.fixed),
        seeds,
        tuple(p.key for p in space.params),
        device="cuda" if setup.gpus_per_trial > 0 else "cpu",
        fail_trials=frozenset(setup.fail_trials),
        metric=space.metric,
        mode=space.mode,
    )
    concurrent = setup.max_concurrent or space.max_concurrent
    # Ray's new console output ignores `progress_reporter` and prints every trial's full
    # result; the classic table (`_reporter`) stays readable. Set RAY_AIR_NEW_OUTPUT=1 to undo.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    clock = PhaseClock(start=start)  # SearchReport.timings
    from megdecode.logs import verbose as verbose_logs

    verbose = (1 if verbose_logs() else 0) if verbose is None else verbose
    init_ray(address)
    cpus = setup.cpus_per_trial or max(1, int(ray.cluster_resources().get("CPU", 1)) // concurrent)
    plan = replace(plan, threads=cpus)
    mode = check_cluster(setup, store)
    clock.lap("start")
    shared = load_epochs(mode, setup, store, latents_dir, latent_names(space, base))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, shared=shared, plan=plan),
        {"cpu": cpus, "gpu": setup.gpus_per_trial},
    )
    load_s = clock.lap("load")
    if mode == "shared":
        logger.info(
            "epochs loaded once for all trials: %.1f MB in %.1f s", shared.nbytes / 1e6, load_s
        )
    else:
        logger.info(
            "epochs streamed by every trial (at most %d MEG rows per split held): planned in %.1f s",
            setup.stream_buffer_rows,
            load_s,
        )
    mlflow_callback = None
    if resume:
        logger.info("resuming %s", setup.tune_path)
        tuner = tune.Tuner.restore(
            restore_path,
            trainable,
            storage_filesystem=restore_fs,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=retry_errored,
        )
    else:
        if files.exists(files.join(setup.tune_path, "tuner.pkl")):
            raise FileExistsError(
                f"{setup.tune_path} already holds a search; pass --resume or another --experiment"
            )
        setup.save()
        tags = {
            "megdecode.space": space.name,
            "megdecode.space_path": str(setup.space),
            "megdecode.experiment_path": str(setup.path),
        }  # the Tracker adds git commit, dataset sha256
        mlflow_callback = MlflowSearchCallback(setup.tracking_uri, setup.experiment, plan, tags)
        shown = (
            []
            if verbose
            else [trial_progress(setup.num_samples or space.num_samples, f"{space.metric}_mean")]
        )
        tuner = build_tuner(
            setup, space, trainable, concurrent, verbose, [mlflow_callback, *shown, *callbacks]
        )
    results = tuner.fit()
    clock.lap("tune")
    if mlflow_callback is not None:
        clock.add("mlflow", mlflow_callback.seconds)
    trials = saved_trials(setup.tune_path)
    searcher_name, searcher_trials = check_searcher(setup.tune_path, trials)
    clock.lap("check")
    return write_report(
        setup,
        space,
        plan,
        shared,
        results,
        trials,
        clock,
        resume,
        top_k,
        register,
        ridge,
        searcher_name,
        searcher_trials,
        epochs=mode,
    )
