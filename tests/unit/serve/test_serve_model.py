"""The served model's precision knob: bfloat16 stays close to the float32 latent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megdecode.models.brain import BrainConfig, BrainModule


def test_bfloat16_serving_stays_close_and_the_knob_is_checked() -> None:
    from megdecode.config import ConfigError
    from megdecode.serve.config import DecoderConfig

    cfg = BrainConfig(
        n_channels=10,
        n_times=25,
        n_subjects=2,
        out_dim=6,
        merger_channels=12,
        fourier_freqs=3,
        hidden_channels=8,
        projection_hidden=8,
        depth=1,
    )
    torch.manual_seed(0)
    model = BrainModule(cfg, np.random.default_rng(0).uniform(size=(10, 2))).folded()
    x, subject = torch.randn(4, 10, 25), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        want, got = (
            model(x, subject).clip,
            model.to(torch.bfloat16)(x.bfloat16(), subject).clip.float(),
        )
    assert torch.nn.functional.cosine_similarity(want, got).min() > 0.99
    assert DecoderConfig(precision="bfloat16").precision == "bfloat16"
    with pytest.raises(ConfigError, match="precision"):
        DecoderConfig(precision="float16")
