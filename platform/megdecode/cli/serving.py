"""`megdecode serve`, `serve-example` and `demo`: the decoder over HTTP; the whole twin chain."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from megdecode.cli.common import Size

logger = logging.getLogger(__name__)


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
        Path | None,
        typer.Option(
            help="generator folder for /v1/reconstruct: a Versatile Diffusion folder "
            "(model_index.json) or a twin generator (generator.json)"
        ),
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
