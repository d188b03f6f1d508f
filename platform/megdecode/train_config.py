"""The configs of one training run: `TrainConfig` (optimisation, window) and `FitConfig`.

`FitConfig` is everything `megdecode.train.fit` needs; it flattens to MLflow params and
Tune keys (``model.depth``, ``train.lr``), so the search space, the CLI and the bundle's
fit record all speak the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megdecode.config import ConfigError, FlatConfig
from megdecode.losses import LossConfig
from megdecode.models.brain import BrainConfig

# The metrics early stopping can watch, and the direction that improves them.
MONITORS = {"val/clip_loss": "min", "val/top5": "max"}


@dataclass(frozen=True)
class TrainConfig(FlatConfig):
    """Optimisation and data selection for one run (the paper's Adam, lr, batch size, window)."""

    latent: str = "handcrafted"  # latents_dir/<latent>.parquet holds the targets
    tmin: float = -0.5  # window (s, relative to onset), sliced from the stored epochs
    tmax: float = 1.0
    seed: int = 0
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    batch_size: int = 128
    max_epochs: int = 100
    patience: int = 10  # epochs without improvement of `monitor` before stopping
    monitor: str = "val/clip_loss"  # or "val/top5"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor: expected one of {sorted(MONITORS)}, got {self.monitor!r}")
        if self.tmin >= self.tmax:
            raise ConfigError(f"window: tmin={self.tmin} must be < tmax={self.tmax}")
        if self.batch_size < 2:
            raise ConfigError("batch_size: InfoNCE needs at least 2 samples per batch")


@dataclass(frozen=True)
class FitConfig(FlatConfig):
    """Everything a run needs; flattens to MLflow params and Tune keys."""

    store: str = ""
    latents_dir: str = ""
    model: BrainConfig = field(default_factory=BrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
