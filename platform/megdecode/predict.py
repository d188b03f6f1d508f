"""A trained brain module from its bundle alone, and predictions on MEG windows.

Serving and `megdecode evaluate` both come through here, so a bundle is rebuilt and
checked the same way everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from megdecode.bundle import ModelBundle
from megdecode.bundle_fields import BundleError
from megdecode.bundle_io import load_bundle
from megdecode.data.sensors import require_same_sensors
from megdecode.models.brain import BrainConfig, BrainModule

logger = logging.getLogger(__name__)


def check_store_sensors(bundle: ModelBundle, store_ch_names: list[str], store: object) -> None:
    """Refuse to run `bundle` on a store whose sensors are not the bundle's, in its order.

    Matching is by sensor name (`megdecode.data.sensors`): a store of another CTF-275's
    serial runs, a store with other sensors or another order raises naming the difference,
    because the model would otherwise read each channel as another sensor.
    """
    require_same_sensors(
        list(bundle.ch_names), list(store_ch_names), "the bundle", f"store {store}"
    )


def model_from_bundle(bundle: ModelBundle) -> BrainModule:
    """Rebuild the module from the bundle's config and positions; weights must match exactly."""
    cfg = BrainConfig.from_flat_dict(bundle.model_config)
    model = BrainModule(cfg, bundle.pos2d)
    try:
        model.load_state_dict(bundle.state_dict, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"weights do not fit the bundle's model config: {exc}") from exc
    return model.eval()


def load_model(path: Path) -> tuple[BrainModule, ModelBundle]:
    bundle = load_bundle(path)
    return model_from_bundle(bundle), bundle


@torch.no_grad()
def predict_windows(
    model: BrainModule, meg: np.ndarray, subject: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """meg (N, C, T) float32, subject (N,) int -> (clip (N, F), mse (N, F)) float32."""
    model.eval()
    clips, mses = [], []
    for start in range(0, len(meg), batch_size):
        x = torch.as_tensor(meg[start : start + batch_size], dtype=torch.float32)
        s = torch.as_tensor(subject[start : start + batch_size], dtype=torch.long)
        out = model(x, s)
        clips.append(out.clip.numpy())
        mses.append(out.mse.numpy())
    return np.concatenate(clips), np.concatenate(mses)
