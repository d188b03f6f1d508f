"""Predicted latents -> cross-attention tokens, and dual guidance by mixing streams.

Each named latent (N, F) becomes one *stream* of cross-attention tokens (N, K, D), D the
UNet's cross-attention width:

- ``project``: z-score with the training latents' mean/std (stored with the weights, so
  the generator sees the scale it was trained on), a learned linear map to K*D, reshaped
  to K tokens, LayerNorm. Used for flat vectors (handcrafted features, a CLIP CLS vector).
- ``tokens``: the latent already is a token grid of width D (e.g. CLIP-Vision 257x768 with
  a 768-wide UNet): reshaped to (F/D, D) and used directly, as Versatile Diffusion does
  with its CLIP embeddings.

Every stream also owns a learned *null* token sequence: the condition of classifier-free
guidance (training drops the condition to it at random).

Dual guidance: Versatile Diffusion mixes, in every transformer block, the outputs of an
image-conditioned and a text-conditioned transformer. Here one UNet serves all streams:
`MixedStreamsProcessor` splits the concatenated tokens back into streams, runs the
cross-attention once per stream and returns the weighted sum of the outputs, so the mix
happens inside every block at the cost of one extra attention per stream (not one extra
UNet pass per stream).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

MODES = ("project", "tokens")


@dataclass(frozen=True)
class StreamSpec:
    """How one named latent becomes tokens: dim F, mode, number of tokens K."""

    name: str
    dim: int
    mode: str = "project"
    n_tokens: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"condition {self.name!r}: mode must be one of {MODES}, got {self.mode!r}"
            )
        if self.dim < 1 or self.n_tokens < 1:
            raise ValueError(f"condition {self.name!r}: dim and n_tokens must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "mode": self.mode, "n_tokens": self.n_tokens}

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> StreamSpec:
        return cls(
            name=name,
            dim=int(d["dim"]),
            mode=str(d.get("mode", "project")),
            n_tokens=int(d.get("n_tokens", 4)),
        )


def make_spec(
    name: str, dim: int, width: int, n_tokens: int = 4, direct: bool = False
) -> StreamSpec:
    """`direct` uses the latent as a token grid; it must then be a multiple of `width`."""
    if direct:
        if dim % width:
            raise ValueError(f"condition {name!r}: F={dim} is not a token grid of width {width}")
        return StreamSpec(name, dim, "tokens", dim // width)
    return StreamSpec(name, dim, "project", n_tokens)


class LatentStream(nn.Module):
    """(N, F) latent -> (N, K, D) tokens; `null(n)` -> (n, K, D) learned null tokens."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, spec: StreamSpec, width: int) -> None:
        super().__init__()
        self.spec, self.width = spec, width
        self.register_buffer("mean", torch.zeros(spec.dim))
        self.register_buffer("std", torch.ones(spec.dim))
        if spec.mode == "project":
            self.proj: nn.Module = nn.Linear(spec.dim, spec.n_tokens * width)
            self.norm: nn.Module = nn.LayerNorm(width)
        else:
            if spec.dim != spec.n_tokens * width:
                raise ValueError(
                    f"condition {spec.name!r}: F={spec.dim} != {spec.n_tokens} x {width}"
                )
            self.proj, self.norm = nn.Identity(), nn.Identity()
        self.null_tokens = nn.Parameter(torch.randn(spec.n_tokens, width) * 0.02)

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """The training latents' per-dimension mean/std (F,), used to z-score inputs."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if self.spec.mode == "tokens":
            return latent.reshape(len(latent), self.spec.n_tokens, self.width)
        z = (latent - self.mean) / self.std
        return self.norm(self.proj(z).reshape(len(latent), self.spec.n_tokens, self.width))

    def null(self, n: int) -> torch.Tensor:
        return self.null_tokens.unsqueeze(0).expand(n, -1, -1)


class ConditionEncoder(nn.Module):
    """All streams of a generator, in a fixed order (the order of `specs`)."""

    def __init__(self, specs: Sequence[StreamSpec], width: int) -> None:
        super().__init__()
        if not specs:
            raise ValueError("a generator needs at least one cross-attention condition")
        self.names = [s.name for s in specs]
        self.width = width
        self.streams = nn.ModuleDict({s.name: LatentStream(s, width) for s in specs})

    def stream(self, name: str) -> LatentStream:
        module = self.streams[name]
        assert isinstance(module, LatentStream)
        return module

    @property
    def lengths(self) -> list[int]:
        return [self.stream(n).spec.n_tokens for n in self.names]

    def forward(
        self, latents: dict[str, torch.Tensor], keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Concatenated tokens (N, sum K, D). keep (N, S) bool: False -> that stream's null tokens."""
        parts = []
        for j, name in enumerate(self.names):
            stream = self.stream(name)
            tokens = stream(latents[name])
            if keep is not None:
                tokens = torch.where(keep[:, j, None, None], tokens, stream.null(len(tokens)))
            parts.append(tokens)
        return torch.cat(parts, dim=1)

    def null(self, n: int) -> torch.Tensor:
        """(n, sum K, D): the unconditional input of classifier-free guidance."""
        return torch.cat([self.stream(name).null(n) for name in self.names], dim=1)


def global_vector(
    context: torch.Tensor, lengths: Sequence[int], weights: Sequence[float]
) -> torch.Tensor:
    """(N, L, D) tokens of all streams -> (N, D): each stream's mean token, mixed with `weights`.

    The generator's global condition (added to the UNet's time embedding, scale and shift
    in every ResNet block): cross-attention alone has to learn *where* to draw from a few
    tokens, which a small UNet learns slowly; a global vector plus coordinate channels lets
    the convolutions place and colour a shape directly. The same mixing weights as the
    cross-attention keep dual guidance consistent; null tokens give the null vector.
    """
    chunks = torch.split(context, list(lengths), dim=1)
    # sum() starts from int 0, so mypy types the result int | Tensor; it is a Tensor here
    return sum(w * c.mean(dim=1) for w, c in zip(weights, chunks, strict=True))  # type: ignore[return-value]


def stream_weights(n_streams: int, mix: float) -> list[float]:
    """Mixing weights summing to 1: the first stream gets 1 - mix, the others share mix.

    With streams (vision, text) this is Versatile Diffusion's text-to-image strength: 0 is
    the vision stream alone, 1 the text stream alone. One stream: weight 1, `mix` unused.
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    if n_streams == 1:
        return [1.0]
    return [1.0 - mix] + [mix / (n_streams - 1)] * (n_streams - 1)


class MixedStreamsProcessor:
    """Attention processor: cross-attention per stream, outputs mixed with `stream_weights`.

    Self-attention (no encoder states) and single-stream calls are plain scaled dot-product
    attention. Stateless; lengths and weights arrive through ``cross_attention_kwargs``.
    """

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        stream_lengths: Sequence[int] | None = None,
        stream_weights: Sequence[float] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or not stream_lengths or len(stream_lengths) == 1:
            return self._attend(attn, hidden_states, encoder_hidden_states)
        chunks = torch.split(encoder_hidden_states, list(stream_lengths), dim=1)
        weights = stream_weights or [1.0 / len(chunks)] * len(chunks)
        out = hidden_states.new_zeros(())
        for w, chunk in zip(weights, chunks, strict=True):
            if w:
                out = out + w * self._attend(attn, hidden_states, chunk)
        return out

    @staticmethod
    def _attend(
        attn: Any, hidden_states: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        """Scaled dot-product attention of `attn` (B, L, C) over context (B, S, D) or itself."""
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if context is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch, heads = hidden_states.shape[0], attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = k.shape[-1] // heads
        q, k, v = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
