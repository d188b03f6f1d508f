"""The brain module f_θ: one MEG window (C x T) -> image latents for the CLIP and MSE losses.

Architecture after Défossez et al. 2022 (arXiv 2208.12266), with the temporal aggregation
and two heads of Benchetrit et al. 2023 (arXiv 2310.19812):

    x (B, C, T)
    -> spatial attention over 2-D sensor positions           (B, T, D_m)   D_m = 270
    -> 1x1 conv (initial linear)                              (B, T, D_m)
    -> subject layer (one D_m x D_m matrix per subject)       (B, T, D_m)
    -> `depth` blocks of 2 dilated residual convs + GLU conv  (B, T, H)     H = 320
    -> 1x1 conv H -> 2H, GELU, 1x1 conv 2H -> F'              (B, T, F')
    -> temporal aggregation (mean | affine | attention)       (B, F')
    -> CLIP head and MSE head (MLPs)                          (B, F) each

Inside, activations are time-major (B, T, D) rather than torch's (B, D, T): every channel
mixing, the convs included, is then a plain or batched matrix product over the B·T rows,
which is what a CPU runs closest to its peak (see `megdecode.models.dilated`).

Parameter count of `paper_config()` (C=272, T=181, F=768, 4 subjects, 2 blocks, affine):
6,395,800 trainable, against "about 6.4M" in Benchetrit et al. (-0.07%):

    spatial_attention   552,960  270 x 2048 Fourier weights (32 x 32 frequencies, cos + sin)
    initial_linear       73,170  270 x 270 + bias
    subject_layer       291,600  4 x 270 x 270
    blocks            2,414,720  convs 270->320, 3 x 320->320, 2 GLU convs 320->640 (k=3), 4 BN
    projection          697,728  320->640 and 640->768 1x1 convs
    aggregation             182  181 time weights + bias
    clip_head         1,182,720  768->768, LayerNorm, 768->768
    mse_head          1,182,720  same

The paper gives the total, not the split of F' and the head widths; ours (F' = head
hidden = F = 768) lands 4,200 below 6.4M, i.e. within the rounding of "6.4M" (the heads'
LayerNorms add 3,072 of the total).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from megdecode.config import ConfigError, FlatConfig
from megdecode.models.blocks import (
    ConvBlock,
    MLPHead,
    SpatialAttention,
    SubjectLayer,
    TemporalAggregation,
)
from megdecode.models.fold import fold

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrainConfig(FlatConfig):
    """Every architecture choice of the brain module; defaults are the paper's retrieval model."""

    # --- data shape: set from the epochs store and the latent, not searched
    n_channels: int = 272  # THINGS-MEG: 272 usable axial gradiometers
    n_times: int = 181  # -0.5..1.0 s at 120 Hz, both ends included
    n_subjects: int = 4
    out_dim: int = 768  # F: the latent's size (CLIP-Vision ViT-L/14 CLS = 768)

    # --- spatial attention over sensor positions
    spatial_attention: bool = True  # False: the sensors go straight to the 1x1 conv
    merger_channels: int = 270  # D_m, virtual channels (Défossez et al.)
    fourier_freqs: int = 32  # K per axis: 2 K^2 = 2048 features per sensor
    fourier_margin: float = 0.2  # keeps the periodic basis from joining opposite edges
    spatial_dropout: float = 0.2  # radius of the sensor disc dropped per sample in training

    # --- subject-specific layer
    subject_layer: bool = True
    subject_init_identity: bool = True  # start shared, learn per-subject deviations

    # --- dilated residual conv blocks
    hidden_channels: int = 320  # H
    depth: int = 2  # residual blocks; Défossez used 5, Benchetrit's retrieval model 2
    kernel_size: int = 3
    dilation_period: int = 5  # residual conv i has dilation 2 ** (i % period): 1,2,4,8,16,1,...
    glu: bool = True  # GLU conv (H -> 2H -> GLU -> H) at the end of each block
    batch_norm: bool = True
    conv_dropout: float = 0.0

    # --- output projection and temporal aggregation
    projection_hidden: int = 640  # 1x1 conv H -> 2H -> F' (Défossez's output layers)
    backbone_dim: int | None = None  # F'; None = out_dim
    aggregation: str = "affine"  # "mean" | "affine" (learned weights over time) | "attention"
    attention_heads: int = (
        1  # aggregation="attention" only: channel groups with their own time scores
    )

    # --- heads (one for the CLIP loss, one for the MSE loss)
    head_hidden: int | None = None  # None = F'
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.aggregation not in ("mean", "affine", "attention"):
            raise ConfigError(
                f"aggregation: expected mean|affine|attention, got {self.aggregation!r}"
            )
        if self.attention_heads < 1 or self.feature_dim % self.attention_heads:
            raise ConfigError(
                f"attention_heads ({self.attention_heads}) must be >= 1 and divide F' ({self.feature_dim})"
            )
        if self.attention_heads > 1 and self.aggregation != "attention":
            raise ConfigError(
                f"attention_heads={self.attention_heads} needs aggregation='attention', got {self.aggregation!r}"
            )
        for key in ("n_channels", "n_times", "n_subjects", "out_dim", "hidden_channels", "depth"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")

    @property
    def feature_dim(self) -> int:
        """F', the backbone's output channels."""
        return self.backbone_dim or self.out_dim


def paper_config(
    n_channels: int = 272, n_times: int = 181, n_subjects: int = 4, out_dim: int = 768
) -> BrainConfig:
    """Benchetrit et al.'s retrieval model (2 blocks, affine aggregation) for this data shape."""
    return BrainConfig(
        n_channels=n_channels, n_times=n_times, n_subjects=n_subjects, out_dim=out_dim
    )


class BrainOutput(NamedTuple):
    """clip: (B, F) for the CLIP loss and retrieval; mse: (B, F) for the MSE loss and generation."""

    clip: torch.Tensor
    mse: torch.Tensor


class BrainModule(nn.Module):
    """f_θ: x (B, C, T) float, subject (B,) long -> BrainOutput(clip (B, F), mse (B, F)).

    pos2d (C, 2) in [0, 1] holds the sensor positions in the order of x's channels; it is
    stored as a buffer so a checkpoint carries the layout it was trained on.
    """

    def __init__(self, cfg: BrainConfig, pos2d: torch.Tensor | np.ndarray | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        channels = cfg.n_channels
        if cfg.spatial_attention:
            if pos2d is None:
                raise ValueError("pos2d (C, 2) is required when spatial_attention is on")
            pos = torch.as_tensor(pos2d, dtype=torch.float32)
            if pos.shape != (cfg.n_channels, 2):
                raise ValueError(
                    f"pos2d must have shape ({cfg.n_channels}, 2), got {tuple(pos.shape)}"
                )
            self.spatial_attention: SpatialAttention | None = SpatialAttention(
                pos, cfg.merger_channels, cfg.fourier_freqs, cfg.fourier_margin, cfg.spatial_dropout
            )
            channels = cfg.merger_channels
        else:
            self.spatial_attention = None
        self.initial_linear = nn.Linear(channels, channels)  # a 1x1 conv on time-major data
        self.subject_layer = (
            SubjectLayer(cfg.n_subjects, channels, cfg.subject_init_identity)
            if cfg.subject_layer
            else None
        )
        blocks = []
        for k in range(cfg.depth):
            dilations = (
                2 ** ((2 * k) % cfg.dilation_period),
                2 ** ((2 * k + 1) % cfg.dilation_period),
            )
            in_ch = channels if k == 0 else cfg.hidden_channels
            blocks.append(
                ConvBlock(
                    in_ch,
                    cfg.hidden_channels,
                    cfg.kernel_size,
                    dilations,
                    cfg.glu,
                    cfg.batch_norm,
                    cfg.conv_dropout,
                )
            )
        self.blocks = nn.Sequential(*blocks)
        self.projection = nn.ModuleDict(
            {
                "hidden": nn.Linear(cfg.hidden_channels, cfg.projection_hidden),
                "out": nn.Linear(cfg.projection_hidden, cfg.feature_dim),
            }
        )
        self.aggregation = TemporalAggregation(
            cfg.aggregation, cfg.feature_dim, cfg.n_times, cfg.attention_heads
        )
        hidden = cfg.head_hidden or cfg.feature_dim
        self.clip_head = MLPHead(cfg.feature_dim, hidden, cfg.out_dim, cfg.head_dropout)
        self.mse_head = MLPHead(cfg.feature_dim, hidden, cfg.out_dim, cfg.head_dropout)

    def features(self, x: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        """Backbone up to the aggregation: x (B, C, T), subject (B,) long -> (B, F')."""
        if x.ndim != 3 or x.shape[1:] != (self.cfg.n_channels, self.cfg.n_times):
            raise ValueError(
                f"expected x of shape (B, {self.cfg.n_channels}, {self.cfg.n_times}), got {tuple(x.shape)}"
            )
        # From here on activations are time-major (B, T, D): see megdecode.models.dilated.
        h = self.spatial_attention(x) if self.spatial_attention is not None else x.transpose(1, 2)
        h = self.initial_linear(h)
        if self.subject_layer is not None:
            h = self.subject_layer(h, subject)
        h = F.gelu(self.projection["hidden"](self.blocks(h)))
        # The last linear layer runs inside the aggregation (after it when that is cheaper).
        return self.aggregation(h, self.projection["out"])

    def forward(self, x: torch.Tensor, subject: torch.Tensor) -> BrainOutput:
        z = self.features(x, subject)
        return BrainOutput(clip=self.clip_head(z), mse=self.mse_head(z))

    def count_parameters(self, trainable_only: bool = True) -> dict[str, int]:
        """Parameters per top-level component plus "total" (`count_parameters`)."""
        return count_parameters(self, trainable_only)

    def folded(self) -> BrainModule:
        """The copy serving runs: eval mode, input layers folded into one map per subject
        (`megdecode.models.fold`); same outputs to float rounding, cheaper per window."""
        return fold(self)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> dict[str, int]:
    """Parameters per top-level component plus "total"; buffers are not counted."""
    counts: dict[str, int] = {}
    for name, child in model.named_children():
        counts[name] = sum(
            p.numel() for p in child.parameters() if p.requires_grad or not trainable_only
        )
    own = sum(
        p.numel() for p in model.parameters(recurse=False) if p.requires_grad or not trainable_only
    )
    if own:
        counts["other"] = own
    counts["total"] = sum(counts.values())
    return counts
