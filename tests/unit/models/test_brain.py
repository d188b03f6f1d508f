"""Brain module: shapes, numerics of the blocks, behaviour (subjects, dropout, seeds), size."""

from __future__ import annotations

import math

import pytest
import torch
from numpy.testing import assert_allclose

from megdecode.config import ConfigError
from megdecode.losses import CombinedLoss, LossConfig
from megdecode.models.blocks import SpatialAttention, TemporalAggregation, fourier_features
from megdecode.models.brain import BrainConfig, BrainModule, count_parameters, paper_config
from megdecode.models.dilated import dilated_conv

C, T, S, F = 16, 24, 3, 8


def small_config(**changes: object) -> BrainConfig:
    cfg = BrainConfig(
        n_channels=C,
        n_times=T,
        n_subjects=S,
        out_dim=F,
        merger_channels=12,
        fourier_freqs=4,
        hidden_channels=16,
        projection_hidden=16,
        backbone_dim=12,
        head_hidden=16,
    )
    return cfg.replace(**changes)


def positions(n: int = C, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed))


def batch(b: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, C, T, generator=g), torch.arange(b) % S


@pytest.mark.parametrize("aggregation", ["mean", "affine", "attention"])
def test_output_shapes_for_each_aggregation(aggregation: str) -> None:
    torch.manual_seed(0)
    model = BrainModule(small_config(aggregation=aggregation), positions())
    x, subject = batch()
    for train in (True, False):
        model.train(train)
        out = model(x, subject)
        assert out.clip.shape == (6, F) and out.mse.shape == (6, F)
        assert torch.isfinite(out.clip).all() and torch.isfinite(out.mse).all()


@pytest.mark.parametrize("kind", ["mean", "affine"])
def test_linear_aggregation_commutes_with_output_conv(kind: str) -> None:
    """Aggregating before the last 1x1 conv must equal aggregating its output."""
    torch.manual_seed(0)
    agg = TemporalAggregation(kind, channels=5, n_times=7)
    proj = torch.nn.Linear(4, 5)
    if kind == "affine":
        with torch.no_grad():
            agg.weight.normal_()
            agg.bias.fill_(0.3)
    x = torch.randn(3, 7, 4)  # (B, T, D_in)
    h = proj(x).transpose(1, 2)  # (B, D_out, T)
    expected = h.mean(-1) if kind == "mean" else h @ agg.weight + agg.bias
    assert_allclose(agg(x, proj).detach().numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (3, 4), (5, 2), (1, 1), (3, 9)])
def test_dilated_conv_matches_conv1d(kernel: int, dilation: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 5, generator=g)  # (B, T, C_in); dilation 9 > T reaches only padding
    weight, bias = torch.randn(kernel, 5, 4, generator=g), torch.randn(4, generator=g)
    expected = torch.nn.functional.conv1d(
        x.transpose(1, 2),
        weight.permute(2, 1, 0),
        bias,
        padding=dilation * (kernel // 2),
        dilation=dilation,
    ).transpose(1, 2)
    assert_allclose(
        dilated_conv(x, weight, bias, dilation).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5
    )


def test_dilated_conv_gradients_are_exact() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: dilated_conv(*a, 2), (x, weight, bias))


def test_dilated_conv_keeps_samples_apart() -> None:
    """Rows of the flat product that straddle two samples must not leak into outputs."""
    x = torch.zeros(2, 5, 1)
    x[1] = 1.0  # sample 0 is all zeros, so its output is the bias only
    out = dilated_conv(x, torch.ones(3, 1, 1), torch.zeros(1), dilation=2)
    assert torch.equal(out[0], torch.zeros(5, 1))
    assert out[1, :, 0].tolist() == [2.0, 2.0, 3.0, 2.0, 2.0]


