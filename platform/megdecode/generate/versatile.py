"""The paper's generator: Versatile Diffusion dual guidance on predicted latents (DESIGN §4).

After brain-diffuser (Ozcelik & VanRullen 2023): the image is denoised by VD's image
UNet whose cross-attention sites each run two transformers, one on the predicted
CLIP-Text tokens and one on the predicted CLIP-Vision tokens, mixed as
``text_mix * text + (1 - text_mix) * vision`` (diffusers' ``DualTransformer2DModel``);
the predicted AutoKL latent, noised to `strength` of the schedule, is where DDIM starts;
classifier-free guidance against VD's null embeddings. The components come from a local
VD folder (`megdecode.generate.vd_folder`); no CLIP encoder runs at generation time.

Latents in (what the brain module decodes, flattened per sample):
- ``clip-vision-tokens`` (N, Lv*D), 257 x 768 for VD: projected ViT-L/14 tokens as
  `latents.encoders.clip` stores them (unnormalised); divided here by the norm of their
  class token, as VD's `_encode_image_prompt` does.
- ``clip-text-tokens`` (N, Lt*D), 77 x 768: projected CLIP-Text tokens as
  `latents.encoders.clip_text` stores them (unnormalised); brought to unit mean row norm
  (see `vd_folder.normalise_text` for why not VD's end-of-text norm).
- ``autokl`` (N, 4*h*w), 4 x 64 x 64 for VD: the VAE posterior mean times the VAE's
  ``scaling_factor``, i.e. already in the UNet's latent space, used as is.
Set ``normalize=False`` when a model predicts embeddings already normalised VD's way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from megdecode.config import ConfigError, FlatConfig
from megdecode.generate.images import to_pil
from megdecode.generate.vd_folder import (
    VDComponents,
    normalise_text,
    normalise_vision,
    read_vd_folder,
)

logger = logging.getLogger(__name__)

VISION, TEXT, INIT = "clip-vision-tokens", "clip-text-tokens", "autokl"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class VersatileConfig(FlatConfig):
    """Sampling settings; defaults are brain-diffuser's reconstruction settings."""

    steps: int = 50  # DDIM steps (paper and brain-diffuser: 50)
    guidance_scale: float = 7.5  # classifier-free guidance (brain-diffuser: 7.5); <= 1: none
    strength: float = 0.75  # share of the schedule re-noised from the AutoKL latent (0.75)
    # weight of the text stream in every dual attention (VD's text_to_image_strength);
    # brain-diffuser mixes 0.4 text / 0.6 vision as we read its script: our choice, cited so
    text_mix: float = 0.4
    seed: int = 0  # sample i of a call uses torch.Generator seeded seed + i
    eta: float = 0.0  # DDIM eta; 0 = deterministic sampler
    batch_size: int = 4  # samples per UNet call (x2 with guidance)
    normalize: bool = True  # apply VD's embedding normalisation to the predicted tokens

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(
                f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if not 0.0 <= self.strength <= 1.0:
            raise ConfigError(f"strength must be in [0, 1], got {self.strength}")
        if not 0.0 <= self.text_mix <= 1.0:
            raise ConfigError(f"text_mix must be in [0, 1], got {self.text_mix}")
        if self.guidance_scale < 0 or self.eta < 0:
            raise ConfigError("guidance_scale and eta must be >= 0")


def pick_device(device: str) -> torch.device:
    """ "auto" -> cuda when present, else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class VersatileGenerator:
    """Predicted (CLIP-Vision, CLIP-Text, AutoKL) latents -> images. Build with `from_dir`."""

    def __init__(
        self,
        parts: VDComponents,
        device: str = "auto",
        dtype: str = "float32",
        defaults: VersatileConfig | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.device, self.dtype = pick_device(device), DTYPES[dtype]
        self.unet = _place(parts.unet, self.device, self.dtype).eval()
        self.vae = _place(parts.vae, self.device, self.dtype).eval()
        self.scheduler = parts.scheduler
        self.null_text = parts.null_text.to(self.device, self.dtype)
        self.null_vision = parts.null_vision.to(self.device, self.dtype)
        self.default_config = defaults or VersatileConfig()
        self.width = int(self.unet.config.cross_attention_dim)
        self.scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = int(self.unet.config.sample_size)
        self.latent_shape = (int(self.unet.config.in_channels), side, side)
        self.size = side * self.scale_factor  # output side in pixels

    @classmethod
    def from_dir(
        cls, path: str | Path, device: str = "auto", dtype: str = "float32"
    ) -> VersatileGenerator:
        """Load a VD folder; FileNotFoundError("no weights at ...") when it is incomplete."""
        return cls(read_vd_folder(path), device=device, dtype=dtype)

    @property
    def token_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of each latent before flattening."""
        return {
            VISION: (len(self.null_vision), self.width),
            TEXT: (len(self.null_text), self.width),
            INIT: self.latent_shape,
        }

    @property
    def conditions(self) -> dict[str, int]:
        """{latent name: F}: what `generate` takes (the serving contract of a generator)."""
        return {name: int(np.prod(shape)) for name, shape in self.token_shapes.items()}

    def _tensor(self, latents: dict[str, np.ndarray], name: str, n: int | None) -> torch.Tensor:
        """latents[name] (N, F) or (N, *shape) -> (N, *shape) on the device; clear errors."""
        shape = self.token_shapes[name]
        if name not in latents:
            raise ValueError(
                f"missing latent {name!r}; this generator needs {sorted(self.conditions)}"
            )
        arr = np.asarray(latents[name], np.float32)
        flat = int(np.prod(shape))
        if (
            arr.ndim < 2
            or int(np.prod(arr.shape[1:])) != flat
            or (arr.ndim > 2 and arr.shape[1:] != shape)
        ):
            raise ValueError(
                f"latent {name!r} has shape {arr.shape}, expected (N, {flat}) or (N, "
                f"{', '.join(map(str, shape))})"
            )
        if n is not None and len(arr) != n:
            raise ValueError(f"latents disagree on N: {name!r} has {len(arr)}, others {n}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"latent {name!r} has non-finite values")
        return torch.from_numpy(arr.reshape(len(arr), *shape)).to(self.device, self.dtype)

    @torch.no_grad()
    def generate(
        self,
        latents: dict[str, np.ndarray],
        config: VersatileConfig | None = None,
        seeds: Sequence[int] | None = None,
        **overrides: Any,
    ) -> list[Image.Image]:
        """latents {name: (N, F)} -> N RGB images of `size` pixels.

        Deterministic for (seed, latents): sample i uses seed + i, or seeds[i] when given,
        so a sample does not depend on how a caller batches. ``autokl`` may be left out
        only at strength 1 (pure noise start). Extra names are ignored.
        """
        cfg = (config or self.default_config).replace(**overrides)
        vision = self._tensor(latents, VISION, None)
        n = len(vision)
        text = self._tensor(latents, TEXT, n)
        init = self._tensor(latents, INIT, n) if (cfg.strength < 1 or INIT in latents) else None
        if seeds is not None and len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} samples")
        all_seeds = list(seeds) if seeds is not None else [cfg.seed + i for i in range(n)]
        if cfg.normalize:
            vision, text = normalise_vision(vision), normalise_text(text)
        images: list[Image.Image] = []
        for s in range(0, n, cfg.batch_size):
            part = slice(s, s + cfg.batch_size)
            images += self._sample(
                text[part], vision[part], None if init is None else init[part], cfg, all_seeds[part]
            )
        return images

    def _set_mix(self, text_mix: float, text_tokens: int, vision_tokens: int) -> None:
        """Context = [text tokens | vision tokens]: text through the text transformer (1)."""
        from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel

        for module in self.unet.modules():
            if isinstance(module, DualTransformer2DModel):
                module.mix_ratio = text_mix
                module.condition_lengths = [text_tokens, vision_tokens]
                module.transformer_index_for_condition = [1, 0]

    def _sample(
        self,
        text: torch.Tensor,
        vision: torch.Tensor,
        init: torch.Tensor | None,
        cfg: VersatileConfig,
        seeds: list[int],
    ) -> list[Image.Image]:
        n = len(seeds)
        context = torch.cat([text, vision], dim=1)
        guided = cfg.guidance_scale > 1.0
        if guided:
            null = torch.cat([self.null_text, self.null_vision])[None].expand(n, -1, -1)
            context = torch.cat([null, context])
        self._set_mix(cfg.text_mix, text.shape[1], vision.shape[1])
        # noise from a per-sample CPU generator: the same on every device and batching
        noise = torch.stack(
            [
                torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s)))
                for s in seeds
            ]
        ).to(self.device, self.dtype)
        self.scheduler.set_timesteps(cfg.steps, device=self.device)
        timesteps = self.scheduler.timesteps
        if init is None or cfg.strength >= 1.0:
            sample = noise * float(self.scheduler.init_noise_sigma)
        else:
            # img2img as brain-diffuser: skip the first (1 - strength) of the schedule
            kept = min(int(cfg.steps * cfg.strength), cfg.steps)
            timesteps = timesteps[cfg.steps - kept :]
            sample = (
                self.scheduler.add_noise(init, noise, timesteps[:1].repeat(n)) if kept else init
            )
        gen = torch.Generator().manual_seed(int(seeds[0]))  # eta > 0 draws extra noise
        step_kwargs: dict[str, Any] = {"eta": cfg.eta, "generator": gen} if cfg.eta > 0 else {}
        for t in timesteps:
            model_in = torch.cat([sample, sample]) if guided else sample
            model_in = self.scheduler.scale_model_input(model_in, t)
            eps = self.unet(model_in, t, encoder_hidden_states=context).sample
            if guided:
                uncond, conditioned = eps.chunk(2)
                eps = uncond + cfg.guidance_scale * (conditioned - uncond)
            sample = self.scheduler.step(eps, t, sample, **step_kwargs).prev_sample
        pixels = self.vae.decode(sample / float(self.vae.config.scaling_factor)).sample
        return to_pil(pixels.float())


def _place(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """`model` on `device`, cast only when `dtype` is not its float32 (diffusers warns on casts)."""
    model = model.to(device)
    return model if dtype == torch.float32 else model.to(dtype)
