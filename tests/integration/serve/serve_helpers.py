"""Helpers shared by the serve tests (importable: the test folder is on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fixtures.configs import SMALL_BRAIN

if TYPE_CHECKING:
    import numpy as np


def train_bundle(
    run: Path, out: Path, epochs: int = 1, seed: int = 0, tmin: float = 0.0, tmax: float = 0.5
) -> Path:
    from megdecode.train import fit
    from megdecode.train_config import FitConfig, TrainConfig

    torch.set_num_threads(1)
    cfg = FitConfig(
        store=str(run / "store"),
        latents_dir=str(run / "latents"),
        model=SMALL_BRAIN,
        train=TrainConfig(
            max_epochs=epochs, batch_size=32, patience=epochs, seed=seed, tmin=tmin, tmax=tmax
        ),
    )
    result = fit(cfg, out_dir=out)
    assert result.bundle_path is not None
    return result.bundle_path


def window(bundle_dir: Path, seed: int = 0) -> tuple[str, np.ndarray]:
    """(first subject, a random (C, T) float32 window shaped for the bundle)."""
    import numpy as np

    from megdecode.bundle_io import load_bundle

    b = load_bundle(bundle_dir)
    rng = np.random.default_rng(seed)
    return b.subjects[0], rng.standard_normal((len(b.ch_names), b.n_times)).astype(np.float32)


def is_error_body(status: int, text: str) -> dict:
    """The body of a failure: exactly {error, detail}, strings, no traceback."""
    import json

    body = json.loads(text)
    assert set(body) == {"error", "detail"}, (status, text)
    assert isinstance(body["error"], str) and isinstance(body["detail"], str), text
    assert "Traceback" not in text and 'File "' not in text, text
    return body