def test_fourier_features_on_hard_coded_positions() -> None:
    pos = torch.tensor([[0.0, 0.0], [0.25, 0.5]])
    feats = fourier_features(pos, n_freqs=2, margin=0.0)
    # frequency pairs (k, l) = (0,0), (0,1), (1,0), (1,1); phase = 2π(k x + l y)
    expected = [[1, 1, 1, 1, 0, 0, 0, 0], [1, -1, 0, 0, 0, 0, 1, -1]]
    assert_allclose(feats.numpy(), expected, atol=1e-6)


def test_spatial_dropout_removes_the_disc_in_train_mode_only() -> None:
    torch.manual_seed(0)
    attn = SpatialAttention(positions(), out_channels=5, n_freqs=3, margin=0.2, dropout_radius=0.4)
    eye = torch.eye(C).expand(4, C, C)  # x = identity: the output is the attention matrix
    attn.train()
    torch.manual_seed(3)
    dropped = attn.dropped(4)
    torch.manual_seed(3)
    weights = attn(eye).transpose(1, 2)  # x = I: output (B, T=C, D) is the (B, D, C) attention
    assert dropped.any(), "radius 0.4 should drop some of 16 random sensors"
    assert (weights.permute(0, 2, 1)[dropped] == 0).all()
    assert (weights.permute(0, 2, 1)[~dropped] > 0).all()
    assert_allclose(weights.sum(-1).detach().numpy(), 1.0, rtol=1e-5)
    attn.eval()
    assert torch.equal(attn(eye), attn(eye))
    assert (attn(eye) > 0).all()
    assert_allclose(attn(eye).sum(1).detach().numpy(), 1.0, rtol=1e-5)


def test_loaded_positions_are_the_ones_used() -> None:
    torch.manual_seed(0)
    trained = BrainModule(small_config(), positions(seed=1)).eval()
    fresh = BrainModule(small_config(), positions(seed=2)).eval()
    fresh.load_state_dict(trained.state_dict())
    x, subject = batch()
    assert torch.equal(fresh(x, subject).clip, trained(x, subject).clip)


def test_spatial_dropout_never_drops_every_sensor() -> None:
    attn = SpatialAttention(torch.full((C, 2), 0.5), 5, 3, 0.2, dropout_radius=2.0)
    assert not attn.dropped(8).any()


def test_spatial_dropout_active_only_in_train_mode() -> None:
    torch.manual_seed(0)
    model = BrainModule(small_config(), positions())
    x, subject = batch()
    model.train()
    assert not torch.allclose(model(x, subject).clip, model(x, subject).clip)
    model.eval()
    assert torch.equal(model(x, subject).clip, model(x, subject).clip)
    no_drop = BrainModule(small_config(spatial_dropout=0.0), positions()).train()
    assert torch.equal(no_drop(x, subject).clip, no_drop(x, subject).clip)


def test_subject_index_acts_only_through_the_subject_layer() -> None:
    torch.manual_seed(0)
    x, _ = batch(4)
    a, b = torch.zeros(4, dtype=torch.long), torch.full((4,), 2, dtype=torch.long)
    shared = BrainModule(small_config(subject_layer=False), positions()).eval()
    assert torch.equal(shared(x, a).clip, shared(x, b).clip)
    model = BrainModule(small_config(), positions()).eval()
    assert torch.equal(model(x, a).mse, model(x, b).mse), "identity init: subjects start equal"
    with torch.no_grad():
        model.subject_layer.weight[2].add_(0.1 * torch.randn(12, 12))
    assert not torch.allclose(model(x, a).mse, model(x, b).mse)
    with torch.no_grad():  # same matrices again -> same outputs: nothing else reads the index
        model.subject_layer.weight[2].copy_(model.subject_layer.weight[0])
    assert torch.equal(model(x, a).mse, model(x, b).mse)
    model(x, torch.tensor([0, 0, 2, 2])).clip.sum().backward()
    grad = model.subject_layer.weight.grad
    assert grad[1].abs().sum() == 0 and grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0


def test_same_seed_same_model_and_outputs() -> None:
    x, subject = batch()

    def run() -> torch.Tensor:
        torch.manual_seed(42)
        model = BrainModule(small_config(), positions()).train()
        return model(x, subject).clip

    assert torch.equal(run(), run())


