"""The `megdecode` command: thin shells over the library, one sub-command per stage."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from megdecode.records import plain

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
logger = logging.getLogger("megdecode.cli")

Size = Annotated[str, typer.Option(help="twin size: tiny | demo | full")]


@app.callback()
def _main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="also stream Ray's, Tune's, Serve's and "
            "MLflow's own output (default: in a log file)",
        ),
    ] = False,
) -> None:
    from megdecode.logs import setup_logging

    setup_logging("DEBUG" if verbose else "INFO", verbose_output=verbose)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="BIDS root to write")],
    size: Size = "tiny",
    seed: int = 0,
    jobs: Annotated[int, typer.Option(help="parallel processes (same output for any value)")] = 2,
) -> None:
    """Write the MEG twin (a simulated THINGS-MEG-like BIDS dataset) to OUT."""
    from megdecode.twin.config import TwinConfig
    from megdecode.twin.simulate import simulate as run_simulation

    summary = run_simulation(TwinConfig.preset(size, seed=seed), out, n_jobs=jobs)
    typer.echo(json.dumps(plain(summary), indent=2, default=str))


@app.command()
def preprocess(
    bids_root: Annotated[Path, typer.Option("--bids", help="BIDS root (THINGS-MEG or twin)")],
    out: Annotated[Path, typer.Option(help="epoch store to write")],
    subjects: Annotated[list[str] | None, typer.Option("--subject")] = None,
    ray: Annotated[
        bool, typer.Option(help="Ray Data: one task per run file on a pool of one actor per CPU")
    ] = True,
    address: Annotated[str | None, typer.Option(help="Ray address; default: local cluster")] = None,
) -> None:
    """Preprocess every run (paper pipeline) into the Parquet epoch store."""
    report = _preprocess(bids_root, out, subjects, ray, address)
    typer.echo(json.dumps(plain(report), indent=2, default=str))


@app.command()
def latents(
    store: Annotated[Path, typer.Option(help="epoch store (lists the images)")],
    bids_root: Annotated[Path, typer.Option("--bids", help="BIDS root holding stimuli/")],
    out: Annotated[Path, typer.Option(help="latents folder")],
    encoder: Annotated[
        list[str],
        typer.Option(
            help="handcrafted | clip-vision[-tokens] | clip-text[-tokens] | autokl[-avg] | dinov2 | vgg19"
        ),
    ] = ["handcrafted"],  # noqa: B006
    images_root: Annotated[
        Path | None, typer.Option(help="images folder (real THINGS images)")
    ] = None,
    clip_model: str = "ViT-L-14",
    clip_weights: Annotated[
        Path | None, typer.Option(help="local open_clip checkpoint (clip-vision*, clip-text*)")
    ] = None,
    autokl_weights: Annotated[
        Path | None, typer.Option(help="local diffusers AutoencoderKL folder")
    ] = None,
    dinov2_weights: Annotated[
        Path | None, typer.Option(help="local timm/DINOv2 checkpoint file")
    ] = None,
    dinov2_model: str = "vit_large_patch14_dinov2",
    vgg19_weights: Annotated[
        Path | None, typer.Option(help="local torchvision VGG-19 state_dict")
    ] = None,
    allow_random_init: Annotated[
        bool, typer.Option(help="random weights where none are given (tests/twin demos only)")
    ] = False,
    device: str = "cpu",
    ray: Annotated[
        bool, typer.Option(help="encode on a Ray Data actor pool (a GPU per actor if any)")
    ] = False,
    address: Annotated[str | None, typer.Option(help="Ray address; default: local cluster")] = None,
) -> None:
    """Encode every stimulus of the store into latents/<name>.parquet."""
    from megdecode.latents.distributed import ray_encode_fn
    from megdecode.latents.registry import encoder_factory, make_encoder
    from megdecode.latents.stage import build_latents

    if ray:
        from megdecode.raycluster import init_ray

        init_ray(address)
    weights: dict[str, Any] = {  # per-encoder options: paths, model names, a flag
        "autokl_weights": autokl_weights,
        "dinov2_weights": dinov2_weights,
        "vgg19_weights": vgg19_weights,
        "dinov2_model": dinov2_model,
        "allow_random_init": allow_random_init,
    }
    for name in encoder:
        enc = make_encoder(
            name, clip_model=clip_model, clip_weights=clip_weights, device=device, **weights
        )
        factory = encoder_factory(name, clip_model, clip_weights, **weights)
        encode_fn = ray_encode_fn(factory) if ray else None
        report = build_latents(
            store, bids_root, out, enc, images_root=images_root, encode_fn=encode_fn
        )
        typer.echo(json.dumps(plain(report), default=str))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    size: Size = "demo",
    seed: int = 0,
    ray: Annotated[bool, typer.Option(help="preprocess on a local Ray cluster")] = True,
    clip_weights: Annotated[Path | None, typer.Option(help="local open_clip checkpoint")] = None,
    clip_model: str = "ViT-L-14",
    tune: Annotated[bool, typer.Option(help="run the search and register the champion")] = True,
    space: Annotated[
        Path | None, typer.Option(help="search space; default search_spaces/smoke.yaml")
    ] = None,
    num_samples: Annotated[int | None, typer.Option(help="trials; default: the space's")] = None,
    serve: Annotated[
        bool, typer.Option(help="serve the champion on 127.0.0.1 and decode test windows")
    ] = True,
    generate: Annotated[
        bool,
        typer.Option(help="train the twin generator, reconstruct test images from decoded MEG"),
    ] = True,
    generator_seconds: Annotated[
        float, typer.Option(help="generator training budget, wall-clock seconds")
    ] = 150.0,
    generator_steps: Annotated[int, typer.Option(help="DDIM steps per reconstruction")] = 50,
) -> None:
    """The whole chain on the twin: simulate, preprocess, latents, search, register, serve, reconstruct."""
    from megdecode.demo import DemoSetup, run_demo

    if tune and not ray:
        raise typer.BadParameter("--tune needs Ray: drop --no-ray or add --no-tune")
    run_demo(
        DemoSetup(
            out=out,
            size=size,
            seed=seed,
            use_ray=ray,
            clip_weights=clip_weights,
            clip_model=clip_model,
            tune=tune,
            space=space,
            num_samples=num_samples,
            serve=serve,
            generate=generate,
            generator_seconds=generator_seconds,
            generator_steps=generator_steps,
        ),
        echo=typer.echo,
    )


@app.command()
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
    lam: Annotated[float, typer.Option(help="loss = lam*CLIP + (1-lam)*MSE")] = 0.75,
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


GEN = "--generate"  # help panel of the options only the generation evaluation reads


@app.command()
def evaluate(
    bundle: Annotated[
        str | None, typer.Argument(help="model bundle folder (--generate: or models:/NAME@ALIAS)")
    ] = None,
    bundle_option: Annotated[
        str | None, typer.Option("--bundle", help="the same as BUNDLE")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="default: the store the bundle was trained on")
    ] = None,
    latents_dir: Annotated[
        Path | None,
        typer.Option("--latents-dir", "--latents", help="default: the bundle's latents folder"),
    ] = None,
    generate: Annotated[
        bool,
        typer.Option(
            "--generate",
            help="reconstruct the small test set on Ray, score the "
            "images, log to MLflow (= jobs/evaluate.py --generate)",
        ),
    ] = False,
    generator: Annotated[
        Path | None, typer.Option(help="generator folder", rich_help_panel=GEN)
    ] = None,
    bids_root: Annotated[
        Path | None,
        typer.Option("--bids", help="BIDS root (images under stimuli/)", rich_help_panel=GEN),
    ] = None,
    images_root: Annotated[
        Path | None, typer.Option(help="images folder (real THINGS images)", rich_help_panel=GEN)
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="output folder (table, grid, reconstructions)", rich_help_panel=GEN),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MEGDECODE_TRACKING_URI",
            rich_help_panel=GEN,
            help="MLflow URI: log there (and resolve models:/ bundles)",
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(help="log into this MLflow run instead of a new one", rich_help_panel=GEN),
    ] = None,
    experiment: Annotated[str, typer.Option(rich_help_panel=GEN)] = "megdecode-generate",
    max_images: Annotated[
        int,
        typer.Option(
            help="0 = every test image; else the first K (smoke runs)", rich_help_panel=GEN
        ),
    ] = 0,
    kinds: Annotated[
        str,
        typer.Option(
            help="rows to generate, comma-separated (single = one image per trial: "
            "most of the work)",
            rich_help_panel=GEN,
        ),
    ] = "single,averaged,oracle,random",
    pred_stats: Annotated[
        str,
        typer.Option(
            help="z-score MSE outputs with the bundle's stored statistics, as "
            "/v1/reconstruct does (bundle), or over each decoded set (set)",
            rich_help_panel=GEN,
        ),
    ] = "bundle",
    metric_weights: Annotated[
        Path | None, typer.Option(help="folder of metric network weights", rich_help_panel=GEN)
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="DDIM steps; default the generator's", rich_help_panel=GEN)
    ] = None,
    guidance_scale: Annotated[
        float | None, typer.Option(help="default the generator's", rich_help_panel=GEN)
    ] = None,
    seed: Annotated[
        int, typer.Option(help="sample i of a row uses seed + i", rich_help_panel=GEN)
    ] = 0,
    actors: Annotated[
        int, typer.Option(help="generation actors; 0 = one per CPU", rich_help_panel=GEN)
    ] = 0,
    address: Annotated[
        str | None, typer.Option(help="Ray address; default a local cluster", rich_help_panel=GEN)
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="CPUs of the local cluster", rich_help_panel=GEN)
    ] = None,
) -> None:
    """Re-score a bundle on its store's test sets (retrieval table); with --generate, score its reconstructions."""
    source = bundle_option or bundle
    if source is None:
        raise typer.BadParameter("give the bundle (BUNDLE or --bundle)")
    if not generate:
        typer.echo(_retrieval_table(Path(source), store, latents_dir))
        return
    if generator is None or bids_root is None or out is None:
        raise typer.BadParameter("--generate needs --generator, --bids and --out")
    from megdecode.generate.evaluation import GenEvalConfig, generator_defaults

    changes = {
        k: v for k, v in (("steps", steps), ("guidance_scale", guidance_scale)) if v is not None
    }
    cfg = GenEvalConfig(
        bundle=source,
        generator=str(generator),
        bids_root=str(bids_root),
        images_root=str(images_root or ""),
        store=str(store or ""),
        latents_dir=str(latents_dir or ""),
        out=str(out),
        max_images=max_images,
        metric_weights=str(metric_weights or ""),
        actors=actors,
        pred_stats=pred_stats,
        kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        generate=generator_defaults(generator).replace(seed=seed, **changes),
    )
    table, grid, logged = _generation_eval(cfg, tracking_uri, run_id, experiment, address, num_cpus)
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"grid -> {grid}" + (f"; MLflow run {logged}" if logged else ""))


