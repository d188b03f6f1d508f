"""Loading the served model: a bundle folder or a registry URI -> model, gallery and card.

Kept apart from the deployment so it can be tested and reused (the demo, the CLI)
without Serve. ``models:/<name>@<alias>`` resolves through the MLflow registry
(`megdecode.tracking.Tracker.resolve_alias`); ``models:/<name>/<version>`` pins a version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megdecode.bundle import ModelBundle
from megdecode.models.brain import BrainModule
from megdecode.predict import load_model
from megdecode.serve.gallery import Gallery

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One loaded bundle and what requests need from it."""

    model: BrainModule
    bundle: ModelBundle
    gallery: Gallery
    card: dict[str, Any]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.bundle.ch_names), self.bundle.n_times

    @torch.no_grad()
    def forward(self, windows: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """windows (N, C, T) float32, subjects (N,) int -> (clip (N, F), mse (N, F))."""
        out = self.model(torch.from_numpy(np.array(windows, np.float32)),  # a copy: request buffers are read-only
                         torch.from_numpy(np.asarray(subjects, np.int64)))
        return out.clip.numpy(), out.mse.numpy()


def parse_model_uri(source: str) -> tuple[str, str | None, int | None]:
    """models:/name@alias -> (name, alias, None); models:/name/3 -> (name, None, 3)."""
    rest = source.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, int(version)
    raise ValueError(f"model URI {source!r}: expected models:/<name>@<alias> or models:/<name>/<version>")


def fetch(source: str, tracking_uri: str = "", dst: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The local bundle folder of `source` and registry facts (name, version, run id)."""
    if not source:
        raise ValueError("no model configured: set decoder.model to models:/<name>@<alias> or a bundle folder")
    if not source.startswith("models:/"):
        path = Path(source)
        if not (path / "bundle.json").is_file():
            raise FileNotFoundError(f"no model bundle at {path} (no bundle.json)")
        return path, {"name": path.name, "version": None, "run_id": None}
    if not tracking_uri:
        raise ValueError(f"{source} needs a tracking URI (decoder.tracking_uri or MEGDECODE_TRACKING_URI)")
    import mlflow.artifacts

    from megdecode.tracking import Tracker

    name, alias, number = parse_model_uri(source)
    tracker = Tracker(tracking_uri)
    version = (tracker.client.get_model_version_by_alias(name, alias) if alias
               else tracker.client.get_model_version(name, str(number)))
    if alias:
        path = tracker.resolve_alias(name, alias, dst)
    else:
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst) if dst else None,
                                                    tracking_uri=tracking_uri)
        found = sorted(Path(local).rglob("bundle.json"), key=lambda p: len(p.parts))
        if not found:
            raise FileNotFoundError(f"{source} holds no bundle.json")
        path = found[0].parent
    return path, {"name": name, "version": int(version.version), "run_id": version.run_id, "alias": alias}


def load_served_model(source: str, tracking_uri: str = "", store: str | None = None) -> LoadedModel:
    """Fetch, load and check a bundle; build its gallery and its public card."""
    path, registry = fetch(source, tracking_uri)
    model, bundle = load_model(path)
    gallery = Gallery.from_bundle(bundle, store)
    card = {
        "name": registry["name"], "version": registry["version"], "alias": registry.get("alias"),
        "run_id": registry["run_id"] or bundle.extra.get("run_id"), "source": source,
        "latent_name": bundle.latent_name, "latent_dim": len(bundle.latent_mean),
        "window": {"tmin": bundle.tmin, "tmax": bundle.tmax, "sfreq": bundle.sfreq, "n_times": bundle.n_times},
        "channels": {"n": len(bundle.ch_names), "names": list(bundle.ch_names)},
        "subjects": list(bundle.subjects), "metrics": dict(bundle.metrics), "git_commit": bundle.git_commit,
        "gallery_size": len(gallery),
        "streaming": {"available": "preprocess" in bundle.extra and "scalers" in bundle.extra,
                      "filter_phase": (bundle.extra.get("preprocess") or {}).get("filter_phase", "zero")},
    }
    logger.info("loaded model %s (version %s) from %s", card["name"], card["version"], path)
    return LoadedModel(model, bundle, gallery, card)
