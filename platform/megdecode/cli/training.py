"""`megdecode train` and `windows`: one model per seed, or one model per time window."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from megdecode.train import FitConfig

logger = logging.getLogger(__name__)


def train(
    data: Annotated[
        Path | None, typer.Option(help="run folder with store/ and latents/, or a store")
    ] = None,
    latent: Annotated[
        str, typer.Option(help="latents/<NAME>.parquet is the target")
    ] = "handcrafted",
    latents_dir: Annotated[Path | None, typer.Option(help="default: DATA/latents")] = None,
    tmin: float = -0.5,
    tmax: float = 1.0,
    seed: int = 0,
    max_epochs: int = 100,
    patience: int = 10,
    batch_size: int = 128,
    lam: Annotated[
        float,
        typer.Option(help="loss = lam*CLIP + (1-lam)*MSE; 0.75 is our default, not the paper's"),
    ] = 0.75,
    ridge: Annotated[bool, typer.Option(help="also fit the ridge baseline")] = True,
    out: Annotated[
        Path | None, typer.Option(help="bundle folder; default DATA/models/<latent>-seed<seed>")
    ] = None,
    model_config: Annotated[Path | None, typer.Option(help="JSON of BrainConfig fields")] = None,
    from_run: Annotated[
        str | None,
        typer.Option(
            help="MLflow run id of a Tune trial: train its logged config "
            "with --seed (other options ignored, --data overrides its store)"
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(envvar="MEGDECODE_TRACKING_URI", help="MLflow URI for --from-run")
    ] = None,
) -> None:
    """Train one brain module (one seed, one window); print ConvNet vs ridge vs chance."""
    from megdecode.evaluation.baseline import format_table, results_table, ridge_table
    from megdecode.losses import LossConfig
    from megdecode.models.brain import BrainConfig
    from megdecode.rundata import load_run_data
    from megdecode.train import FitConfig, TrainConfig, fit

    if from_run is not None:
        cfg = _trial_config(from_run, tracking_uri, seed)
        latent = cfg.train.latent
    elif data is None:
        raise typer.BadParameter("--data is required (unless --from-run)")
    else:
        brain = (
            BrainConfig.from_flat_dict(json.loads(model_config.read_text()))
            if model_config
            else BrainConfig()
        )
        cfg = FitConfig(
            store="",
            latents_dir="",
            model=brain,
            loss=LossConfig(lam=lam),
            train=TrainConfig(
                latent=latent,
                tmin=tmin,
                tmax=tmax,
                seed=seed,
                max_epochs=max_epochs,
                patience=patience,
                batch_size=batch_size,
            ),
        )
    if data is not None:
        store = data / "store" if (data / "store" / "manifest.json").exists() else data
        cfg = cfg.replace(store=str(store), latents_dir=str(latents_dir or (data / "latents")))
    out = out or Path(cfg.store).parent / "models" / f"{latent}-seed{seed}"
    run_data = load_run_data(cfg)
    result = fit(cfg, out_dir=out, data=run_data)
    table = results_table(result.table, ridge_table(run_data) if ridge else None)
    typer.echo(format_table(table))
    typer.echo(f"bundle: {result.bundle_path}")


def windows(
    data: Annotated[Path, typer.Option(help="run folder with store/ and latents/, or a store")],
    latent: Annotated[
        str, typer.Option(help="latents/<NAME>.parquet is the target")
    ] = "handcrafted",
    out: Annotated[Path | None, typer.Option(help="output folder; default DATA/windows")] = None,
    kind: Annotated[str, typer.Option(help="sliding | growing")] = "sliding",
    model: Annotated[str, typer.Option(help="ridge | convnet")] = "ridge",
    latents_dir: Annotated[Path | None, typer.Option(help="default: DATA/latents")] = None,
    width: Annotated[float, typer.Option(help="sliding window length (s)")] = 0.1,
    stride: Annotated[float, typer.Option(help="sliding window stride (s)")] = 0.025,
    step: Annotated[float, typer.Option(help="growing window step (s)")] = 0.1,
    metric: Annotated[
        str, typer.Option(help="metric of the figure and the peak")
    ] = "small_top5_avg",
    smooth: Annotated[int, typer.Option(help="windows averaged before taking the peak")] = 1,
    by: Annotated[
        str | None,
        typer.Option(
            help="x axis of the figure and the peak: end (the paper's reading) | center "
            "(lines up with a response's latency); default end for growing, center for sliding"
        ),
    ] = None,
    seed: int = 0,
    max_epochs: Annotated[int, typer.Option(help="convnet only")] = 100,
    patience: Annotated[int, typer.Option(help="convnet only")] = 10,
    batch_size: Annotated[int, typer.Option(help="convnet only")] = 128,
    model_config: Annotated[
        Path | None, typer.Option(help="convnet only: JSON of BrainConfig fields")
    ] = None,
) -> None:
    """One model per time window (paper grids); writes the table (CSV) and curve (PNG), prints the peak."""
    from megdecode.evaluation.windows import (
        X_AXES,
        chance_level,
        curve_peak,
        onset_latencies,
        plot_window_curves,
        window_table,
    )
    from megdecode.models.brain import BrainConfig
    from megdecode.train import FitConfig, TrainConfig
    from megdecode.twin.simulate import read_ground_truth

    store = data / "store" if (data / "store" / "manifest.json").exists() else data
    brain = (
        BrainConfig.from_flat_dict(json.loads(model_config.read_text()))
        if model_config
        else BrainConfig()
    )
    cfg = FitConfig(
        store=str(store),
        latents_dir=str(latents_dir or data / "latents"),
        model=brain,
        train=TrainConfig(
            latent=latent,
            seed=seed,
            max_epochs=max_epochs,
            patience=patience,
            batch_size=batch_size,
        ),
    )
    x = by or ("end" if kind == "growing" else "center")
    if x not in X_AXES:
        raise typer.BadParameter(f"--by must be one of {X_AXES}, got {x!r}")
    grid: dict[str, Any] = (
        {"width": width, "stride": stride} if kind == "sliding" else {"step": step}
    )
    table = window_table(cfg, kind, model, **grid)
    truth = None
    if (data / "bids").is_dir():
        try:
            truth = read_ground_truth(data / "bids")["latencies_s"]
        except FileNotFoundError:
            logger.info("%s is not a twin: no true latencies to mark", data / "bids")
    out = out or data / "windows"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"windows-{latent}-{model}-{kind}"
    table.to_csv(stem.with_suffix(".csv"), index=False)
    plot_window_curves(
        table,
        metric,
        chance_level(table, metric),
        stem.with_suffix(".png"),
        truth_latencies=onset_latencies(truth) if truth is not None else None,
        x=x,
        title=f"{latent}, {model}, {kind} windows",
    )
    peak = curve_peak(table, metric, x=x, smooth=smooth)
    value = float(table.loc[table[x] == peak, metric].iloc[0])
    typer.echo(f"table: {stem.with_suffix('.csv')}\nfigure: {stem.with_suffix('.png')}")
    typer.echo(
        f"peak of {metric}: window {x} {peak:.3f} s ({metric} = {value:.3f})"
        + (f"; twin latencies {truth}" if truth else "")
    )


def _trial_config(run_id: str, tracking_uri: str | None, seed: int) -> FitConfig:
    """The FitConfig a Tune trial logged to MLflow (its parent run's params), for `seed`."""
    from mlflow import MlflowClient

    from megdecode.search.space import fit_config, logged_keys
    from megdecode.train import FitConfig

    if tracking_uri is None:
        raise typer.BadParameter("--from-run needs --tracking-uri (or MEGDECODE_TRACKING_URI)")
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    return fit_config(FitConfig(), logged_keys(run.data.params), seed=seed, source=f"run {run_id}")
