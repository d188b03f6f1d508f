"""Building blocks of the brain module (Défossez et al. 2022, Benchetrit et al. 2023).

Each block is a small `nn.Module` with the tensor shapes of its input and output in its
docstring; `megdecode.models.brain` assembles them. Shapes use B = batch, C = sensors,
D = channels, T = time samples, S = subjects. Inside the network, activations are
time-major (B, T, D): every channel mixing is then a matrix product over the B·T rows
(see `megdecode.models.dilated`), which is what runs fastest on CPU.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from megdecode.models.dilated import DilatedConv

logger = logging.getLogger(__name__)


def fourier_features(pos2d: torch.Tensor, n_freqs: int, margin: float) -> torch.Tensor:
    """Cosine and sine features of 2-D sensor positions on a K x K frequency grid.

    pos2d: (C, 2) in [0, 1] -> (C, 2 K^2): [cos 2π(kx + ly)/w, sin 2π(kx + ly)/w] for
    k, l in 0..K-1. Positions are shifted by `margin` and divided by w = 1 + 2 margin so
    that the lowest non-zero frequency does not wrap the layout's two edges onto each
    other (a periodic basis would otherwise treat left and right sensors as neighbours).
    """
    if pos2d.ndim != 2 or pos2d.shape[1] != 2:
        raise ValueError(f"pos2d must have shape (C, 2), got {tuple(pos2d.shape)}")
    width = 1.0 + 2.0 * margin
    freqs = torch.arange(n_freqs, dtype=pos2d.dtype, device=pos2d.device)
    loc = (pos2d + margin) / width  # (C, 2)
    # phase[c, k, l] = 2π (k x_c + l y_c)
    phase = 2 * math.pi * (loc[:, 0, None, None] * freqs[:, None] + loc[:, 1, None, None] * freqs)
    phase = phase.reshape(pos2d.shape[0], -1)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)


class SpatialAttention(nn.Module):
    """Merge C sensors into D virtual channels with position-based attention weights.

    x (B, C, T) -> (B, T, D). Output channel j is a softmax-weighted sum over sensors with
    logits a_j(c) = <w_j, fourier(pos_c)>: the weights depend on *where* a sensor is,
    not on its index, so layouts with missing or reordered sensors stay comparable.
    Spatial dropout (training only): for each sample, sensors within `dropout_radius` of
    a uniformly drawn point of [0, 1]^2 get logit -inf, which forces each virtual channel
    to draw on several scalp regions. A draw that would remove every sensor keeps all.
    """

    pos2d: torch.Tensor  # (C, 2) buffer, saved with the weights
    features: torch.Tensor  # (C, 2 K^2) buffer, derived from pos2d

    def __init__(
        self,
        pos2d: torch.Tensor,
        out_channels: int,
        n_freqs: int,
        margin: float,
        dropout_radius: float,
    ) -> None:
        super().__init__()
        pos2d = torch.as_tensor(pos2d, dtype=torch.float32)
        self.n_freqs, self.margin = n_freqs, margin
        self.register_buffer("pos2d", pos2d)
        # Derived from pos2d and not saved, so a checkpoint holds each fact once; recomputed
        # after load_state_dict so that loaded positions are the ones used.
        self.register_buffer("features", fourier_features(pos2d, n_freqs, margin), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh_features())
        n_features = 2 * n_freqs * n_freqs
        # 1/sqrt(fan_in) keeps the initial logits O(1): attention starts near uniform.
        self.weight = nn.Parameter(torch.randn(out_channels, n_features) / math.sqrt(n_features))
        self.dropout_radius = dropout_radius

    @torch.no_grad()
    def refresh_features(self) -> None:
        """Recompute the Fourier features from the current `pos2d`."""
        self.features = fourier_features(self.pos2d, self.n_freqs, self.margin)

    def logits(self) -> torch.Tensor:
        """(D, C) attention logits shared by every sample."""
        return self.weight @ self.features.T

    def dropped(self, batch: int) -> torch.Tensor:
        """(B, C) bool, True for sensors removed by spatial dropout in this sample."""
        center = torch.rand(batch, 1, 2, device=self.pos2d.device)
        drop = (self.pos2d - center).square().sum(-1) < self.dropout_radius**2
        return drop & ~drop.all(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits()
        x_t = x.transpose(1, 2)  # (B, T, C) view; the products read it transposed, no copy
        if self.training and self.dropout_radius > 0:
            mask = self.dropped(x.shape[0])[:, None, :]  # (B, 1, C)
            weights = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1)  # (B, D, C)
            return torch.bmm(x_t, weights.transpose(1, 2))
        return torch.matmul(x_t, torch.softmax(logits, dim=-1).T)


class SubjectLayer(nn.Module):
    """One D x D matrix per subject, applied to each sample's channels.

    h (B, T, D), subject (B,) long -> (B, T, D), out[b] = h[b] @ W[subject[b]]. The
    matrices are gathered with `index_select` (whose backward is a cheap `index_add`) and
    applied in one batched matmul, so mixed-subject batches cost one kernel call.
    Initialised to the identity: every subject starts with the shared representation and
    learns only its deviation from it.
    """

    def __init__(self, n_subjects: int, channels: int, init_identity: bool = True) -> None:
        super().__init__()
        if init_identity:
            weight = torch.eye(channels).repeat(n_subjects, 1, 1)
        else:
            weight = torch.randn(n_subjects, channels, channels) / math.sqrt(channels)
        self.weight = nn.Parameter(weight)

    def forward(self, h: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        return torch.bmm(h, self.weight.index_select(0, subject))


class ResidualConv(nn.Module):
    """conv (kernel k, dilation d, 'same' length) -> batch norm -> GELU -> dropout, + skip.

    x (B, T, D_in) -> (B, T, D_out). The skip is added only when D_in == D_out (the first
    conv of the stack changes the width and has none), as in Défossez et al.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, dilation: int, batch_norm: bool, dropout: float
    ) -> None:
        super().__init__()
        self.conv = DilatedConv(in_ch, out_ch, kernel, dilation)
        self.norm = nn.BatchNorm1d(out_ch) if batch_norm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.skip = in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.norm is not None:  # statistics over all B·T rows, per channel
            h = self.norm(h.reshape(-1, h.shape[-1])).view(h.shape)
        h = self.dropout(F.gelu(h))
        return x + h if self.skip else h


