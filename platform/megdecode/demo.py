"""The whole chain on the MEG twin, as `make demo` / `megdecode demo` runs it.

simulate -> preprocess (Ray Data) -> latents -> Tune + Optuna search (MLflow) -> the
champion registered -> served on 127.0.0.1 and queried over HTTP -> reconstructions.
Every stage is timed, the timings and outputs go to ``<out>/summary.json``, and the Ray
cluster the demo started is shut down at the end, also on error or Ctrl+C. A rerun
rebuilds the twin (deterministic for a seed) and starts a new search next to the earlier
ones in the same MLflow store.

The later stages are optional (``tune=False`` stops after the latents), so the tests can
run the data half on the tiny twin in seconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megdecode.records import plain

logger = logging.getLogger(__name__)

DEFAULT_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml"


@dataclass(frozen=True)
class DemoSetup:
    """What the demo builds and where. ``space=None``: the repository's smoke.yaml."""

    out: Path = Path("runs/demo")
    size: str = "demo"
    seed: int = 0
    use_ray: bool = True
    clip_weights: Path | None = None
    clip_model: str = "ViT-L-14"
    tune: bool = True
    space: Path | None = None
    num_samples: int | None = None
    serve: bool = True
    serve_requests: int = 5
    generate: bool = True  # train the twin generator and reconstruct test images from decoded MEG
    generator_seconds: float = 150.0  # the generator's training budget (wall clock)
    generator_steps: int = 50  # DDIM steps per reconstruction


@dataclass
class Stage:
    name: str
    seconds: float
    result: Any


