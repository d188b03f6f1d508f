"""A latent diffusion generator conditioned on predicted image latents (DESIGN §4).

The paper reconstructs images with Versatile Diffusion's dual guidance (after
brain-diffuser): CLIP-Vision and CLIP-Text embeddings steer the UNet's cross-attention,
an AutoKL latent initialises the sampler with a strength, 50 DDIM steps. diffusers 0.42
still ships `VersatileDiffusionDualGuidedPipeline`, but only under
`diffusers.pipelines.deprecated`, and its `__call__` takes a prompt string and a PIL image
which it encodes itself: it cannot take predicted embeddings, and it has no init latent.
So the loop is assembled here from what diffusers maintains: `UNet2DConditionModel`,
`DDIMScheduler` and (optionally) `AutoencoderKL`, with:

- conditioning: every named latent (N, F) -> cross-attention tokens through a small
  learned projection, or directly when it already is a token grid (`conditioning.py`);
- classifier-free guidance against learned null tokens, guidance scale as config;
- dual guidance: the streams mixed inside every cross-attention (`mix`, as VD's
  text-to-image strength);
- init latent: when the folder names one (e.g. "autokl"), that latent, reshaped to the
  UNet's sample (C, h, w), is noised to `strength` of the schedule and denoised from
  there (img2img). Without a VAE the UNet works in pixel space ([-1, 1], RGB),
  optionally space-to-depth folded by a patch p (``pixel_unshuffle``: 32x32x3 ->
  8x8x48 for p = 4), a lossless, weight-free stand-in for a VAE that makes every UNet
  step p^2 times cheaper on a CPU.

The folder it is loaded from and saved to is `megdecode.generate.folder`; PIL images go
in and out through `megdecode.generate.images`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from megdecode.config import ConfigError, FlatConfig
from megdecode.generate.conditioning import (
    ConditionEncoder,
    MixedStreamsProcessor,
    global_vector,
    stream_weights,
)
from megdecode.generate.folder import read_folder, write_folder
from megdecode.generate.images import to_pil

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateConfig(FlatConfig):
    """Sampling settings; a generator folder may store its own tuned defaults."""

    steps: int = 50  # DDIM steps (paper: 50)
    guidance_scale: float = 7.5  # classifier-free guidance; 1.0 = conditional only, no null pass
    strength: float = (
        0.75  # init-latent strength: fraction of the schedule re-noised; 1.0 = ignore it
    )
    mix: float = 0.5  # weight of the streams after the first (VD text-to-image strength)
    height: int | None = None  # output size in pixels; None = the generator's size
    width: int | None = None
    seed: int = 0  # sample i of a call uses torch.Generator seeded seed + i
    eta: float = 0.0  # DDIM eta; 0 = deterministic sampler
    batch_size: int = 16  # samples per UNet call (x2 with guidance)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"strength must be in (0, 1], got {self.strength}")
        if not 0.0 <= self.mix <= 1.0:
            raise ConfigError(f"mix must be in [0, 1], got {self.mix}")
        if self.guidance_scale < 0 or self.batch_size < 1:
            raise ConfigError("guidance_scale must be >= 0 and batch_size >= 1")


class LatentGenerator:
    """Predicted latents -> images. Build with `from_dir`; see the module docstring."""

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        encoder: ConditionEncoder,
        meta: dict[str, Any],
        vae: Any | None = None,
        device: str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval()
        self.unet.set_attn_processor(MixedStreamsProcessor())
        self.vae = vae.to(self.device).eval() if vae is not None else None
        self.encoder = encoder.to(self.device).eval()
        self.scheduler = scheduler
        self.meta = meta
        self.init_latent: str | None = meta.get("init_latent")
        self.conditions: dict[str, int] = {n: int(c["dim"]) for n, c in meta["conditions"].items()}
        self.size: int = int(meta["size"])
        self.default_config = GenerateConfig.from_flat_dict(meta.get("defaults", {}))
        if self.init_latent is not None and self.init_latent not in self.conditions:
            raise ValueError(f"init latent {self.init_latent!r} is not among the conditions")

    # --- folder -------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path, device: str = "cpu") -> LatentGenerator:
        """Load a generator folder; FileNotFoundError("no weights at ...") if incomplete."""
        unet, scheduler, encoder, meta, vae = read_folder(path)
        return cls(unet, scheduler, encoder, meta, vae=vae, device=device)

    def save(self, path: str | Path) -> Path:
        """Write the folder that `from_dir` reads; returns it."""
        return write_folder(path, self.unet, self.scheduler, self.encoder, self.meta, self.vae)

    # --- sampling -----------------------------------------------------------------------
    @property
    def patch(self) -> int:
        """Space-to-depth factor p of pixel space: the UNet sees (3 p^2, H/p, W/p)."""
        return int(self.meta.get("patch", 1))

    @property
    def scale_factor(self) -> int:
        """Pixels per UNet sample cell (the patch in pixel space, the VAE's downsampling else)."""
        if self.vae is None:
            return self.patch
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def coords(self) -> bool:
        """Whether the UNet also sees two coordinate channels (x, y in [-1, 1])."""
        return bool(self.meta.get("arch", {}).get("coords", False))

    @property
    def global_cond(self) -> bool:
        """Whether the condition also enters as a global vector (the UNet's class embedding)."""
        return getattr(self.unet.config, "class_embed_type", None) == "projection"

    def denoise(
        self,
        sample: torch.Tensor,
        t: torch.Tensor | int,
        context: torch.Tensor,
        weights: Sequence[float],
    ) -> torch.Tensor:
        """One UNet call: the model output for `sample` at `t` given the condition tokens.

        Adds the coordinate channels and the global condition vector when the
        architecture has them; training and sampling both go through here.
        """
        model_in = torch.cat([sample, _coord_grid(sample)], dim=1) if self.coords else sample
        lengths = self.encoder.lengths
        kwargs = {"stream_lengths": lengths, "stream_weights": list(weights)}
        extra = (
            {"class_labels": global_vector(context, lengths, weights)} if self.global_cond else {}
        )
        return self.unet(
            model_in, t, encoder_hidden_states=context, cross_attention_kwargs=kwargs, **extra
        ).sample

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> UNet samples (N, C, H/s, W/s); training targets."""
        if self.vae is None:
            return F.pixel_unshuffle(images, self.patch) if self.patch > 1 else images
        return self.vae.encode(images).latent_dist.mean * float(self.vae.config.scaling_factor)

    def _check(self, latents: dict[str, np.ndarray]) -> int:
        n = None
        for name, dim in self.conditions.items():
            if name not in latents:
                raise ValueError(
                    f"missing latent {name!r}; this generator needs {sorted(self.conditions)}"
                )
            arr = np.asarray(latents[name])
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise ValueError(f"latent {name!r} has shape {arr.shape}, expected (N, {dim})")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"latent {name!r} has non-finite values")
            if n is not None and len(arr) != n:
                raise ValueError(f"latents disagree on N: {name!r} has {len(arr)}, others {n}")
            n = len(arr)
        return int(n or 0)

    @torch.no_grad()
    def generate(
        self,
        latents: dict[str, np.ndarray],
        config: GenerateConfig | None = None,
        seeds: Sequence[int] | None = None,
        **overrides: Any,
    ) -> list[Image.Image]:
        """latents[name] (N, F) float32 for each name in `conditions` -> N RGB images.

        Deterministic for (config.seed, latents): sample i uses seed + i, or seeds[i] when
        given (so a sample does not depend on how a caller batches). Extra names are ignored.
        """
        cfg = (
            (config or self.default_config).replace(**overrides)
            if overrides
            else (config or self.default_config)
        )
        n = self._check(latents)
        if seeds is not None and len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} samples")
        all_seeds = list(seeds) if seeds is not None else [cfg.seed + i for i in range(n)]
        images: list[Image.Image] = []
        for start in range(0, n, cfg.batch_size):
            part = {
                k: np.asarray(latents[k][start : start + cfg.batch_size], np.float32)
                for k in self.conditions
            }
            images += self._sample(part, cfg, all_seeds[start : start + cfg.batch_size])
        return images

    def _sample(
        self, latents: dict[str, np.ndarray], cfg: GenerateConfig, seeds: list[int]
    ) -> list[Image.Image]:
        dev, n = self.device, len(seeds)
        height, width = cfg.height or self.size, cfg.width or self.size
        f = self.scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f}, got {height}x{width}")
        shape = (
            int(self.unet.config.out_channels),
            height // self.scale_factor,
            width // self.scale_factor,
        )
        noise = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        ).to(dev)
        tensors = {k: torch.as_tensor(v, device=dev) for k, v in latents.items()}
        streams = {k: v for k, v in tensors.items() if k != self.init_latent}
        cond = self.encoder(streams)
        guided = cfg.guidance_scale != 1.0
        context = torch.cat([self.encoder.null(n), cond]) if guided else cond
        weights = stream_weights(len(self.encoder.names), cfg.mix)

        self.scheduler.set_timesteps(cfg.steps, device=dev)
        timesteps = self.scheduler.timesteps
        sample = noise * float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        if self.init_latent is not None and cfg.strength < 1.0:
            init = tensors[self.init_latent].reshape(n, *shape)
            if init.shape[-2:] != shape[-2:]:
                raise ValueError(
                    f"init latent {self.init_latent!r} fits {shape}, not {height}x{width}"
                )
            start = cfg.steps - max(1, int(round(cfg.steps * cfg.strength)))
            timesteps = timesteps[start:]
            sample = self.scheduler.add_noise(init, noise, timesteps[:1].repeat(n))
        gen = torch.Generator().manual_seed(int(seeds[0]))  # eta > 0 draws extra noise
        for t in timesteps:
            model_in = torch.cat([sample, sample]) if guided else sample
            model_in = self.scheduler.scale_model_input(model_in, t)
            eps = self.denoise(model_in, t, context, weights)
            if guided:
                uncond, conditioned = eps.chunk(2)
                eps = uncond + cfg.guidance_scale * (conditioned - uncond)
            step_kwargs = {"eta": cfg.eta, "generator": gen} if cfg.eta > 0 else {}
            sample = self.scheduler.step(eps, t, sample, **step_kwargs).prev_sample
        return to_pil(self._decode(sample))

    def _decode(self, sample: torch.Tensor) -> torch.Tensor:
        """UNet sample -> images in [-1, 1] (N, 3, H, W)."""
        if self.vae is None:
            return F.pixel_shuffle(sample, self.patch) if self.patch > 1 else sample
        return self.vae.decode(sample / float(self.vae.config.scaling_factor)).sample


def _coord_grid(sample: torch.Tensor) -> torch.Tensor:
    """(N, 2, h, w): x and y of each cell centre in [-1, 1], for a sample (N, C, h, w)."""
    n, _, h, w = sample.shape
    ys = (torch.arange(h, device=sample.device, dtype=sample.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=sample.device, dtype=sample.dtype) + 0.5) / w * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))
    return grid.expand(n, 2, h, w)
