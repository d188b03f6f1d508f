"""`megdecode evaluate`: a bundle's retrieval table, or (--generate) its reconstructions scored."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import pandas as pd

    from megdecode.generate.evaluation import GenEvalConfig

GEN = "--generate"  # help panel of the options only the generation evaluation reads


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
    from megdecode.data.sensors import SensorMismatchError
    from megdecode.evaluation.baseline import format_table, results_table
    from megdecode.evaluation.retrieval import evaluate_all
    from megdecode.predict import check_store_sensors, load_model, predict_windows
    from megdecode.rundata import load_run_data
    from megdecode.train import FitConfig

    model, meta = load_model(bundle)
    fit_cfg = FitConfig.from_flat_dict(dict(meta.fit_config.flat))
    fit_cfg = FitConfig.from_flat_dict(
        fit_cfg.to_flat_dict()
        | {k: str(v) for k, v in (("store", store), ("latents_dir", latents_dir)) if v is not None}
    )
    run_data = load_run_data(fit_cfg)
    try:
        check_store_sensors(meta, run_data.ch_names, fit_cfg.store)
    except SensorMismatchError as exc:
        raise typer.BadParameter(str(exc)) from None
    clip, _ = predict_windows(model, run_data.test.meg.numpy(), run_data.test.subject.numpy())
    table = evaluate_all(clip, run_data.test.meta, run_data.latent_ids, run_data.latents)
    return format_table(results_table(table))


def _generation_eval(
    cfg: GenEvalConfig,
    tracking_uri: str | None,
    run_id: str | None,
    experiment: str,
    address: str | None,
    num_cpus: int | None,
) -> tuple[pd.DataFrame, Path, str | None]:
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