class ConvBlock(nn.Module):
    """Two residual dilated convs, then an optional GLU conv (D -> 2D -> GLU -> D).

    x (B, T, D_in) -> (B, T, D). `dilations` gives the two residual convs' dilations.
    """

    def __init__(
        self,
        in_ch: int,
        channels: int,
        kernel: int,
        dilations: tuple[int, int],
        glu: bool,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            ResidualConv(in_ch, channels, kernel, dilations[0], batch_norm, dropout),
            ResidualConv(channels, channels, kernel, dilations[1], batch_norm, dropout),
        )
        self.glu = DilatedConv(channels, 2 * channels, kernel) if glu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x)
        return F.glu(self.glu(h), dim=-1) if self.glu is not None else h


class TemporalAggregation(nn.Module):
    """Collapse time after a linear output layer: x (B, T, D_in) -> (B, D_out).

    "mean": global average pooling. "affine": a learned weight per time step plus a bias,
    shared over channels (Benchetrit et al.'s choice), initialised to the mean so training
    starts from average pooling. "attention": a per-time score from a linear map of the
    channels, softmax over time, weighted sum; with ``heads`` > 1 the D_out channels are
    split into that many groups, each pooled with its own scores (so different feature
    groups can read different latencies, e.g. an early low-level and a late semantic peak).

    `forward(x, proj)` returns Agg(proj(x)). For the two linear kinds it computes
    proj(Agg'(x)) instead, which is the same number (proj acts on channels, the
    aggregation on time) but applies proj once per sample instead of T times:
    Σ_t a_t (W x_t + c) + b = W (Σ_t a_t x_t) + c Σ_t a_t + b.
    """

    def __init__(self, kind: str, channels: int, n_times: int, heads: int = 1) -> None:
        super().__init__()
        if kind not in ("mean", "affine", "attention"):
            raise ValueError(f"aggregation must be 'mean', 'affine' or 'attention', got {kind!r}")
        if heads < 1 or channels % heads:
            raise ValueError(f"attention heads ({heads}) must divide the channels ({channels})")
        self.kind = kind
        self.n_times = n_times
        self.heads = heads
        if kind == "affine":
            self.weight = nn.Parameter(torch.full((n_times,), 1.0 / n_times))
            self.bias = nn.Parameter(torch.zeros(()))
        elif kind == "attention":
            self.score = nn.Linear(channels, heads)  # channels = D_out, scores the projected x

    def forward(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        if x.shape[1] != self.n_times:
            raise ValueError(f"expected {self.n_times} time samples, got {x.shape[1]}")
        if self.kind == "attention":
            h = proj(x)  # (B, T, D_out)
            attn = torch.softmax(self.score(h), dim=1)  # (B, T, heads)
            b, t, d = h.shape
            groups = h.reshape(b, t, self.heads, d // self.heads)  # (B, T, heads, D_out/heads)
            return torch.einsum("bth,bthd->bhd", attn, groups).reshape(b, d)
        if self.kind == "mean":
            return proj(x.mean(dim=1))
        # (B, 1, T) @ (B, T, D_in): a batched product that reads x in place (torch.matmul
        # of a vector with a 3-D tensor transposes x into a copy first).
        pooled = torch.bmm(self.weight.expand(x.shape[0], 1, -1), x).squeeze(1)  # (B, D_in)
        return F.linear(pooled, proj.weight) + proj.bias * self.weight.sum() + self.bias


class MLPHead(nn.Module):
    """Linear -> LayerNorm -> GELU -> dropout -> Linear: (B, D) -> (B, F)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
