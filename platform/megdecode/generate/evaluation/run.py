"""Reconstruction evaluation: decode the test MEG, generate on Ray, score, log to MLflow.

For the small test set of a brain-module bundle (a folder or ``models:/name@alias``):

    test MEG windows -> brain module (MSE head) -> to_latent_space -> generator -> images

The bundle is loaded once here and handed to each step: `decode` (the latent sets, scaled
per `pred_stats`), `ray_generate` (the images, on an actor pool), `scores` (the metrics
table) and `report` (latent fidelity, grid, files, MLflow). `config` names the rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from megdecode.generate.evaluation.config import KINDS, GenEvalConfig, generator_meta
from megdecode.generate.evaluation.decode import decode_test_set
from megdecode.generate.evaluation.ray_generate import generate_kinds
from megdecode.generate.evaluation.report import log_evaluation, write_fidelity, write_results
from megdecode.generate.evaluation.scores import image_paths, metric_nets, score_kinds, seen_images

logger = logging.getLogger(__name__)


def evaluate_generation(cfg: GenEvalConfig, bundle_dir: Path) -> tuple[pd.DataFrame, Path]:
    """Decode, generate (Ray must be initialised), score; write out/; returns (table, grid path)."""
    from megdecode.bundle_io import load_bundle

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_meta = generator_meta(cfg.generator)
    bundle = load_bundle(bundle_dir)
    missing = sorted(set(gen_meta["conditions"]) - {name for name, _ in bundle.latent_parts})
    if missing:
        raise ValueError(
            f"the generator is conditioned on {sorted(gen_meta['conditions'])}, the bundle "
            f"predicts {bundle.latent_name!r}: nothing decodes {missing}"
        )
    inputs = decode_test_set(cfg, bundle)
    kinds = [k for k in KINDS if k in cfg.kinds]
    fidelity = write_fidelity(inputs, kinds, out)
    paths = image_paths(cfg, bundle)
    nets = metric_nets(cfg.metric_weights)
    recon = generate_kinds(cfg, inputs, kinds)
    seen = seen_images(inputs, kinds, paths)
    table = score_kinds(inputs, recon, seen, nets, fidelity)
    grid = write_results(cfg, inputs, table, recon, seen, nets, out)
    return table, grid


def run_and_log(
    cfg: GenEvalConfig,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str = "megdecode-generate",
) -> tuple[pd.DataFrame, Path, str | None]:
    """Resolve the bundle, evaluate (Ray initialised by the caller), log to MLflow when a URI is given.

    Metrics are logged as ``gen/<kind>/<metric>``; the table as tables/generate_metrics.csv
    and the grid under figures/. An existing `run_id` is logged into and left open (it is
    the caller's); a new run is ended. Returns (table, grid path, run id).
    """
    from megdecode.model_registry import resolve_bundle

    out = Path(cfg.out)
    bundle_dir, _ = resolve_bundle(cfg.bundle, tracking_uri or "", out / "bundle")
    table, grid = evaluate_generation(cfg, bundle_dir)
    if not tracking_uri:
        return table, grid, None
    from megdecode.tracking import Tracker

    tracker = Tracker(tracking_uri, experiment)
    own = run_id is None
    if own:
        run_id = tracker.client.create_run(
            tracker.experiment_id,
            run_name="generate-eval",
            tags={"megdecode.kind": "generate-eval"},
        ).info.run_id
    assert run_id is not None
    params = {f"gen_eval.{k}": v for k, v in cfg.to_flat_dict().items()}
    log_evaluation(tracker, run_id, params, table, grid, out)
    if own:
        tracker.client.set_terminated(run_id)
    logger.info("logged generation metrics to run %s", run_id)
    return table, grid, run_id
