"""Losses: CLIP against open_clip's reference, temperature handling, the convex mix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose
from open_clip.loss import ClipLoss as OpenClipLoss

from megdecode.config import ConfigError
from megdecode.losses import ClipLoss, CombinedLoss, LossConfig, mse_loss


@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 50.0])
def test_clip_loss_equals_open_clip(scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    brain = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    image = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    ours = ClipLoss(temperature_init=1 / scale)
    reference = OpenClipLoss()
    logit_scale = torch.tensor(scale)
    assert_allclose(
        ours(brain, image).item(), reference(brain, image, logit_scale).item(), rtol=1e-5
    )
    ours_logits = ours.get_logits(brain, image)
    ref_logits = reference.get_logits(brain, image, logit_scale)
    for a, b in zip(ours_logits, ref_logits, strict=True):
        assert_allclose(a.detach().numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_clip_loss_uses_cosine_similarity() -> None:
    """Scaling a latent must not change the CLIP loss (it normalises inside)."""
    g = torch.Generator().manual_seed(1)
    brain, image = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    loss = ClipLoss()
    assert_allclose(loss(brain, image).item(), loss(7 * brain, 0.1 * image).item(), rtol=1e-5)


def test_clip_loss_on_hard_coded_pairs() -> None:
    # orthonormal pairs, scale 1: logits = I, each CE = -log(e / (e + 1)) = log(1 + e^-1)
    brain = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    loss = ClipLoss(temperature_init=1.0)
    assert_allclose(loss(brain, torch.eye(2)).item(), math.log(1 + math.exp(-1)), rtol=1e-6)


def test_temperature_is_clamped() -> None:
    loss = ClipLoss(temperature_init=0.07, max_logit_scale=100.0)
    assert_allclose(loss.scale().item(), 1 / 0.07, rtol=1e-6)
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)
    assert_allclose(loss.scale().item(), 100.0, rtol=1e-6)
    loss.clamp_()
    assert_allclose(loss.logit_scale.item(), math.log(100.0), rtol=1e-6)
    with torch.no_grad():
        loss.logit_scale.fill_(-3.0)
    assert_allclose(loss.scale().item(), 1.0)


@pytest.mark.parametrize("temperature", [0.07, 0.01, 0.001])  # inside, at, beyond the bound
def test_learned_temperature_gets_a_gradient_even_at_the_bound(temperature: float) -> None:
    loss = ClipLoss(temperature_init=temperature, max_logit_scale=100.0)
    g = torch.Generator().manual_seed(2)
    brain, image = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    loss(brain, image).backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0
    scale = min(1 / temperature, 100.0)
    expected = OpenClipLoss()(
        F.normalize(brain, dim=-1), F.normalize(image, dim=-1), torch.tensor(scale)
    )
    assert_allclose(loss(brain, image).item(), expected.item(), rtol=1e-5)


def test_fixed_temperature_is_not_a_parameter() -> None:
    combined = CombinedLoss(LossConfig(learn_temperature=False, temperature_init=0.1))
    assert list(combined.parameters()) == []
    assert_allclose(combined.clip.scale().item(), 10.0, rtol=1e-6)
    assert "clip.logit_scale" in combined.state_dict()


def test_mse_loss_on_hard_coded_arrays() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert_allclose(mse_loss(pred, torch.zeros(2, 2)).item(), (1 + 4 + 9 + 16) / 4)
    with pytest.raises(ValueError, match="differ in shape"):
        mse_loss(pred, torch.zeros(2, 3))


@pytest.mark.parametrize("lam", [0.0, 0.75, 1.0])
def test_combined_loss_is_the_convex_mix(lam: float) -> None:
    g = torch.Generator().manual_seed(3)
    clip_pred, mse_pred, target = (torch.randn(5, 4, generator=g) for _ in range(3))
    parts = CombinedLoss(LossConfig(lam=lam))(clip_pred, mse_pred, target)
    assert_allclose(parts.clip.item(), ClipLoss()(clip_pred, target).item(), rtol=1e-6)
    assert_allclose(parts.mse.item(), F.mse_loss(mse_pred, target).item(), rtol=1e-6)
    if lam == 1.0:
        assert torch.equal(parts.total, parts.clip)
    elif lam == 0.0:
        assert torch.equal(parts.total, parts.mse)
    expected = lam * parts.clip.item() + (1 - lam) * parts.mse.item()
    assert_allclose(parts.total.item(), expected, rtol=1e-6)


def test_loss_config_validates_and_round_trips() -> None:
    cfg = LossConfig(lam=0.5, learn_temperature=False)
    assert LossConfig.from_flat_dict(cfg.to_flat_dict()) == cfg
    with pytest.raises(ConfigError, match="lam"):
        LossConfig(lam=1.5)
    with pytest.raises(ConfigError, match="temperature_init"):
        LossConfig(temperature_init=0.0)
