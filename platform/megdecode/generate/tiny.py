"""Fresh (random-init) generators: the architecture used by tests, serving and training.

`build_tiny_generator` writes a loadable folder in about a second. Its images are noise
shaped by random weights; it exists so tests and the serving stack can run end to end
before a trained generator exists, never as a result. `new_generator` is the same
architecture at any width, the starting point of `megdecode.generate.train`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megdecode.config import FlatConfig
from megdecode.generate.conditioning import ConditionEncoder, make_spec
from megdecode.generate.pipeline import GenerateConfig, LatentGenerator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchConfig(FlatConfig):
    """A small UNet2DConditionModel (+ optional tiny AutoencoderKL)."""

    size: int = 32  # output side in pixels
    channels: tuple[int, ...] = (32, 64, 64)  # UNet block widths; len-1 downsamplings
    layers_per_block: int = 1
    cross_attention_dim: int = 64  # token width D
    head_dim: int = 16  # attention heads = width / head_dim
    n_tokens: int = 4  # tokens per projected condition
    norm_groups: int = 8
    patch: int = 1  # pixel space only: space-to-depth factor (UNet sees 3 p^2 x size/p x size/p)
    vae: bool = False  # False: the UNet works on RGB pixels in [-1, 1]
    vae_channels: tuple[int, ...] = (16, 32)  # tiny VAE: len-1 downsamplings, 4 latent channels
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule: suits small pixel-space models
    prediction_type: str = "epsilon"
    coords: bool = False  # two coordinate channels into the UNet (where to draw)
    global_cond: bool = (
        False  # the condition also as a global vector: scale/shift in every ResNet block
    )


def new_generator(
    conditions: dict[str, int],
    arch: ArchConfig | None = None,
    seed: int = 0,
    init_latent: str | None = None,
    direct: Collection[str] = (),
    defaults: GenerateConfig | None = None,
) -> LatentGenerator:
    """A random-init generator for `conditions` {name: F}; `direct` names are token grids."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    a = arch or ArchConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = None
        if a.size % a.patch:
            raise ValueError(f"size {a.size} is not a multiple of patch {a.patch}")
        sample_size, in_ch = a.size // a.patch, 3 * a.patch**2
        if a.vae:
            n_vae = len(a.vae_channels)
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=a.vae_channels,
                down_block_types=("DownEncoderBlock2D",) * n_vae,
                up_block_types=("UpDecoderBlock2D",) * n_vae,
                layers_per_block=1,
                norm_num_groups=a.norm_groups,
                sample_size=a.size,
            )
            sample_size, in_ch = a.size // 2 ** (n_vae - 1), 4
        n = len(a.channels)
        # cross-attention in every block but the first (full-resolution) one, where it is
        # the most expensive and matters least; no self-attention (only_cross_attention):
        # at these sizes convolutions see the whole image and self-attention costs most
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
        up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
        film: dict[str, Any] = {}
        if a.global_cond:
            film = {
                "class_embed_type": "projection",
                "projection_class_embeddings_input_dim": a.cross_attention_dim,
                "resnet_time_scale_shift": "scale_shift",
            }
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_ch + 2 * a.coords,
            out_channels=in_ch,
            **film,
            down_block_types=down,
            up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn",
            block_out_channels=a.channels,
            layers_per_block=a.layers_per_block,
            cross_attention_dim=a.cross_attention_dim,
            attention_head_dim=a.head_dim,
            norm_num_groups=a.norm_groups,
            only_cross_attention=True,
        )
        specs = [
            make_spec(name, dim, a.cross_attention_dim, a.n_tokens, name in direct)
            for name, dim in conditions.items()
            if name != init_latent
        ]
        encoder = ConditionEncoder(specs, a.cross_attention_dim)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=a.beta_schedule,
        clip_sample=not a.vae,
        set_alpha_to_one=True,
        prediction_type=a.prediction_type,
    )
    if init_latent is not None:
        expected = in_ch * sample_size * sample_size
        if conditions.get(init_latent) != expected:
            raise ValueError(
                f"init latent {init_latent!r} must have F={expected} (the UNet sample), "
                f"got {conditions.get(init_latent)}"
            )
    meta: dict[str, Any] = {
        "conditions": {name: {"dim": int(dim)} for name, dim in conditions.items()},
        "init_latent": init_latent,
        "size": a.size,
        "patch": 1 if a.vae else a.patch,
        "arch": a.to_flat_dict(),
        "defaults": (defaults or GenerateConfig()).to_flat_dict(),
    }
    for spec in specs:
        meta["conditions"][spec.name] = spec.to_dict()
    return LatentGenerator(unet, scheduler, encoder, meta, vae=vae)


def build_tiny_generator(
    out_dir: str | Path,
    conditions: dict[str, int],
    size: int = 32,
    seed: int = 0,
    vae: bool = False,
    init_latent: str | None = None,
    patch: int = 1,
) -> Path:
    """A random-init generator folder for `conditions` {name: F}, loadable by `from_dir`."""
    arch = ArchConfig(
        size=size,
        channels=(16, 32),
        cross_attention_dim=32,
        head_dim=16,
        n_tokens=2,
        norm_groups=8,
        vae=vae,
        vae_channels=(8, 16),
        patch=patch,
    )
    gen = new_generator(
        conditions,
        arch,
        seed=seed,
        init_latent=init_latent,
        defaults=GenerateConfig(steps=4, guidance_scale=2.0),
    )
    gen.meta["trained"] = False
    path = gen.save(out_dir)
    logger.info("random-init generator for %s at %s (not trained)", sorted(conditions), path)
    return path
