"""The serving fold: `BrainModule.folded()` gives the trained module's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megdecode.models.brain import BrainConfig, BrainModule
from megdecode.models.fold import FoldedInput


@pytest.mark.parametrize(
    ("attention", "subject_layer"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_the_folded_module_equals_the_module(attention: bool, subject_layer: bool) -> None:
    cfg = BrainConfig(
        n_channels=10,
        n_times=25,
        n_subjects=3,
        out_dim=6,
        merger_channels=12,
        fourier_freqs=3,
        hidden_channels=8,
        projection_hidden=8,
        depth=1,
        spatial_attention=attention,
        subject_layer=subject_layer,
    )
    torch.manual_seed(0)
    model = BrainModule(cfg, np.random.default_rng(0).uniform(size=(10, 2))).eval()
    if (
        model.subject_layer is not None
    ):  # subjects that differ (the identity init would hide a mix-up)
        with torch.no_grad():
            model.subject_layer.weight.add_(0.2 * torch.randn_like(model.subject_layer.weight))
    folded = model.folded()
    assert isinstance(folded.subject_layer, FoldedInput) and not folded.training
    x, subject = torch.randn(5, 10, 25), torch.tensor([0, 2, 1, 2, 0])
    with torch.no_grad():
        want, got = model(x, subject), folded(x, subject)
    torch.testing.assert_close(got.clip, want.clip, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.mse, want.mse, rtol=1e-5, atol=1e-5)
    assert model.subject_layer is None or not isinstance(
        model.subject_layer, FoldedInput
    )  # the original is untouched
