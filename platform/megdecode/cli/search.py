"""`megdecode tune` and `register`: the hyperparameter search and the promotion of its champion."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from megdecode.cli.common import fail


def tune(
    space: Annotated[
        Path | None,
        typer.Option(help="search space YAML (search_spaces/*.yaml); not needed with --resume"),
    ] = None,
    data: Annotated[
        str,
        typer.Option(
            help="run folder with store/ and latents/: a path (absolute on a cluster) or s3://, gs://"
        ),
    ] = "runs/demo",
    out: Annotated[
        Path | None,
        typer.Option(
            help="local folder of the search's report; default DATA/tune (./tune for a URI)"
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Tune storage (experiment state, checkpoints): a path or s3://; default OUT"
        ),
    ] = None,
    artifact_root: Annotated[
        str | None,
        typer.Option(
            envvar="MEGDECODE_ARTIFACT_ROOT",
            help="MLflow artifact root of a new experiment: a path or s3://; default next to the db",
        ),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option(help="Tune and MLflow experiment name; default <space>-<time>")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MEGDECODE_TRACKING_URI", help="MLflow URI; default a SQLite file in DATA"
        ),
    ] = None,
    num_samples: Annotated[int | None, typer.Option(help="trials; default: the space's")] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="wall-clock budget of the search (s)")
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="seeds per trial; default: the space's")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="trials at once; default: the space's")
    ] = None,
    max_failures: Annotated[int, typer.Option(help="retries of a trial that raises")] = 2,
    cpus_per_trial: Annotated[
        int | None, typer.Option(help="default: the cluster's CPUs / max concurrent trials")
    ] = None,
    gpus_per_trial: float = 0.0,
    scheduler: Annotated[str, typer.Option(help="asha (early stopping) | fifo (none)")] = "asha",
    resume: Annotated[
        bool,
        typer.Option(
            help="resume the interrupted search OUT/EXPERIMENT (latest if no --experiment)"
        ),
    ] = False,
    retry_errored: Annotated[
        bool, typer.Option(help="with --resume: rerun failed trials from scratch")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray address; default: a local cluster (or RAY_ADDRESS)")
    ] = None,
    top_k: Annotated[int, typer.Option(help="configs in the summary table")] = 5,
    register: Annotated[
        bool, typer.Option(help="register the best bundle as megdecode-brain@champion")
    ] = True,
    assume_shared_fs: Annotated[
        bool,
        typer.Option(
            help="on a multi-node cluster, trust that local paths (data, out, MLflow) are a"
            " shared mount (NFS) at the same path on every node; otherwise they are refused"
        ),
    ] = False,
    reuse_actors: Annotated[
        bool,
        typer.Option(
            help="run the next trial in a finished trial's actor (faster); --no-reuse-actors"
            " keeps concurrent trials spread over the nodes their actors started on"
        ),
    ] = True,
    max_object_store_fraction: Annotated[
        float,
        typer.Option(help="share of the smallest node's object store the epochs may take"),
    ] = 0.5,
    object_store_budget: Annotated[
        int | None,
        typer.Option(help="bytes the epochs may take in the object store (overrides the fraction)"),
    ] = None,
    epochs: Annotated[
        str,
        typer.Option(
            help="auto: share the epochs through the object store when they fit the budget, else"
            " every trial streams them from the store | shared: refuse what does not fit |"
            " stream: always stream"
        ),
    ] = "auto",
    stream_buffer_rows: Annotated[
        int | None,
        typer.Option(
            help="epochs of MEG a streaming trial holds at once per split; default"
            " megdecode.rundata_stream.DEFAULT_BUFFER_ROWS (2048)"
        ),
    ] = None,
) -> None:
    """Ray Tune + Optuna search over SPACE, N seeds a trial, logged to MLflow; prints the summary."""
    import ray as ray_module

    from megdecode import files
    from megdecode.search.cluster_storage import SharedStorageError
    from megdecode.search.driver import run_search
    from megdecode.search.epoch_memory import EpochsTooLargeError
    from megdecode.search.setup import NothingToResumeError, SearchSetup, latest_experiment
    from megdecode.tracking import ARTIFACT_ENV, default_tracking_uri

    for where in (data, storage, artifact_root):
        if where:
            files.check_access(where)  # a bad bucket or endpoint fails now, naming it
    if artifact_root:
        os.environ[ARTIFACT_ENV] = artifact_root  # read by the driver's MLflow Tracker
    local_data = None if files.is_uri(data) else Path(data).resolve()
    out = (out or (local_data / "tune" if local_data else Path("tune"))).resolve()
    if resume:
        try:
            experiment = experiment or latest_experiment(out)
        except NothingToResumeError as exc:
            fail(str(exc))
    elif space is None:
        raise typer.BadParameter("--space is required (unless --resume)")
    else:
        from megdecode.search.space_file import load_space

        experiment = experiment or f"{load_space(space).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:  # a bad value (--epochs, --scheduler, a fraction) is a usage error, not a traceback
        setup = SearchSetup(
            space=str(space.resolve()) if space else "",
            data=str(local_data or data),
            out=str(out),
            storage=storage,
            experiment=experiment,
            tracking_uri=tracking_uri or default_tracking_uri(local_data or out),
            num_samples=num_samples,
            time_budget_s=time_budget,
            seeds=seeds,
            max_concurrent=max_concurrent,
            max_failures=max_failures,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            scheduler=scheduler,
            assume_shared_fs=assume_shared_fs,
            reuse_actors=reuse_actors,
            max_object_store_fraction=max_object_store_fraction,
            object_store_budget_bytes=object_store_budget,
            epochs=epochs,
            stream_buffer_rows=SearchSetup.stream_buffer_rows
            if stream_buffer_rows is None
            else stream_buffer_rows,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    started_ray = not ray_module.is_initialized()
    try:
        report = run_search(
            setup,
            resume=resume,
            address=address,
            top_k=top_k,
            register=("megdecode-brain", "champion") if register else None,
            retry_errored=retry_errored,
        )
    except (SharedStorageError, EpochsTooLargeError) as exc:
        fail(f"search refused before it started: {exc}")
    except NothingToResumeError as exc:
        fail(str(exc))
    finally:
        if started_ray:
            ray_module.shutdown()
    typer.echo(report.text())
    if report.interrupted:
        raise typer.Exit(code=130)


def register(
    tracking_uri: Annotated[
        str,
        typer.Option(
            envvar="MEGDECODE_TRACKING_URI", help="sqlite:///PATH/mlflow.db or http(s)://server"
        ),
    ],
    run_id: Annotated[str, typer.Option(help="a run whose artifacts hold a bundle")],
    name: Annotated[str, typer.Option(help="registered model name")] = "megdecode-brain",
    alias: Annotated[str, typer.Option(help="alias set on the new version")] = "champion",
) -> None:
    """Promote a run's model bundle to the MLflow registry as NAME@ALIAS (= jobs/register.py)."""
    from mlflow.exceptions import MlflowException

    from megdecode.promote import promote_run

    try:
        version = promote_run(tracking_uri, run_id, name=name, alias=alias)
    except (
        FileNotFoundError,
        ValueError,
        MlflowException,
    ) as exc:  # no such run, no bundle, a broken one
        fail(f"cannot register run {run_id}: {exc}")
    typer.echo(f"{name} version {version} -> @{alias} (run {run_id})")
