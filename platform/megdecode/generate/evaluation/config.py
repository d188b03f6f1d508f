"""The generation evaluation's config, the names of its rows, and a generator folder's defaults.

Rows of the table (each scored against the seen images):

    single    one reconstruction per trial (real time)
    averaged  predictions averaged over an image's repetitions, per subject, then decoded
    oracle    the ground-truth latents of the seen images: the generator's own ceiling
    random    latents drawn from N(train mean, train std) per dimension: the floor
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megdecode.config import FlatConfig
from megdecode.generate.pipeline import GenerateConfig

logger = logging.getLogger(__name__)

KINDS = ("single", "averaged", "oracle", "random")
PRED_STATS = ("bundle", "set")
NOT_SCALED = "not decoded"  # pred_stats of the oracle and random rows (no MSE output to scale)
LARGE_KIND = "single, test_large"  # the large test set's single trials: latent fidelity only
DECODED = ("single", "averaged")  # the kinds made from MSE outputs, z-scored per `pred_stats`


@dataclass(frozen=True)
class GenEvalConfig(FlatConfig):
    bundle: str = ""  # bundle folder or models:/name@alias
    generator: str = ""  # generator folder: Versatile Diffusion or twin (generate.loader)
    bids_root: str = ""  # where the images are (root/stimuli unless images_root)
    images_root: str = ""
    store: str = ""  # default: the store the bundle was trained on
    latents_dir: str = ""  # default: the bundle's latents folder
    out: str = ""  # local output folder
    max_images: int = 0  # 0 = every test image; else the first K image ids (smoke runs)
    metric_weights: str = ""  # folder of metric networks (features.py); "" = PixCorr/SSIM only
    actors: int = 0  # generation actors; 0 = one per CPU (or per GPU fraction)
    gpu_fraction: float = 0.25  # of a GPU per actor when the cluster has GPUs
    batch_size: int = 16
    grid_per_group: int = 4
    rank_by: str = "averaged"  # which row's scores rank the grid
    kinds: tuple[str, ...] = KINDS  # rows to generate; "single" is most of the work (one per trial)
    # z-score MSE outputs with the bundle's stored statistics (as served) or each set's own (decode.py)
    pred_stats: str = "bundle"
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(self.kinds)}")
        if self.pred_stats not in PRED_STATS:
            raise ValueError(f"pred_stats must be one of {PRED_STATS}, got {self.pred_stats!r}")


def generator_meta(path: str | Path) -> dict[str, Any]:
    """A generator folder's generator.json (conditions, sampling defaults), without loading weights."""
    meta_path = Path(path) / "generator.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no weights at {path}: no generator.json")
    return dict(json.loads(meta_path.read_text()))


def generator_defaults(path: str | Path) -> GenerateConfig:
    """The sampling defaults a generator folder stores (its guidance, steps)."""
    return GenerateConfig.from_flat_dict(generator_meta(path).get("defaults", {}))