def run_demo(setup: DemoSetup, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage; return (and write) the summary. See the module docstring."""
    import ray

    from megdecode.raycluster import init_ray

    out = Path(setup.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started_ray = setup.use_ray and not ray.is_initialized()
    if started_ray:
        init_ray()
    stages: list[Stage] = []
    start = time.perf_counter()

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        echo(f"== {name} ==")
        t0 = time.perf_counter()
        result = fn()
        stages.append(Stage(name, time.perf_counter() - t0, result))
        echo(f"== {name}: {stages[-1].seconds:.0f} s ==")
        return result

    run = _twin_run(setup)
    try:
        stage("simulate", lambda: simulate_twin(run, out))
        stage("preprocess", lambda: _preprocess(run, out))
        stage("latents", lambda: encode_latents(run, out))
        if setup.tune:
            report = stage("tune", lambda: _tune(setup, out))
            echo(report.text())
            if setup.serve and report.champion:
                stage("serve", lambda: _serve(setup, out, report, echo))
            if setup.generate and report.best:
                stage("reconstruct", lambda: _reconstruct(setup, out, report, echo))
    finally:
        if started_ray:
            _stop_serve()
            ray.shutdown()
    seconds = {s.name: round(s.seconds, 1) for s in stages}
    summary: dict[str, Any] = {
        "out": str(out),
        "seconds_total": round(time.perf_counter() - start, 1),
        "stages": seconds,
    } | {s.name: plain(s.result) for s in stages}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    echo(
        f"demo done in {summary['seconds_total']:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    )
    echo(f"summary: {out / 'summary.json'}")
    return summary


@dataclass(frozen=True)
class TwinRun:
    """A run folder on the twin: ``bids/`` (simulated), ``store/`` (preprocessed), ``latents/``.

    What every later stage reads (train, tune, serve, evaluate). The demo builds one of
    size ``demo``; the tests and the benchmarks build ``tiny`` ones with the same functions,
    so all three exercise one path. `encoders`: latents built from the stimuli's pixels;
    `twin_latents`: also the twin's ground-truth factors (twin-lowlevel, twin-category).
    """

    size: str = "tiny"
    seed: int = 0
    use_ray: bool = False
    n_jobs: int = 1  # processes that simulate subjects
    encoders: tuple[str, ...] = ("handcrafted",)
    twin_latents: bool = False
    clip_model: str = "ViT-L-14"
    clip_weights: Path | None = None


def simulate_twin(run: TwinRun, out: Path) -> Any:
    """``out/bids``: the twin of `run.size`, deterministic for `run.seed`."""
    from megdecode.twin.config import TwinConfig
    from megdecode.twin.simulate import simulate

    return simulate(TwinConfig.preset(run.size, seed=run.seed), out / "bids", n_jobs=run.n_jobs)


def preprocess_twin(run: TwinRun, out: Path) -> Any:
    """``out/store``: the epoch store of ``out/bids`` (on Ray Data when `run.use_ray`)."""
    from megdecode.data.build import build_epoch_store

    return build_epoch_store(out / "bids", out / "store", use_ray=run.use_ray)


def encode_latents(run: TwinRun, out: Path) -> list[Any]:
    """``out/latents``: every encoder of `run.encoders`, then the twin's own factors."""
    from megdecode.latents.registry import make_encoder
    from megdecode.latents.stage import build_latents
    from megdecode.twin.truth_latents import write_twin_latents

    built: list[Any] = [
        build_latents(
            out / "store",
            out / "bids",
            out / "latents",
            make_encoder(name, run.clip_model, run.clip_weights),
        )
        for name in run.encoders
    ]
    if run.twin_latents:
        built += [str(p) for p in write_twin_latents(out / "bids", out / "latents")]
    return built


def build_twin_run(run: TwinRun, out: str | Path) -> Path:
    """Simulate, preprocess and encode into `out` (created); returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    simulate_twin(run, out)
    preprocess_twin(run, out)
    encode_latents(run, out)
    return out


def _twin_run(setup: DemoSetup) -> TwinRun:
    """The demo's run folder: CLIP-Vision too when local weights are given, twin factors for
    the generator, subjects simulated by two processes."""
    if setup.clip_weights is None:
        logger.warning(
            "no --clip-weights given: skipping CLIP-Vision latents (no weights are downloaded)"
        )
    encoders = ("handcrafted",) if setup.clip_weights is None else ("handcrafted", "clip-vision")
    return TwinRun(
        size=setup.size,
        seed=setup.seed,
        use_ray=setup.use_ray,
        n_jobs=2,
        encoders=encoders,
        twin_latents=True,
        clip_model=setup.clip_model,
        clip_weights=setup.clip_weights,
    )


def _preprocess(run: TwinRun, out: Path) -> Any:
    from megdecode.data import store as epoch_store

    report = preprocess_twin(run, out)
    return plain(report) | {"rows_per_subject": epoch_store.read_manifest(out / "store").row_counts}


def _tune(setup: DemoSetup, out: Path) -> Any:
    from megdecode.search.driver import run_search
    from megdecode.search.setup import SearchSetup
    from megdecode.search.space_file import load_space
    from megdecode.tracking import default_tracking_uri

    space = Path(setup.space or DEFAULT_SPACE).resolve()
    name = f"{load_space(space).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    search = SearchSetup(
        space=str(space),
        data=str(out),
        out=str(out / "tune"),
        experiment=name,
        tracking_uri=default_tracking_uri(out),
        num_samples=setup.num_samples,
    )
    report = run_search(search)
    if (
        report.best
    ):  # a stable path to the champion's bundle, for benchmarks and `megdecode serve --bundle`
        import shutil

        shutil.copytree(report.best["bundle"], out / "champion", dirs_exist_ok=True)
    return report


def _serve(setup: DemoSetup, out: Path, report: Any, echo: Callable[[str], None]) -> Any:
    """Serve the champion on 127.0.0.1, decode test windows over HTTP (top-5, latency each),
    and write a window it accepts, for `curl -d @<out>/window.json` against `make serve`."""
    from megdecode.serve.demo import decode_demo, example_window

    table = decode_demo(
        report.champion, out / "store", n=setup.serve_requests, tracking_uri=report.tracking_uri
    )
    window = example_window(out / "store", report.best["bundle"], out / "window.json")
    echo(
        f"hits in the top 5: {int(table['hit'].sum())}/{len(table)}; median latency "
        f"{table['latency_ms'].median():.1f} ms (server {table['server_ms'].median():.1f} ms)"
    )
    echo(
        f"serve it again: make serve DEMO_OUT={out}, then\n  curl -X POST http://127.0.0.1:8000/v1/decode "
        f"-H 'content-type: application/json' -d @{window}"
    )
    return table.to_dict(orient="records")


def _reconstruct(setup: DemoSetup, out: Path, report: Any, echo: Callable[[str], None]) -> Any:
    """Train the twin generator on the train/val images, then reconstruct the small test
    set from the champion's decoded MEG (averaged over repetitions), next to the oracle
    (ground-truth latents) and random-latent rows; grid + table logged to the champion's run."""
    from megdecode.bundle_io import load_bundle
    from megdecode.generate.evaluation import (
        GenEvalConfig,
        format_markdown,
        generator_defaults,
        run_and_log,
    )
    from megdecode.generate.train import GenTrainConfig, train_generator

    champion = out / "champion"
    parts = [name for name, _ in load_bundle(champion).latent_parts]
    conditions = tuple(n for n in parts if n in GENERATION_LATENTS) or tuple(parts)
    gen_dir = train_generator(
        GenTrainConfig(
            store=str(out / "store"),
            bids_root=str(out / "bids"),
            latents_dir=str(out / "latents"),
            latents=conditions,
            steps=100_000,
            max_seconds=setup.generator_seconds,
            sample_steps=setup.generator_steps,
        ),
        out / "generator",
    )
    cfg = GenEvalConfig(
        bundle=str(champion),
        generator=str(gen_dir),
        bids_root=str(out / "bids"),
        out=str(out / "reconstructions"),
        kinds=("averaged", "oracle", "random"),
        generate=generator_defaults(gen_dir).replace(steps=setup.generator_steps),
    )
    table, grid, _ = run_and_log(cfg, report.tracking_uri, run_id=report.best.get("run_id") or None)
    echo(format_markdown(table))
    echo(f"reconstructions (seen | oracle | decoded, averaged | random) -> {grid}")
    return table


# the twin's generator conditions on the image factors the simulated brain responds to
GENERATION_LATENTS = ("twin-lowlevel",)


def _stop_serve() -> None:
    """Shut Serve down if a stage started it (its controller and proxy are Ray actors)."""
    try:
        from ray import serve

        serve.shutdown()
    except Exception as exc:  # nothing must hide the demo's own result or error
        logger.warning("serve.shutdown: %s", exc)