def _retrieval_table(bundle: Path, store: Path | None, latents_dir: Path | None) -> str:
    """The retrieval table of `bundle` on its store's test sets (`megdecode evaluate BUNDLE`)."""
    from megdecode.evaluation.baseline import format_table, results_table
    from megdecode.evaluation.retrieval import evaluate_all
    from megdecode.predict import load_model, predict_windows
    from megdecode.rundata import load_run_data
    from megdecode.train import FitConfig

    model, meta = load_model(bundle)
    fit_cfg = FitConfig.from_flat_dict(dict(meta.fit_config.flat))
    fit_cfg = FitConfig.from_flat_dict(
        fit_cfg.to_flat_dict()
        | {k: str(v) for k, v in (("store", store), ("latents_dir", latents_dir)) if v is not None}
    )
    run_data = load_run_data(fit_cfg)
    if run_data.ch_names != meta.ch_names:
        raise typer.BadParameter("the store's channels differ from the bundle's")
    clip, _ = predict_windows(model, run_data.test.meg.numpy(), run_data.test.subject.numpy())
    table = evaluate_all(clip, run_data.test.meta, run_data.latent_ids, run_data.latents)
    return format_table(results_table(table))


def _generation_eval(
    cfg: Any,
    tracking_uri: str | None,
    run_id: str | None,
    experiment: str,
    address: str | None,
    num_cpus: int | None,
) -> tuple[Any, Path, str | None]:
    """`generate.evaluation.run_and_log` on Ray (a local cluster unless one is running or named)."""
    import ray as ray_module

    from megdecode.generate.evaluation import run_and_log
    from megdecode.raycluster import init_ray

    started_ray = not ray_module.is_initialized()
    init_ray(address, num_cpus=num_cpus)
    try:
        return run_and_log(cfg, tracking_uri, run_id, experiment)
    finally:
        if started_ray:
            ray_module.shutdown()


