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
        ours(brain, image, None).item(), reference(brain, image, logit_scale).item(), rtol=1e-5
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
    assert_allclose(
        loss(brain, image, None).item(), loss(7 * brain, 0.1 * image, None).item(), rtol=1e-5
    )


def test_clip_loss_on_hard_coded_pairs() -> None:
    # orthonormal pairs, scale 1: logits = I, each CE = -log(e / (e + 1)) = log(1 + e^-1)
    brain = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    loss = ClipLoss(temperature_init=1.0)
    assert_allclose(loss(brain, torch.eye(2), None).item(), math.log(1 + math.exp(-1)), rtol=1e-6)


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
    loss(brain, image, None).backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0
    scale = min(1 / temperature, 100.0)
    expected = OpenClipLoss()(
        F.normalize(brain, dim=-1), F.normalize(image, dim=-1), torch.tensor(scale)
    )
    assert_allclose(loss(brain, image, None).item(), expected.item(), rtol=1e-5)


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
    parts = CombinedLoss(LossConfig(lam=lam))(clip_pred, mse_pred, target, None)
    assert_allclose(parts.clip.item(), ClipLoss()(clip_pred, target, None).item(), rtol=1e-6)
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


def _brute_force_clip(
    brain: torch.Tensor, image: torch.Tensor, ids: list[int], scale: float
) -> float:
    """Symmetric InfoNCE by loops: for each row, the positive against the rows of the
    other direction that show a different image; the mean of the two directions."""
    b = [[float(x) for x in F.normalize(r, dim=0)] for r in brain]
    m = [[float(x) for x in F.normalize(r, dim=0)] for r in image]
    n = len(ids)

    def sim(i: int, j: int) -> float:  # brain i, image j
        return scale * sum(x * y for x, y in zip(b[i], m[j], strict=True))

    def direction(s: object) -> float:
        total = 0.0
        for i in range(n):
            kept = [j for j in range(n) if j == i or ids[j] != ids[i]]
            total += -s(i, i) + math.log(sum(math.exp(s(i, j)) for j in kept))  # type: ignore[operator]
        return total / n

    return (direction(sim) + direction(lambda i, j: sim(j, i))) / 2


def test_clip_loss_leaves_out_pairs_of_the_same_image() -> None:
    """Rows 0, 2, 5 show one image, 1 and 4 another (other subjects, repetitions): they
    are not each other's negatives, in either direction."""
    g = torch.Generator().manual_seed(4)
    brain, image = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ids = [3, 7, 3, 5, 7, 3]
    loss = ClipLoss(temperature_init=0.5)
    got = loss(brain, image, torch.tensor(ids)).item()
    assert_allclose(got, _brute_force_clip(brain, image, ids, 2.0), rtol=1e-5)
    # the plain loss (every row its own image) is a different number
    plain = loss(brain, image, None).item()
    assert_allclose(plain, _brute_force_clip(brain, image, list(range(6)), 2.0), rtol=1e-5)
    assert abs(got - plain) > 1e-3
    # distinct ids are the plain loss
    assert_allclose(loss(brain, image, torch.tensor([9, 8, 7, 6, 5, 4])).item(), plain, rtol=1e-6)


def test_masked_clip_loss_has_finite_gradients_and_combined_loss_passes_ids() -> None:
    g = torch.Generator().manual_seed(5)
    brain = torch.randn(4, 3, generator=g, requires_grad=True)
    image = torch.randn(4, 3, generator=g)
    ids = torch.tensor([1, 1, 1, 1])  # one image only: nothing but positives
    combined = CombinedLoss(LossConfig(lam=1.0, temperature_init=0.5))
    parts = combined(brain, brain.detach(), image, ids)
    parts.total.backward()
    assert brain.grad is not None and torch.isfinite(brain.grad).all()
    # every other pair is left out: each row only has its positive, so the loss is 0
    assert_allclose(
        parts.clip.item(), _brute_force_clip(brain.detach(), image, [1] * 4, 2.0), atol=1e-6
    )
    assert parts.clip.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="image_ids"):
        combined.clip(brain, image, torch.tensor([1, 2]))
