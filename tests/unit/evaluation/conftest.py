"""Synthetic epochs whose signal lives in one known window, shared by the evaluation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from megdecode.rundata import RunData, SplitTensors

SFREQ = 50.0
SIGNAL = (0.2, 0.3)  # s: the only window whose samples carry the latent


def synthetic_run(seed: int = 0, n_channels: int = 8, dim: int = 6) -> RunData:
    """Epochs -0.2..0.6 s at 50 Hz (T=41); a linear image of the latent during SIGNAL only.

    Splits: 80 train images x 2 trials, 10 val x 2, 12 small-test images x 3 repetitions,
    24 large-set (zero-shot) test images x 1 (24 large candidates).
    """
    rng = np.random.default_rng(seed)
    n_images = 80 + 10 + 12 + 24
    latents = rng.standard_normal((n_images, dim)).astype(np.float32)
    ids = np.arange(100, 100 + n_images)
    times = np.round(-0.2 + np.arange(41) / SFREQ, 6)
    mixing = rng.standard_normal((n_channels, dim))
    on = (times >= SIGNAL[0] - 1e-9) & (times <= SIGNAL[1] + 1e-9)

    def split(rows: np.ndarray, reps: int, name: str) -> SplitTensors:
        image = np.repeat(rows, reps)
        X = 0.3 * rng.standard_normal((len(image), n_channels, len(times)))
        X[:, :, on] += (latents[image] @ mixing.T)[:, :, None]
        meta = pd.DataFrame({"image_id": ids[image], "split": name, "subject": "S1"})
        return SplitTensors(
            meg=torch.from_numpy(X.astype(np.float32)),
            subject=torch.zeros(len(image), dtype=torch.long),
            target=torch.from_numpy(latents[image]),
            meta=meta,
        )

    test = [split(np.arange(90, 102), 3, "test"), split(np.arange(102, 126), 1, "test_large")]
    test_all = SplitTensors(
        meg=torch.cat([t.meg for t in test]),
        subject=torch.cat([t.subject for t in test]),
        target=torch.cat([t.target for t in test]),
        meta=pd.concat([t.meta for t in test], ignore_index=True),
    )
    pos2d = rng.uniform(0.1, 0.9, (n_channels, 2))
    return RunData(
        train=split(np.arange(80), 2, "train"),
        val=split(np.arange(80, 90), 2, "val"),
        test=test_all,
        subjects=["S1"],
        ch_names=[f"M{i}" for i in range(n_channels)],
        pos2d=pos2d,
        sfreq=SFREQ,
        tmin=float(times[0]),
        tmax=float(times[-1]),
        latent_ids=ids,
        latents=latents,
    )


@pytest.fixture(scope="module")
def run() -> RunData:
    return synthetic_run()
