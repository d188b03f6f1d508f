"""A generator folder on disk: what `LatentGenerator.from_dir` reads and `save` writes.

``generator.json`` (format, conditions, init latent, size, default GenerateConfig),
``unet/`` and ``scheduler/`` (diffusers `save_pretrained`), ``conditioning.safetensors``
and optionally ``vae/``. A folder that lacks a file is refused as "no weights at ...",
which the serving generator reports at start.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from megdecode.generate.conditioning import ConditionEncoder, StreamSpec

logger = logging.getLogger(__name__)

FORMAT = "megdecode-generator/1"
REQUIRED = (
    "generator.json",
    "conditioning.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
)


def read_folder(path: str | Path) -> tuple[Any, Any, ConditionEncoder, dict[str, Any], Any | None]:
    """(unet, scheduler, condition encoder, generator.json, vae or None) of a generator folder;
    FileNotFoundError("no weights at ...") if it is incomplete."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    path = Path(path)
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"no weights at {path}: missing {', '.join(missing)}")
    meta = json.loads((path / "generator.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path / 'generator.json'}: format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    unet = UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False)
    scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
    vae = None
    if meta.get("vae"):
        if not (path / "vae" / "config.json").is_file():
            raise FileNotFoundError(f"no weights at {path / 'vae'}: generator.json names a VAE")
        vae = AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False)
    encoder = build_encoder(meta, int(unet.config.cross_attention_dim))
    state = load_file(str(path / "conditioning.safetensors"))
    encoder.load_state_dict(state, strict=True)
    return unet, scheduler, encoder, meta, vae


def write_folder(
    path: str | Path,
    unet: Any,
    scheduler: Any,
    encoder: ConditionEncoder,
    meta: dict[str, Any],
    vae: Any | None,
) -> Path:
    """Write the folder that `read_folder` reads; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(path / "unet")
    scheduler.save_pretrained(path / "scheduler")
    if vae is not None:
        vae.save_pretrained(path / "vae")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(path / "conditioning.safetensors"))
    meta = dict(meta, format=FORMAT, vae=vae is not None)
    (path / "generator.json").write_text(json.dumps(meta, indent=2))
    return path


def build_encoder(meta: dict[str, Any], width: int) -> ConditionEncoder:
    """The conditioning module described by generator.json (init latent excluded)."""
    specs = [
        StreamSpec.from_dict(name, c)
        for name, c in meta["conditions"].items()
        if name != meta.get("init_latent")
    ]
    return ConditionEncoder(specs, width)
