"""Helpers shared by the serve tests (importable: the test folder is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

SMALL = {"hidden_channels": 16, "merger_channels": 16, "fourier_freqs": 3, "depth": 1, "projection_hidden": 16}


def train_bundle(run: Path, out: Path, epochs: int = 1, seed: int = 0, tmin: float = 0.0, tmax: float = 0.5) -> Path:
    from megdecode.models.brain import BrainConfig
    from megdecode.train import FitConfig, TrainConfig, fit

    torch.set_num_threads(1)
    cfg = FitConfig(store=str(run / "store"), latents_dir=str(run / "latents"), model=BrainConfig(**SMALL),
                    train=TrainConfig(max_epochs=epochs, batch_size=32, patience=epochs, seed=seed, tmin=tmin, tmax=tmax))
    result = fit(cfg, out_dir=out)
    assert result.bundle_path is not None
    return result.bundle_path
