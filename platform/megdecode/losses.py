"""Training losses: CLIP (symmetric InfoNCE, learned temperature), MSE and their mix.

L = λ · L_CLIP + (1 − λ) · L_MSE (Benchetrit et al. 2023). L_CLIP aligns the CLIP head's
output with the image latent of the same trial against the other trials of the batch, on
cosine similarity; L_MSE regresses the unnormalised latent with the MSE head, which is
what generation needs. A batch drawn across subjects and repetitions holds the same image
more than once (~3.5 such pairs per batch of 64 on the demo twin); those pairs are not
negatives, so the CLIP loss takes the batch's image ids and leaves them out. Everything stays on the device: no Python loop over the batch and
no `.item()`, so a training step never waits on a host sync here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from megdecode.config import ConfigError, FlatConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossConfig(FlatConfig):
    """Loss weights and the CLIP temperature."""

    # Weight λ of the CLIP term. 0.75 is our choice, not a value from the paper: CLIP-heavy
    # because the contrastive term drives retrieval, with enough MSE to train the MSE head
    # that generation uses. 1.0 = CLIP only, 0.0 = MSE only.
    lam: float = 0.75
    # Initial temperature τ₀; our choice, taken from CLIP / open_clip (not from the paper).
    # The learned parameter is log(1/τ) (open_clip's logit_scale), so 0.07 starts the
    # logit scale at 1/0.07 ≈ 14.3.
    temperature_init: float = 0.07
    # Upper bound on the logit scale 1/τ; 100 as in CLIP / open_clip, where larger
    # scales made training unstable.
    max_logit_scale: float = 100.0
    learn_temperature: bool = True  # False: τ stays at temperature_init

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lam: must be in [0, 1], got {self.lam}")
        if self.temperature_init <= 0.0:
            raise ConfigError(f"temperature_init: must be > 0, got {self.temperature_init}")
        if self.max_logit_scale < 1.0:
            raise ConfigError(f"max_logit_scale: must be >= 1, got {self.max_logit_scale}")


def same_image_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """(B,) image ids -> (B, B) bool, True where i != j show the same image.

    Those pairs are false negatives of in-batch InfoNCE: the brain response of subject A
    to an image is pushed away from the latent of the same image seen by subject B (or in
    another repetition), which is the very latent it should match.
    """
    if image_ids.ndim != 1:
        raise ValueError(f"image_ids must be (B,), got {tuple(image_ids.shape)}")
    same = image_ids[:, None] == image_ids[None, :]
    return same & ~torch.eye(len(image_ids), dtype=torch.bool, device=image_ids.device)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the batch with a learned (or fixed) temperature.

    Convention: the MEAN of the two directions, (CE(brain -> image) + CE(image -> brain))
    / 2, each cross-entropy averaged over the batch (as open_clip). Pair (i, i) is the
    positive; every other pair (i, j) is a negative unless i and j show the same image,
    in which case it is left out of both softmaxes (its logit is -inf). τ is kept with
    the model: `logit_scale` is in the state dict the bundle saves (`LossState`).

    `logit_scale` holds log(1/τ); the scale used is exp(clamp(logit_scale, 0, log max)),
    so 1 <= 1/τ <= max whatever the optimiser did. Call `clamp_()` after each optimiser
    step (as open_clip does) so the stored parameter does not drift past the bound.
    """

    def __init__(
        self,
        temperature_init: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        init = torch.tensor(math.log(1.0 / temperature_init), dtype=torch.float32)
        if learn_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.max_log_scale = math.log(max_logit_scale)

    def scale(self) -> torch.Tensor:
        """The multiplicative logit scale 1/τ, a 0-d tensor in [1, max_logit_scale].

        The value is clamped but the gradient is the identity's (straight-through): a plain
        clamp has zero gradient at and beyond its bound, so a temperature that reached the
        bound could never move back.
        """
        log_scale = self.logit_scale
        clamped = log_scale.clamp(0.0, self.max_log_scale)
        return (log_scale + (clamped - log_scale).detach()).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Put the stored log-scale back into [0, log max] (after an optimiser step)."""
        self.logit_scale.clamp_(0.0, self.max_log_scale)

    def get_logits(
        self, brain: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """brain (B, F), image (B, F) -> (logits_per_brain (B, B), logits_per_image (B, B)).

        Entry [i, j] is the scaled cosine similarity of brain sample i and image j.
        """
        brain = F.normalize(brain, dim=-1)
        image = F.normalize(image, dim=-1)
        logits = self.scale() * brain @ image.T
        return logits, logits.T

    def forward(
        self, brain: torch.Tensor, image: torch.Tensor, image_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean of the brain->image and image->brain cross-entropies; 0-d tensor.

        brain, image (B, F); image_ids (B,) ints: rows with equal ids show the same image
        and are not each other's negatives. None treats every row as a distinct image
        (plain InfoNCE, labels arange(B)); it is required, so that leaving duplicates in
        is a visible choice of the caller.
        """
        if brain.shape != image.shape or brain.ndim != 2:
            raise ValueError(
                f"expected two (B, F) tensors, got {tuple(brain.shape)} and {tuple(image.shape)}"
            )
        per_brain, per_image = self.get_logits(brain, image)
        if image_ids is not None:
            if image_ids.shape != (brain.shape[0],):
                raise ValueError(
                    f"image_ids must be ({brain.shape[0]},), got {tuple(image_ids.shape)}"
                )
            # symmetric mask, so one fill serves both directions
            same = same_image_mask(image_ids.to(brain.device))
            per_brain = per_brain.masked_fill(same, float("-inf"))
            per_image = per_image.masked_fill(same, float("-inf"))
        labels = torch.arange(brain.shape[0], device=brain.device)
        return (F.cross_entropy(per_brain, labels) + F.cross_entropy(per_image, labels)) / 2


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over batch and features on unnormalised latents: (B, F) x2 -> 0-d."""
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    return F.mse_loss(pred, target)


class LossParts(NamedTuple):
    """total = lam * clip + (1 - lam) * mse; all 0-d tensors (detach before logging)."""

    total: torch.Tensor
    clip: torch.Tensor
    mse: torch.Tensor


class CombinedLoss(nn.Module):
    """L = λ·CLIP(clip_pred, target) + (1−λ)·MSE(mse_pred, target), with both parts returned."""

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.clip = ClipLoss(
            self.cfg.temperature_init, self.cfg.learn_temperature, self.cfg.max_logit_scale
        )

    def forward(
        self,
        clip_pred: torch.Tensor,
        mse_pred: torch.Tensor,
        target: torch.Tensor,
        image_ids: torch.Tensor | None,
    ) -> LossParts:
        """clip_pred, mse_pred, target: (B, F); image_ids (B,) or None (see `ClipLoss`)."""
        clip = self.clip(clip_pred, target, image_ids)
        mse = mse_loss(mse_pred, target)
        lam = self.cfg.lam
        return LossParts(total=lam * clip + (1.0 - lam) * mse, clip=clip, mse=mse)

    def clamp_(self) -> None:
        """Keep the learned temperature in range; call after each optimiser step."""
        self.clip.clamp_()
