"""Loading the served model: a bundle folder or a registry URI -> model, gallery and card.

Kept apart from the deployment so it can be tested and reused (the demo, the CLI)
without Serve. ``models:/<name>@<alias>`` resolves through the MLflow registry
(`megdecode.model_registry.resolve_bundle`); ``models:/<name>/<version>`` pins a version. The
model runs in its serving layout (`BrainModule.folded`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from megdecode.bundle import ModelBundle
from megdecode.model_registry import resolve_bundle
from megdecode.models.brain import BrainModule
from megdecode.predict import load_model
from megdecode.serve.channels import ChannelOrder
from megdecode.serve.gallery import Gallery

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One loaded bundle and what requests need from it."""

    model: BrainModule
    bundle: ModelBundle
    gallery: Gallery
    card: dict[str, Any]
    dtype: torch.dtype = (
        torch.float32
    )  # the model's; inputs are cast to it, outputs back to float32
    # Windows sent with channel names are reordered to the bundle's channels through it;
    # it lives with the model so that a reload starts a cache of its own.
    channels: ChannelOrder = field(init=False)

    def __post_init__(self) -> None:
        self.channels = ChannelOrder(self.bundle.ch_names)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.bundle.ch_names), self.bundle.n_times

    @torch.no_grad()
    def forward(self, windows: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """windows (N, C, T) float32, subjects (N,) int -> (clip (N, F), mse (N, F))."""
        # A copy only when needed: request buffers are read-only, a stacked batch is not.
        x = torch.from_numpy(np.require(windows, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])).to(
            self.dtype
        )
        out = self.model(x, torch.from_numpy(np.asarray(subjects, np.int64)))
        return out.clip.float().numpy(), out.mse.float().numpy()


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NO_STATS_WARNING = (
    "this bundle stores no prediction statistics (made before they were stored): "
    "/v1/reconstruct feeds the generator the MSE head's output without z-scoring it, so its "
    "images have too small a spread and differ from the offline evaluation's; retrain the "
    "model to store them"
)


def stats_card(bundle: ModelBundle) -> dict[str, Any]:
    """The card's ``prediction_stats`` ({reference, n} or None) and ``warnings`` (a list of
    sentences; one when the statistics are missing), so a client sees it, not only a log."""
    stats = bundle.prediction_stats
    if stats is None:
        return {"prediction_stats": None, "warnings": [NO_STATS_WARNING]}
    return {"prediction_stats": stats.describe(), "warnings": []}


def load_served_model(
    source: str, tracking_uri: str = "", precision: str = "float32"
) -> LoadedModel:
    """Fetch, load and check a bundle; build its gallery and its public card.

    precision "bfloat16" runs the model in bfloat16 (opt-in, ``decoder.precision``): on CPUs
    with AMX / AVX512-BF16 a forward is ~2x faster and batches gain more, at ~1e-5 cosine
    distance from the float32 latent, which may reorder near-tied gallery images.
    """
    path, registry = resolve_bundle(source, tracking_uri)
    model, bundle = load_model(path)
    dtype = PRECISIONS[precision]
    model = model.folded().to(dtype)
    gallery = Gallery.from_bundle(bundle)
    card = {
        "name": registry.name,
        "version": registry.version,
        "alias": registry.alias,
        "run_id": registry.run_id,
        "source": source,
        "latent_name": bundle.latent_name,
        "latent_dim": len(bundle.latent_mean),
        "window": {
            "tmin": bundle.tmin,
            "tmax": bundle.tmax,
            "sfreq": bundle.sfreq,
            "n_times": bundle.n_times,
        },
        "channels": {"n": len(bundle.ch_names), "names": list(bundle.ch_names)},
        "subjects": list(bundle.subjects),
        "metrics": dict(bundle.metrics),
        "git_commit": bundle.git_commit,
        "gallery_size": len(gallery),
        "precision": precision,
        "streaming": {
            "available": bundle.streamable,
            "filter_phase": bundle.preprocess.filter_phase
            if bundle.preprocess is not None
            else "zero",
            "preset": bundle.preprocess.preset if bundle.preprocess is not None else None,
        },
        **stats_card(bundle),
    }
    logger.info("loaded model %s (version %s) from %s", card["name"], card["version"], path)
    return LoadedModel(model, bundle, gallery, card, dtype)
