"""`megdecode simulate`, `preprocess` and `latents`: the twin, the epoch store, the latents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from megdecode.cli.common import Size
from megdecode.records import plain

if TYPE_CHECKING:
    from megdecode.data.build import BuildReport
    from megdecode.data.preprocess import PreprocessConfig


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


def preprocess(
    bids_root: Annotated[
        str, typer.Option("--bids", help="BIDS root (THINGS-MEG or twin): a path or s3://, gs://")
    ],
    out: Annotated[str, typer.Option(help="epoch store to write: a path or s3://, gs://")],
    subjects: Annotated[list[str] | None, typer.Option("--subject")] = None,
    ray: Annotated[
        bool, typer.Option(help="Ray Data: one task per run file on a pool of one actor per CPU")
    ] = True,
    address: Annotated[str | None, typer.Option(help="Ray address; default: local cluster")] = None,
    preset: Annotated[
        str,
        typer.Option(
            help="paper: no band-pass (the paper's minimal pipeline) | things-official: "
            "0.1-40 Hz band-pass (THINGS-MEG's pipeline); recorded in the store manifest"
        ),
    ] = "paper",
    filter_phase: Annotated[
        str,
        typer.Option(help="zero | causal (what the serving stream computes); band-pass only"),
    ] = "zero",
) -> None:
    """Preprocess every run (paper pipeline) into the Parquet epoch store."""
    from megdecode.config import ConfigError
    from megdecode.data.preprocess import PreprocessConfig

    try:
        cfg = PreprocessConfig(preset=preset, filter_phase=filter_phase)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from err
    report = _preprocess(bids_root, out, subjects, ray, address, cfg)
    typer.echo(json.dumps(plain(report), indent=2, default=str))


def latents(
    store: Annotated[str, typer.Option(help="epoch store (lists the images): a path or URI")],
    bids_root: Annotated[
        str, typer.Option("--bids", help="BIDS root holding stimuli/: a path or URI")
    ],
    out: Annotated[str, typer.Option(help="latents folder: a path or s3://, gs://")],
    encoder: Annotated[
        list[str],
        typer.Option(
            help="handcrafted | clip-vision[-tokens] | clip-text[-tokens] | autokl[-avg] | dinov2 | vgg19 | efficientnet-lite0"
        ),
    ] = ["handcrafted"],  # noqa: B006
    images_root: Annotated[
        Path | None, typer.Option(help="images folder (real THINGS images)")
    ] = None,
    distractors: Annotated[
        Path | None,
        typer.Option(
            help="folder of never-shown images (THINGS: the paper's 3,659) added to the large "
            "test set's candidates; the twin's own are always encoded"
        ),
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
    efficientnet_weights: Annotated[
        Path | None,
        typer.Option(help="EfficientNet-Lite0 checkpoint; default: the `pretrained` extra's"),
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
    """Encode every stimulus of the store (and the never-shown distractors) into
    latents/<name>.parquet."""
    from megdecode.files import check_access
    from megdecode.latents.distributed import ray_encode_fn
    from megdecode.latents.registry import encoder_factory, make_encoder
    from megdecode.latents.stage import build_latents

    for where in (store, bids_root, out):
        check_access(where)
    if ray:
        from megdecode.raycluster import init_ray

        init_ray(address)
    weights: dict[str, Any] = {  # per-encoder options: paths, model names, a flag
        "autokl_weights": autokl_weights,
        "dinov2_weights": dinov2_weights,
        "vgg19_weights": vgg19_weights,
        "efficientnet_weights": efficientnet_weights,
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
            store,
            bids_root,
            out,
            enc,
            images_root=images_root,
            encode_fn=encode_fn,
            distractors=distractors,
        )
        typer.echo(json.dumps(plain(report), default=str))


def _preprocess(
    bids_root: str,
    out: str,
    subjects: list[str] | None,
    use_ray: bool,
    address: str | None,
    cfg: PreprocessConfig,
) -> BuildReport:
    """`build_epoch_store`, on a Ray cluster started (or attached) here and shut down after."""
    from megdecode.data.build import build_epoch_store
    from megdecode.files import check_access

    for where in (bids_root, out):
        check_access(where)  # a bad bucket or endpoint fails here, in seconds, naming it
    if not use_ray:
        return build_epoch_store(bids_root, out, cfg, subjects=subjects)
    import ray as ray_module

    from megdecode.raycluster import init_ray

    init_ray(address)
    try:
        return build_epoch_store(bids_root, out, cfg, subjects=subjects, use_ray=True)
    finally:
        ray_module.shutdown()
