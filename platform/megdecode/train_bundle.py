"""The model bundle a training run saves (DESIGN §6), built from the run's data and model.

`megdecode.train.Trainer.finish` calls `make_bundle` with the restored best weights; the
store's manifest gives the preprocessing and per-subject scalers the online stream needs.
"""

from __future__ import annotations

import numpy as np

from megdecode.bundle import ModelBundle, PredictionStats, git_commit
from megdecode.bundle_fields import (
    FitRecord,
    GalleryMeta,
    LatentPart,
    LossState,
    SubjectScaler,
    preprocess_from_json,
)
from megdecode.data import store as epoch_store
from megdecode.data.preprocess import PreprocessConfig
from megdecode.losses import CombinedLoss
from megdecode.models.brain import BrainModule
from megdecode.rundata import RunData
from megdecode.train_config import FitConfig


def make_bundle(
    cfg: FitConfig,
    data: RunData,
    model: BrainModule,
    metrics: dict[str, float],
    *,
    prediction_stats: PredictionStats,
    loss: CombinedLoss,
) -> ModelBundle:
    """The bundle of DESIGN §6; the gallery is every shown test image: the small set's
    repeated images and the large set's zero-shot exemplars (`data.test`), without the
    never-shown distractors, whose category and file the run does not know; a served top-k
    therefore ranks among small + large candidates, the set a replayed test window comes from.

    `prediction_stats` and `loss` (its learned temperature is the bundle's loss state) are
    required so that no path saves a bundle without them (the served reconstruction would
    silently skip its z-scoring)."""
    targets = data.train.target.numpy()
    gallery_ids = np.unique(data.test.meta["image_id"].to_numpy())
    gallery = data.latents[np.searchsorted(data.latent_ids, gallery_ids)]
    meta = data.test.meta.drop_duplicates("image_id").set_index("image_id").reindex(gallery_ids)
    parts = data.latent_parts or [(cfg.train.latent, int(data.latents.shape[1]))]
    preprocess, scalers = serving_fields(cfg.store, data.subjects)
    return ModelBundle(
        model_config=model.cfg.to_flat_dict(),
        state_dict=model.state_dict(),
        loss=LossState.of(loss),
        tmin=data.tmin,
        tmax=data.tmax,
        sfreq=data.sfreq,
        n_times=data.train.n_times,
        ch_names=data.ch_names,
        pos2d=data.pos2d.astype(np.float32),
        subjects=data.subjects,
        latent_name=cfg.train.latent,
        latent_parts=[LatentPart(n, int(w)) for n, w in parts],
        latent_mean=targets.mean(0),
        latent_std=targets.std(0) + 1e-8,
        gallery=gallery,
        gallery_ids=gallery_ids,
        gallery_meta=GalleryMeta(
            tuple(meta["category"].fillna("").astype(str)),
            tuple(meta["image_path"].fillna("").astype(str)),
        ),
        fit_config=FitRecord(cfg.to_flat_dict()),
        preprocess=preprocess,
        scalers=scalers,
        metrics=metrics,
        git_commit=git_commit(),
        prediction_stats=prediction_stats,
    )


def serving_fields(
    store: str, subjects: list[str]
) -> tuple[PreprocessConfig | None, dict[str, SubjectScaler]]:
    """The bundle's ``preprocess`` and ``scalers`` (subject -> robust-scaler centre/scale and the
    native ``raw_sfreq``), from the store's manifest: the online stream rebuilds model inputs
    from raw samples with them. A store that recorded none gives a bundle that cannot stream."""
    manifest = epoch_store.read_manifest(store)
    if not (manifest.preprocess and manifest.scalers):
        return None, {}
    scalers = {
        s: SubjectScaler.from_json(manifest.scalers[s]) for s in subjects if s in manifest.scalers
    }
    return preprocess_from_json(manifest.preprocess), scalers
