"""Train a small latent-conditioned generator on a dataset's own images (the twin's).

No machine here can download Versatile Diffusion, so the twin gets a generator of its
own: a small `UNet2DConditionModel` (widths 32/64, no self-attention; cross-attention to
the latent tokens at the coarse level) in **pixel space at 16 px, space-to-depth folded
by 2** (the UNet sees 12 x 8 x 8, plus two coordinate channels; `pipeline.py`), with the
condition also entering every ResNet block as a global vector (scale and shift). Trained
with the DDPM loss on a cosine schedule with v-prediction (it converges quickly to
clean, if smooth, images), the condition replaced by the null tokens at random (10%) so
classifier-free guidance works, and an exponential moving average of the weights, which
is what gets saved. Why this shape: on two CPU cores a few minutes are a few hundred to a
few thousand optimiser steps. Conditioned through cross-attention alone, (64, 128) widths
still sampled noise after 174 steps and drew the right colour for about half the images
after 1,129; with coordinates and the global vector, 300 steps drew coloured shapes of the
right colour, place and size from ground-truth latents (PixCorr 0.52), and the 32/64 widths
take about half the time per step (491 steps in 150 s on a busy machine, lower loss than
64/128 in the same time).

Images: the train and val images of the epoch store by default, so that test images
(whose categories the brain module never saw either) stay unseen by the generator too,
and reconstructions of them measure generalisation, not recall. Conditioning: the same
latent caches the brain module predicts (default "handcrafted").

Output: a folder `LatentGenerator.from_dir` loads, plus ``loss.png`` and ``loss.csv``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from megdecode.config import ConfigError, FlatConfig
from megdecode.data import bids
from megdecode.data import store as epoch_store
from megdecode.generate.images import from_pil
from megdecode.generate.pipeline import GenerateConfig, LatentGenerator
from megdecode.generate.tiny import ArchConfig, new_generator
from megdecode.latents.cache import load_latents, open_rgb
from megdecode.latents.stage import store_images
from megdecode.logs import progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenTrainConfig(FlatConfig):
    """What to train on and for how long; architecture in `ArchConfig`."""

    store: str = ""
    bids_root: str = ""
    latents_dir: str = ""
    images_root: str = ""  # "" = bids_root/stimuli (the twin)
    latents: tuple[str, ...] = ("handcrafted",)  # conditions, in stream order
    splits: tuple[str, ...] = ("train", "val")  # whose images to train on
    # a few hundred steps draw coloured shapes in place; more sharpen them (0.1-0.3 s/step on 2 cores)
    steps: int = 4000  # optimiser steps (or until max_seconds)
    max_seconds: float = 600.0  # wall-clock cap on a busy machine; 0 = none
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 50  # linear lr warm-up steps
    cond_dropout: float = 0.1  # probability a sample's condition is replaced by the null tokens
    ema_decay: float = (
        0.99  # short runs: a longer average would lag far behind a fast-improving model
    )
    seed: int = 0
    size: int = (
        16  # 16 px: on 2 CPU cores, 32 px needs several times the steps to stop looking like noise
    )
    patch: int = 2
    channels: tuple[int, ...] = (32, 64)
    n_tokens: int = 4
    coords: bool = True  # coordinate channels + a global condition vector: on the twin these
    global_cond: bool = (
        True  # learn placement and colour in a few hundred steps (see tiny.ArchConfig)
    )
    prediction_type: str = (
        "v_prediction"  # v: robust when undertrained (x0 estimate errors shrink with the noise)
    )
    guidance_scale: float = 3.0  # stored as the folder's default for sampling
    sample_steps: int = 50

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be >= 1")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if not self.latents:
            raise ConfigError("latents: name at least one latent to condition on")


@dataclass
class TrainingSet:
    """images (N, 3, S, S) in [-1, 1]; latents {name: (N, F)}; ids (N,)."""

    ids: np.ndarray
    images: torch.Tensor
    latents: dict[str, np.ndarray]


def load_training_set(cfg: GenTrainConfig) -> TrainingSet:
    """Images of `cfg.splits` in the store, with their latents, aligned by image id."""
    if not cfg.store or not cfg.bids_root or not cfg.latents_dir:
        raise ConfigError("store, bids_root and latents_dir must be set")
    meta = epoch_store.load_metadata(cfg.store)
    wanted = set(meta.loc[meta["split"].isin(cfg.splits), "image_id"].tolist())
    ids, rel = store_images(Path(cfg.store))
    keep = [i for i, image_id in enumerate(ids.tolist()) if image_id in wanted]
    if not keep:
        raise ValueError(f"the store has no images in splits {cfg.splits}")
    ids = ids[keep]
    latents = {}
    for name in cfg.latents:
        path = Path(cfg.latents_dir) / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"no latents {name!r} at {path}; run `megdecode latents` first")
        lat_ids, values = load_latents(path)
        row = pd.Index(lat_ids).get_indexer(ids)
        if (row < 0).any():
            raise KeyError(
                f"{int((row < 0).sum())} images have no {name!r} latent, e.g. {ids[row < 0][:3].tolist()}"
            )
        latents[name] = values[row]
    images_root = cfg.images_root or None
    files = [bids.image_file(cfg.bids_root, rel[i], images_root) for i in keep]
    images = from_pil([open_rgb(f) for f in files], cfg.size)
    return TrainingSet(ids=ids, images=images, latents=latents)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def train_generator(
    cfg: GenTrainConfig, out_dir: str | Path, data: TrainingSet | None = None
) -> Path:
    """Train, save the EMA weights as a generator folder plus loss.png/loss.csv; returns the folder."""
    data = data or load_training_set(cfg)
    n = len(data.ids)
    arch = ArchConfig(
        size=cfg.size,
        patch=cfg.patch,
        channels=cfg.channels,
        n_tokens=cfg.n_tokens,
        cross_attention_dim=64,
        head_dim=16,
        norm_groups=8,
        prediction_type=cfg.prediction_type,
        coords=cfg.coords,
        global_cond=cfg.global_cond,
    )
    defaults = GenerateConfig(steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale)
    gen = new_generator(
        {k: v.shape[1] for k, v in data.latents.items()}, arch, seed=cfg.seed, defaults=defaults
    )
    for name, values in data.latents.items():  # z-score inputs with the training latents' stats
        gen.encoder.stream(name).set_stats(values.mean(0), values.std(0))
    unet, encoder, sched = gen.unet.train(), gen.encoder.train(), gen.scheduler
    ema_unet, ema_encoder = copy.deepcopy(unet).eval(), copy.deepcopy(encoder).eval()
    params = list(unet.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    targets = gen.encode_images(data.images)  # (N, C, h, w)
    cond = {k: torch.from_numpy(v) for k, v in data.latents.items()}
    weights = [1.0 / len(encoder.names)] * len(encoder.names)
    g = torch.Generator().manual_seed(cfg.seed)
    alphas = sched.alphas_cumprod
    losses: list[float] = []
    start = time.perf_counter()
    logger.info(
        "training a generator on %d images (%s) for <= %d steps / %.0f s",
        n,
        ", ".join(cfg.latents),
        cfg.steps,
        cfg.max_seconds,
    )
    for _step in progress(range(cfg.steps), desc="generator steps", total=cfg.steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        x0 = targets[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, len(alphas), (len(idx),), generator=g)
        x_t = sched.add_noise(x0, noise, t)
        keep = torch.rand(len(idx), len(encoder.names), generator=g) >= cfg.cond_dropout
        context = encoder({k: v[idx] for k, v in cond.items()}, keep=keep)
        pred = gen.denoise(x_t, t, context, weights)
        target = (
            noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        )
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        warm.step()
        decay = min(
            cfg.ema_decay, (1 + len(losses)) / (10 + len(losses))
        )  # short runs: EMA warms up
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_encoder, encoder, decay)
        losses.append(loss.item())
        if cfg.max_seconds and time.perf_counter() - start > cfg.max_seconds:
            logger.info("stopping at the time cap after %d steps", len(losses))
            break
    seconds = time.perf_counter() - start
    gen.unet, gen.encoder = ema_unet, ema_encoder
    gen.meta["trained"] = {
        "config": cfg.to_flat_dict(),
        "n_images": n,
        "steps": len(losses),
        "seconds": round(seconds, 1),
        "final_loss": float(np.mean(losses[-50:])),
    }
    out = gen.save(out_dir)
    write_loss_curve(losses, out)
    logger.info(
        "generator: %d steps in %.0f s, loss %.4f -> %s",
        len(losses),
        seconds,
        np.mean(losses[-50:]),
        out,
    )
    return out


def write_loss_curve(losses: list[float], out_dir: Path) -> Path:
    """loss.csv (step, loss) and loss.png (raw and smoothed over 25 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = pd.Series(losses, name="loss")
    series.rename_axis("step").reset_index().to_csv(out_dir / "loss.csv", index=False)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(series.index, series.values, alpha=0.3, lw=0.8, label="step")
    ax.plot(
        series.index, series.rolling(25, min_periods=1).mean().values, lw=1.5, label="mean of 25"
    )
    ax.set(
        xlabel="step", ylabel="noise-prediction MSE", yscale="log", title="generator training loss"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=100)
    plt.close(fig)
    return out_dir / "loss.png"


def load_trained(path: str | Path, device: str = "cpu") -> LatentGenerator:
    """`LatentGenerator.from_dir`, refusing a random-init folder (a tiny one is no result)."""
    gen = LatentGenerator.from_dir(path, device=device)
    if not gen.meta.get("trained"):
        raise FileNotFoundError(
            f"no weights at {path}: the generator there is random-init, not trained"
        )
    return gen
