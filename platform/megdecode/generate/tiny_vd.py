"""A tiny random Versatile Diffusion folder, in the layout real VD weights are saved in.

Tests, benchmarks and the GPU check load it through the same `read_vd_folder` a real
``shi-labs/versatile-diffusion`` download goes through (model_index.json, image_unet/,
text_unet/ as UNetFlatConditionModel, vae/, scheduler/), so the loader, the dual-attention
pairing and the sampling loop run end to end in about a second. The CLIP encoders are
replaced by a stored ``null_embeddings.safetensors``. Its images are noise shaped by
random weights, never a result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from megdecode.config import FlatConfig
from megdecode.generate.vd_folder import MODEL_INDEX, NULL_FILE, normalise_vision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyVDConfig(FlatConfig):
    """Sizes of the tiny components; VD's own are in the comments."""

    channels: tuple[int, ...] = (16, 32)  # UNet widths (VD: 320, 640, 1280, 1280)
    width: int = 16  # token width D = cross_attention_dim (VD: 768)
    text_tokens: int = 5  # Lt (VD: 77)
    vision_tokens: int = 5  # Lv (VD: 257 = 1 + 16 x 16)
    sample_size: int = 8  # UNet latent side (VD: 64)
    vae_channels: tuple[int, ...] = (8, 16)  # len-1 downsamplings (VD: 4 blocks, x8)
    head_dim: int = 8
    norm_groups: int = 8
    seed: int = 0

    @property
    def size(self) -> int:
        """Output image side in pixels."""
        return self.sample_size * 2 ** (len(self.vae_channels) - 1)


def build_tiny_vd(out_dir: str | Path, config: TinyVDConfig | None = None) -> Path:
    """Write a random-init VD folder loadable by `VersatileGenerator.from_dir`; returns it."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (
        UNetFlatConditionModel,
    )

    c = config or TinyVDConfig()
    out = Path(out_dir)
    n = len(c.channels)
    common = dict(
        block_out_channels=c.channels,
        layers_per_block=1,
        cross_attention_dim=c.width,
        attention_head_dim=c.head_dim,
        norm_num_groups=c.norm_groups,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        # as VD: cross-attention in every block but the lowest-resolution one
        image_unet: Any = UNet2DConditionModel(
            sample_size=c.sample_size,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            **common,
        )
        text_unet: Any = UNetFlatConditionModel(
            sample_size=c.sample_size,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockFlat",) * (n - 1) + ("DownBlockFlat",),
            up_block_types=("UpBlockFlat",) + ("CrossAttnUpBlockFlat",) * (n - 1),
            **common,
        )
        m = len(c.vae_channels)
        vae: Any = AutoencoderKL(
            block_out_channels=c.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * m,
            up_block_types=("UpDecoderBlock2D",) * m,
            latent_channels=4,
            norm_num_groups=c.norm_groups,
            sample_size=c.size,
        )
        null_text = torch.randn(1, c.text_tokens, c.width)
        null_text = null_text / null_text[:, -1:].norm(dim=-1, keepdim=True)
        null_vision = normalise_vision(torch.randn(1, c.vision_tokens, c.width))
    # VD's schedule (scaled-linear betas 0.00085..0.012), read as DDIM like brain-diffuser
    scheduler: Any = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    image_unet.save_pretrained(out / "image_unet")
    text_unet.save_pretrained(out / "text_unet")
    vae.save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    save_file(
        {"text": null_text[0].contiguous(), "vision": null_vision[0].contiguous()},
        str(out / NULL_FILE),
    )
    index = {
        "_class_name": "VersatileDiffusionPipeline",
        "image_unet": ["diffusers", "UNet2DConditionModel"],
        "text_unet": ["versatile_diffusion", "UNetFlatConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (out / MODEL_INDEX).write_text(json.dumps(index, indent=2))
    logger.info("random-init Versatile Diffusion folder at %s (not trained)", out)
    return out
