"""`megdecode train-generator` and `reconstruct`: the image generator and one window's image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from megdecode.cli.common import fail


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


def reconstruct(
    window: Annotated[Path, typer.Option(help="a /v1/decode JSON body: {subject, data: C x T}")],
    generator: Annotated[
        Path,
        typer.Option(
            help="generator folder: Versatile Diffusion (model_index.json) or twin (generator.json)"
        ),
    ],
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
        fail(str(exc))
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
