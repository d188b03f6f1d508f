"""AutoKL latents: the KL autoencoder of latent diffusion (diffusers ``AutoencoderKL``).

The paper's low-level target: what Versatile Diffusion (brain-diffuser) starts its
denoising from, so a predicted AutoKL latent carries layout and colour into generation.
Two outputs:
- ``"latent"`` (name ``autokl``): the posterior mean of the image resized to
  `image_size` (512 px -> 4 x 64 x 64 for Stable Diffusion's VAE), times the VAE's
  ``scaling_factor`` (0.18215), i.e. in the diffusion model's latent space; a generator
  divides by ``scaling_factor`` before ``vae.decode``. The mean, not a sample, because a
  target must be a deterministic function of the pixels. Flattened to F; the
  (channels, h, w) shape is in ``token_shape``.
- ``"avg"`` (name ``autokl-avg``): that latent averaged over its channels, (h, w) =
  64 x 64 = 4,096 values, the paper's lower-dimensional AutoKL variant.

Weights come from a local diffusers folder (``config.json`` + weights, e.g. the ``vae``
subfolder of a Stable Diffusion / Versatile Diffusion download), loaded with
``local_files_only=True``; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from megdecode.config import FlatConfig
from megdecode.latents.weights import (
    require_weights,
    seeded_init,
    weights_identity,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TinyAutoKLConfig(FlatConfig):
    """A small random AutoencoderKL for tests and twin demos (2 blocks: downsamples by 2)."""

    block_out_channels: tuple[int, ...] = (8, 16)
    latent_channels: int = 4
    norm_num_groups: int = 4
    sample_size: int = 64

    def build(self):
        from diffusers import AutoencoderKL

        n = len(self.block_out_channels)
        return AutoencoderKL(
            block_out_channels=self.block_out_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=self.sample_size,
        )


class AutoKLEncoder:
    """RGB images -> AutoKL latents (N, F) float32, on `device`."""

    def __init__(
        self,
        weights: str | Path | None = None,
        output: str = "latent",
        image_size: int = 512,
        device: str = "cpu",
        allow_random_init: bool = False,
        random_config: TinyAutoKLConfig | None = None,
    ) -> None:
        import torch
        from diffusers import AutoencoderKL

        if output not in ("latent", "avg"):
            raise ValueError(f"output must be 'latent' or 'avg', got {output!r}")
        path = require_weights(
            weights,
            "AutoKLEncoder",
            "a diffusers folder with config.json (AutoencoderKL)",
            allow_random_init,
        )
        if path is None:
            config = random_config or TinyAutoKLConfig()
            with seeded_init():
                vae = config.build()
            arch = config.to_json()
        else:
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"no weights at {path}: expected a diffusers AutoencoderKL folder with config.json"
                )
            vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
            arch = "pretrained"
            logger.info("AutoKL: weights from %s", path)
        self.vae = vae.to(device).eval()
        self.device, self.output, self.image_size = device, output, int(image_size)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.name = "autokl" if output == "latent" else "autokl-avg"
        self.fingerprint = f"autokl|{arch}|{weights_identity(path)}|{output}|{self.image_size}px"
        probe = self._forward(torch.zeros(1, 3, self.image_size, self.image_size, device=device))
        self.token_shape: tuple[int, ...] | None = tuple(probe.shape[1:])
        self.dim = int(np.prod(probe.shape[1:]))

    def _forward(self, pixels):
        """(B, 3, S, S) in [-1, 1] -> (B, C, h, w) scaled latent mean, or (B, h, w) average."""
        import torch

        with torch.inference_mode():
            mean = self.vae.encode(pixels).latent_dist.mean * self.scaling_factor
        return mean if self.output == "latent" else mean.mean(dim=1)

    def pixels(self, images: Sequence[Image.Image]):
        """RGB images -> (N, 3, S, S) float tensor in [-1, 1] (bicubic resize to S)."""
        import torch

        size = (self.image_size, self.image_size)
        arrays = [
            np.asarray(im.convert("RGB").resize(size, Image.Resampling.BICUBIC), np.float32)
            for im in images
        ]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return (batch / 127.5 - 1.0).to(self.device)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, F) float32 (flattened row-major from `token_shape`)."""
        if not images:
            return np.empty((0, self.dim), np.float32)
        out = self._forward(self.pixels(images))
        return out.float().cpu().numpy().reshape(len(images), -1)