@pytest.mark.parametrize("aggregation", ["mean", "affine", "attention"])
def test_gradient_reaches_every_parameter(aggregation: str) -> None:
    torch.manual_seed(0)
    model = BrainModule(small_config(aggregation=aggregation), positions()).train()
    loss_fn = CombinedLoss(LossConfig(lam=0.5))
    x, subject = batch()
    out = model(x, subject)
    loss_fn(out.clip, out.mse, torch.randn(6, F), None).total.backward()
    for name, p in [*model.named_parameters(), *loss_fn.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tiny_batch_overfits() -> None:
    torch.manual_seed(0)
    model = BrainModule(small_config(), positions()).train()
    loss_fn = CombinedLoss(LossConfig(lam=0.5))
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=3e-3)
    x, subject = batch(8)
    target = torch.randn(8, F)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        out = model(x, subject)
        loss = loss_fn(out.clip, out.mse, target, None).total
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_paper_config_has_about_6_4m_parameters() -> None:
    model = BrainModule(paper_config(), torch.rand(272, 2))
    counts = model.count_parameters()
    assert counts == count_parameters(model)
    assert abs(counts["total"] - 6.4e6) <= 0.1 * 6.4e6, counts
    assert counts["spatial_attention"] == 270 * 2 * 32**2
    assert counts["subject_layer"] == 4 * 270 * 270
    assert counts["aggregation"] == 181 + 1
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    model.spatial_attention.requires_grad_(False)
    assert model.count_parameters()["total"] == counts["total"] - counts["spatial_attention"]
    assert model.count_parameters(trainable_only=False) == counts


def test_dilations_cycle_over_the_residual_convs() -> None:
    model = BrainModule(small_config(depth=3), positions())
    dilations = [conv.conv.dilation for block in model.blocks for conv in block.convs]
    assert dilations == [1, 2, 4, 8, 16, 1]
    assert all(math.log2(d).is_integer() for d in dilations)


def test_config_round_trip_and_validation() -> None:
    cfg = small_config(aggregation="mean", backbone_dim=None)
    assert BrainConfig.from_flat_dict(cfg.to_flat_dict()) == cfg
    assert cfg.feature_dim == F
    with pytest.raises(ConfigError, match="aggregation"):
        small_config(aggregation="max")


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="pos2d"):
        BrainModule(small_config(), None)
    with pytest.raises(ValueError, match=r"pos2d must have shape \(16, 2\)"):
        BrainModule(small_config(), torch.rand(15, 2))
    model = BrainModule(small_config(), positions())
    with pytest.raises(ValueError, match="expected x of shape"):
        model(torch.randn(2, C, T + 1), torch.zeros(2, dtype=torch.long))


def test_multi_head_attention_pooling_equals_a_loop_over_channel_groups() -> None:
    torch.manual_seed(0)
    agg = TemporalAggregation("attention", channels=6, n_times=5, heads=3)
    proj = torch.nn.Linear(4, 6)
    x = torch.randn(2, 5, 4)
    h = proj(x)  # (B, T, 6)
    scores = torch.softmax(agg.score(h), dim=1)  # (B, T, 3)
    expected = torch.zeros(2, 6)
    for b in range(2):
        for head in range(3):
            cols = slice(2 * head, 2 * head + 2)
            for t in range(5):
                expected[b, cols] += scores[b, t, head] * h[b, t, cols]
    assert torch.allclose(agg(x, proj), expected, atol=1e-6)


def test_attention_heads_must_divide_the_features_and_need_attention() -> None:
    with pytest.raises(ConfigError, match="divide"):
        small_config(aggregation="attention", attention_heads=5)
    with pytest.raises(ConfigError, match="needs aggregation='attention'"):
        small_config(aggregation="mean", attention_heads=2)
    model = BrainModule(small_config(aggregation="attention", attention_heads=2), positions())
    x, subject = batch()
    assert model(x, subject).clip.shape == (6, F)