@app.command()
def tune(
    space: Annotated[
        Path | None,
        typer.Option(help="search space YAML (search_spaces/*.yaml); not needed with --resume"),
    ] = None,
    data: Annotated[
        Path, typer.Option(help="run folder with store/ and latents/ (absolute on a cluster)")
    ] = Path("runs/demo"),
    out: Annotated[Path | None, typer.Option(help="Tune results folder; default DATA/tune")] = None,
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
) -> None:
    """Ray Tune + Optuna search over SPACE, N seeds a trial, logged to MLflow; prints the summary."""
    import ray as ray_module

    from megdecode.search.driver import SearchSetup, latest_experiment, run_search
    from megdecode.tracking import default_tracking_uri

    data = data.resolve()
    out = (out or data / "tune").resolve()
    if resume:
        experiment = experiment or latest_experiment(out)
    elif space is None:
        raise typer.BadParameter("--space is required (unless --resume)")
    else:
        from megdecode.search.space_file import load_space

        experiment = experiment or f"{load_space(space).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    setup = SearchSetup(
        space=str(space.resolve()) if space else "",
        data=str(data),
        out=str(out),
        experiment=experiment,
        tracking_uri=tracking_uri or default_tracking_uri(data),
        num_samples=num_samples,
        time_budget_s=time_budget,
        seeds=seeds,
        max_concurrent=max_concurrent,
        max_failures=max_failures,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        scheduler=scheduler,
    )
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
    finally:
        if started_ray:
            ray_module.shutdown()
    typer.echo(report.text())
    if report.interrupted:
        raise typer.Exit(code=130)


