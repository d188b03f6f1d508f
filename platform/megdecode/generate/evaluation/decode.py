"""The test set decoded by a brain module: the latent sets the generator draws from.

The MSE outputs are z-scored (`pred_stats`) with the bundle's stored prediction
statistics ("bundle", the default: its validation predictions, what `/v1/reconstruct`
uses; the drawn trials are also decoded as the app decodes them, one window per forward
of the folded model, so a single trial's latent here is, bit for bit, the one the app
draws for that window, and no reconstruction depends on the other test trials; the
images match too where batched sampling rounds as one-image sampling does, as on the
demo's generator: 20/20, benchmarks/pred_stats.py) or over each decoded set itself ("set":
the single trials over all single trials, the averages over all averages; transductive,
and noisy for a few images, but it puts every set at the training latents' spread,
averages included, which the bundle's single-trial statistics leave narrower). The table's
``pred_stats`` column says which a row used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from megdecode.bundle import ModelBundle, PredictionStats
from megdecode.data import store as epoch_store
from megdecode.evaluation.retrieval import average_by_image
from megdecode.generate.evaluation.config import LARGE_KIND, GenEvalConfig
from megdecode.generate.postprocess import to_latent_space
from megdecode.latents.targets import load_target

if TYPE_CHECKING:
    from megdecode.models.brain import BrainModule

logger = logging.getLogger(__name__)


@dataclass
class EvalInputs:
    """Latent sets to generate from, each aligned with its seen image ids."""

    latents: dict[str, np.ndarray]  # kind -> (N_kind, F)
    image_ids: dict[str, np.ndarray]  # kind -> (N_kind,)
    latent_name: str
    # for the latent fidelity: every image's true latent (ids (M,), values (M, F)), and decodes
    # of other splits that are scored but not drawn, kind -> (latents (N, F), image ids (N,))
    truth: tuple[np.ndarray, np.ndarray]
    parts: list[tuple[str, int]] = field(default_factory=list)  # the target's latents [(name, F)]
    scored_only: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    pred_stats: str = "set"  # how the decoded kinds were z-scored: "set" or "bundle (val, n=N)"


def predict_split(
    cfg: GenEvalConfig,
    model: BrainModule,
    bundle: ModelBundle,
    store: str,
    split: str,
    batch_size: int = 256,
) -> tuple[np.ndarray, pd.DataFrame]:
    """MSE-head predictions (N, F) of `split`'s epochs in `store`, and their metadata
    (the first `cfg.max_images` image ids only when set)."""
    from megdecode.predict import predict_windows

    X, meta = epoch_store.load_epochs(store, splits=[split], tmin=bundle.tmin, tmax=bundle.tmax)
    if len(meta) and X.shape[2] != bundle.n_times:
        raise ValueError(f"store window has {X.shape[2]} samples, the bundle {bundle.n_times}")
    if cfg.max_images and len(meta):
        keep_ids = np.unique(meta["image_id"].to_numpy())[: cfg.max_images]
        mask = meta["image_id"].isin(keep_ids).to_numpy()
        X, meta = X[mask], meta.loc[mask].reset_index(drop=True)
    if not len(meta):
        return np.zeros((0, len(bundle.latent_mean)), np.float32), meta
    subject = np.array([bundle.subject_index(str(s)) for s in meta["subject"]], np.int64)
    _, mse = predict_windows(model, X, subject, batch_size=batch_size)
    return mse, meta


def decode_test_set(cfg: GenEvalConfig, bundle: ModelBundle) -> EvalInputs:
    """Predict the small test set with the (loaded) bundle and build the four latent sets
    (and the large test set's single trials, scored for latent fidelity only)."""
    from megdecode.predict import check_store_sensors, model_from_bundle

    model = model_from_bundle(bundle)
    store = cfg.store or bundle.fit_config.store
    latents_dir = cfg.latents_dir or bundle.fit_config.latents_dir
    if not store or not latents_dir:
        raise ValueError(
            "the bundle does not name its store/latents folder; pass store and latents_dir"
        )
    manifest = epoch_store.read_manifest(store)
    check_store_sensors(bundle, manifest.ch_names, store)
    # pred_stats="bundle" decodes the drawn trials as the app does (folded layout, one window
    # per forward; batching rounds differently), so each single-trial image is the one
    # /v1/reconstruct returns for that window with the same seed
    drawn_by, batch = (model.folded(), 1) if cfg.pred_stats == "bundle" else (model, 256)
    mse, meta = predict_split(cfg, drawn_by, bundle, store, "test", batch)
    if not len(meta):
        raise ValueError(f"the store {store} has no epochs in the small test set (split 'test')")
    ids = meta["image_id"].to_numpy(np.int64)
    stats, used = prediction_scaling(cfg, bundle)
    single = to_latent_space(mse, bundle.latent_mean, bundle.latent_std, stats)
    avg_ids, avg = average_by_image(mse, ids, groups=meta["subject"].to_numpy())
    averaged = to_latent_space(avg, bundle.latent_mean, bundle.latent_std, stats)
    lat_ids, lat, _ = load_target(latents_dir, bundle.latent_name)
    unique = np.unique(ids)
    rows = pd.Index(lat_ids).get_indexer(unique)
    if (rows < 0).any():
        raise KeyError(f"{int((rows < 0).sum())} test images have no {bundle.latent_name!r} latent")
    rng = np.random.default_rng(cfg.generate.seed)
    random = (
        rng.standard_normal((len(unique), len(bundle.latent_mean))) * bundle.latent_std
        + bundle.latent_mean
    )
    large, large_meta = predict_split(cfg, model, bundle, store, "test_large")
    scored_only = (
        {LARGE_KIND: (large, large_meta["image_id"].to_numpy(np.int64))} if len(large_meta) else {}
    )
    logger.info(
        "decoded %d test trials of %d images (%s), %d large-set trials",
        len(ids),
        len(unique),
        bundle.latent_name,
        len(large_meta),
    )
    return EvalInputs(
        latents={
            "single": single,
            "averaged": averaged,
            "oracle": lat[rows],
            "random": random.astype(np.float32),
        },
        image_ids={
            "single": ids,
            "averaged": avg_ids.astype(np.int64),
            "oracle": unique,
            "random": unique,
        },
        latent_name=bundle.latent_name,
        parts=[(n, int(w)) for n, w in bundle.latent_parts],
        truth=(np.asarray(lat_ids, np.int64), lat),
        scored_only=scored_only,
        pred_stats=used,
    )


def prediction_scaling(
    cfg: GenEvalConfig, bundle: ModelBundle
) -> tuple[PredictionStats | None, str]:
    """(the statistics that z-score the MSE outputs, or None for each set's own; what the
    table says) for `cfg.pred_stats`. A bundle without stored statistics cannot be
    evaluated the served way, which is an error, not a fallback."""
    if cfg.pred_stats == "set":
        logger.info("MSE outputs z-scored over each decoded set (pred_stats=set)")
        return None, "set"
    stats = bundle.prediction_stats
    if stats is None:
        raise ValueError(
            f"the bundle {cfg.bundle} stores no prediction statistics (made before they were "
            "stored): evaluate with pred_stats='set' (--pred-stats set) or retrain it"
        )
    logger.info(
        "MSE outputs z-scored with the bundle's prediction statistics (%s set, n=%d), as served",
        stats.reference,
        stats.n,
    )
    return stats, f"bundle ({stats.reference}, n={stats.n})"