@app.command()
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
        title=f"{latent}, {model}, {kind} windows",
    )
    x = "tmax" if kind == "growing" else "center"
    peak = curve_peak(table, metric, x=x, smooth=smooth)
    value = float(table.loc[table[x] == peak, metric].iloc[0])
    typer.echo(f"table: {stem.with_suffix('.csv')}\nfigure: {stem.with_suffix('.png')}")
    typer.echo(
        f"peak of {metric}: window {x} {peak:.3f} s ({metric} = {value:.3f})"
        + (f"; twin latencies {truth}" if truth else "")
    )


def _trial_config(run_id: str, tracking_uri: str | None, seed: int):
    """The FitConfig a Tune trial logged to MLflow (its parent run's params), for `seed`."""
    from mlflow import MlflowClient

    from megdecode.search.space import fit_config, logged_keys
    from megdecode.train import FitConfig

    if tracking_uri is None:
        raise typer.BadParameter("--from-run needs --tracking-uri (or MEGDECODE_TRACKING_URI)")
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    return fit_config(FitConfig(), logged_keys(run.data.params), seed=seed, source=f"run {run_id}")


@app.command("serve")
def serve_cmd(
    config: Annotated[Path, typer.Option(help="Serve config YAML")] = Path(
        "serve_apps/config.yaml"
    ),
    bundle: Annotated[Path | None, typer.Option(help="serve this bundle folder")] = None,
    model: Annotated[str | None, typer.Option(help="serve models:/<name>@<alias>")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(envvar="MEGDECODE_TRACKING_URI", help="MLflow URI for --model")
    ] = None,
    generator: Annotated[
        Path | None, typer.Option(help="generator folder for /v1/reconstruct")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="default: the config's http_options.port")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray address; default: a local loopback cluster")
    ] = None,
    start_timeout: Annotated[
        float | None,
        typer.Option(
            help="seconds to wait for every replica to run, then fail "
            "naming what does not fit (default: the config's "
            "start_timeout_s)"
        ),
    ] = None,
) -> None:
    """Serve the decoder (and generator) over HTTP on 127.0.0.1 until Ctrl-C or SIGTERM."""
    import ray as ray_module

    from megdecode.config import ConfigError
    from megdecode.serve.app import StartError, StartInterrupted, start
    from megdecode.serve.config import read_config_file

    cfg, _ = read_config_file(config)
    source = str(bundle) if bundle else model
    if source:
        cfg = cfg.replace(
            decoder=cfg.decoder.replace(
                model=source, tracking_uri=tracking_uri or cfg.decoder.tracking_uri
            )
        )
    if generator:
        cfg = cfg.replace(generator=cfg.generator.replace(weights=str(generator)))
    if port:
        cfg = cfg.replace(http=cfg.http.replace(port=port))
    if start_timeout:
        cfg = cfg.replace(start_timeout_s=start_timeout)
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    started_ray = not ray_module.is_initialized()
    local = started_ray and not address and not os.environ.get("RAY_ADDRESS")
    code = 0
    try:
        if started_ray:
            _init_ray_immune_to_sigint(address)
            _stop_on_signals(stop)  # again: ray.init installs a fatal SIGTERM handler over ours
        url = start(cfg, address=address, stop=stop, fixed_cluster=local)
        typer.echo(f"serving {cfg.decoder.model} at {url} (docs: {url}/docs); Ctrl-C stops")
        while not stop.wait(1.0):
            pass
        typer.echo("stopping")
    except StartInterrupted:
        code = 130
    except (StartError, ConfigError) as exc:
        typer.echo(f"megdecode serve: {exc}", err=True)
        code = 1
    finally:
        _stop_serving(cfg.app_name, started_ray)
        restore()
    raise typer.Exit(code)


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set `stop` (the main thread's wait returns); a second one aborts at once."""
    import signal

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _init_ray_immune_to_sigint(address: str | None) -> None:
    """`init_ray` with SIGINT ignored while Ray spawns its processes.

    A terminal's Ctrl-C goes to the whole foreground process group, and Ray's GCS, raylet
    and workers are in ours: killed by it mid-shutdown, they leave the driver waiting on a
    dead controller. They inherit an ignored SIGINT (an ignored signal stays ignored across
    exec), so only this process sees it and shuts them down in order.
    """
    import signal

    from megdecode.raycluster import init_ray

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        init_ray(address)
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_serving(app_name: str, started_ray: bool, serve_timeout_s: float = 15.0) -> None:
    """Delete our app (its replicas finish what they hold), bounded; then the Ray started here.

    Only our app: on an attached cluster Serve may run other apps, and on the local one
    Ray's shutdown takes Serve's controller and proxy with it.
    """
    import ray as ray_module
    from ray import serve

    if not ray_module.is_initialized():
        return

    def delete() -> None:
        try:
            if app_name in serve.status().applications:
                serve.delete(app_name)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            logger.warning("could not delete %r: %s", app_name, exc)

    done = threading.Thread(target=delete, name="serve-delete", daemon=True)
    done.start()
    done.join(serve_timeout_s)
    if done.is_alive():
        logger.warning("%r did not stop within %g s; stopping Ray", app_name, serve_timeout_s)
    if started_ray:
        ray_module.shutdown()


@app.command("serve-example")
def serve_example(
    store: Annotated[Path, typer.Option(help="epoch store of the model")],
    bundle: Annotated[
        Path, typer.Option(help="bundle whose window and subjects the example must fit")
    ],
    out: Annotated[Path, typer.Option(help="JSON body to write")] = Path("examples/window.json"),
) -> None:
    """Write one test window as a /v1/decode JSON body (curl -d @OUT)."""
    from megdecode.serve.demo import example_window

    typer.echo(str(example_window(store, bundle, out)))


@app.command()
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
        _fail(f"cannot register run {run_id}: {exc}")
    typer.echo(f"{name} version {version} -> @{alias} (run {run_id})")


def _fail(message: str) -> NoReturn:
    """Say what went wrong on stderr and exit 1 (a stage's failure, not a usage error)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("train-generator")
def train_generator_cmd(
    out: Annotated[Path, typer.Option(help="generator folder to write")],
    data: Annotated[
        Path | None,
        typer.Option(help="folder with store/, bids/ and latents/ (what `demo` writes)"),
    ] = None,
    store: Annotated[Path | None, typer.Option(help="default DATA/store")] = None,
    bids_root: Annotated[Path | None, typer.Option("--bids", help="default DATA/bids")] = None,
    latents_dir: Annotated[
        Path | None, typer.Option("--latents", help="latents folder; default DATA/latents")
    ] = None,
    images_root: Annotated[
        Path | None, typer.Option(help="images folder (real THINGS images)")
    ] = None,
    latent: Annotated[
        list[str] | None, typer.Option(help="condition latent(s), repeatable; default handcrafted")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="optimiser steps (or until --max-seconds)")
    ] = None,
    max_seconds: Annotated[float | None, typer.Option(help="wall-clock cap; 0 = none")] = None,
    batch_size: int | None = None,
    seed: int = 0,
    lr: float | None = None,
    ema_decay: float | None = None,
    size: Annotated[int | None, typer.Option(help="image side in pixels")] = None,
    patch: Annotated[int | None, typer.Option(help="space-to-depth factor")] = None,
    channels: Annotated[
        str | None, typer.Option(help="UNet widths, comma-separated, e.g. 32,64")
    ] = None,
    coords: Annotated[bool | None, typer.Option(help="coordinate channels into the UNet")] = None,
    global_cond: Annotated[
        bool | None,
        typer.Option(
            help="the condition also as a global vector (--no-global-cond: cross-attention only)"
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            envvar="MEGDECODE_TORCH_THREADS",
            help="torch threads (1 is fastest on a busy 2-core machine)",
        ),
    ] = 1,
) -> None:
    """Train the small latent-conditioned generator on a dataset's images (= jobs/train_generator.py).

    Options left out take GenTrainConfig's defaults (megdecode.generate.train)."""
    import torch

    from megdecode.generate.train import GenTrainConfig, train_generator

    store = store or (data / "store" if data else None)
    bids_root = bids_root or (data / "bids" if data else None)
    latents_dir = latents_dir or (data / "latents" if data else None)
    if not (store and bids_root and latents_dir):
        raise typer.BadParameter("give --data, or --store, --bids and --latents")
    try:
        widths = tuple(int(c) for c in channels.split(",")) if channels else None
    except ValueError:
        raise typer.BadParameter(
            f"--channels: comma-separated integers, got {channels!r}"
        ) from None
    given: dict[str, Any] = {
        "steps": steps,
        "max_seconds": max_seconds,
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema_decay,
        "size": size,
        "patch": patch,
        "channels": widths,
        "coords": coords,
        "global_cond": global_cond,
    }
    cfg = GenTrainConfig(
        store=str(store),
        bids_root=str(bids_root),
        latents_dir=str(latents_dir),
        images_root=str(images_root or ""),
        latents=tuple(latent or ["handcrafted"]),
        seed=seed,
        **{k: v for k, v in given.items() if v is not None},
    )
    torch.set_num_threads(threads)
    path = train_generator(cfg, out)
    typer.echo(f"generator -> {path} (loss curve {path / 'loss.png'})")


@app.command()
def reconstruct(
    window: Annotated[Path, typer.Option(help="a /v1/decode JSON body: {subject, data: C x T}")],
    generator: Annotated[Path, typer.Option(help="generator folder")],
    out: Annotated[Path, typer.Option(help="PNG to write")] = Path("reconstruction.png"),
    bundle: Annotated[Path | None, typer.Option(help="bundle folder")] = None,
    model: Annotated[
        str | None, typer.Option(help="models:/<name>@<alias> or models:/<name>/<version>")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(envvar="MEGDECODE_TRACKING_URI", help="MLflow URI for --model")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="DDIM steps; default the app's (generator.default_steps)")
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(help="guidance scale; default the app's (generator.default_guidance)"),
    ] = None,
    seed: int = 0,
    device: Annotated[
        str,
        typer.Option(
            help="cpu | cuda: the same device as the app's generator gives the same bytes"
        ),
    ] = "cpu",
    precision: Annotated[
        str, typer.Option(help="float32 | bfloat16, as decoder.precision")
    ] = "float32",
    threads: Annotated[
        int, typer.Option(help="torch threads (as the app's replicas: decoder.torch_threads)")
    ] = 1,
) -> None:
    """One window -> the image /v1/reconstruct returns for it (same code path, same PNG bytes)."""
    import torch

    from megdecode.serve.config import GeneratorConfig
    from megdecode.serve.errors import ApiError
    from megdecode.serve.reconstruct import reconstruct as run_reconstruct

    if (bundle is None) == (model is None):
        raise typer.BadParameter("give one of --bundle or --model")
    served = GeneratorConfig()
    torch.set_num_threads(threads)
    try:
        made = run_reconstruct(
            str(bundle) if bundle else str(model),
            generator,
            window,
            tracking_uri=tracking_uri or "",
            steps=served.default_steps if steps is None else steps,
            guidance=served.default_guidance if guidance is None else guidance,
            seed=seed,
            device=device,
            precision=precision,
        )
    except (
        ApiError
    ) as exc:  # the window or subject does not fit the model: the app's 4xx, said here
        raise typer.BadParameter(f"{window}: {exc.detail}") from None
    except (
        FileNotFoundError,
        ValueError,
    ) as exc:  # no bundle or generator there, or they do not fit
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(made.png)
    stats = made.model["prediction_stats"]
    scaled = (
        f"z-scored with the bundle's {stats['reference']} statistics (n={stats['n']})"
        if stats
        else "NOT z-scored: the bundle stores no prediction statistics"
    )
    typer.echo(
        f"{out} ({len(made.png)} bytes; model {made.model['name']} version {made.model['version']}; {scaled})"
    )


def run(argv: list[str]) -> int:
    """`megdecode ARGV` as a function that returns its exit status (what jobs/*.py call)."""
    try:
        app(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _preprocess(
    bids_root: Path, out: Path, subjects: list[str] | None, use_ray: bool, address: str | None
):
    from megdecode.data.build import build_epoch_store

    if not use_ray:
        return build_epoch_store(bids_root, out, subjects=subjects)
    import ray as ray_module

    from megdecode.raycluster import init_ray

    init_ray(address)
    try:
        return build_epoch_store(bids_root, out, subjects=subjects, use_ray=True)
    finally:
        ray_module.shutdown()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
