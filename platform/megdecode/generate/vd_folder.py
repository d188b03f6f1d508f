"""A Versatile Diffusion folder on disk -> the components the VD generator samples with.

The layout is what ``shi-labs/versatile-diffusion`` holds once saved with
``save_pretrained``: ``model_index.json`` and one sub-folder per component. Generation
from predicted embeddings needs only ``image_unet/`` (UNet2DConditionModel),
``text_unet/`` (UNetFlatConditionModel: only its transformer blocks are used),
``vae/`` (AutoencoderKL) and ``scheduler/`` (read as a DDIM schedule). VD's image UNet
has one transformer per attention site; dual guidance pairs it with the text UNet's
transformer at the same site (diffusers' ``DualTransformer2DModel``), so the text stream
attends through text-trained weights and the vision stream through image-trained ones.

Classifier-free guidance needs the embeddings of "no condition": VD uses the empty
prompt and a grey image, through its own CLIP encoders and normalisation. They come from
``null_embeddings.safetensors`` ("text" (Lt, D), "vision" (Lv, D), already normalised)
when the folder has it, else from the folder's ``tokenizer/``, ``text_encoder/``,
``image_encoder/`` and ``image_feature_extractor/`` once at load (the real download has
them). Their shapes also fix the token counts a predicted embedding must have.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
NULL_FILE = "null_embeddings.safetensors"
REQUIRED = (
    "image_unet/config.json",
    "vae/config.json",
    "scheduler/scheduler_config.json",
)
ENCODERS = ("tokenizer", "text_encoder", "image_encoder", "image_feature_extractor")


def is_vd_folder(path: str | Path) -> bool:
    """Whether `path` holds a VD layout: a model_index.json naming image_unet and text_unet."""
    index = Path(path) / MODEL_INDEX
    if not index.is_file():
        return False
    try:
        names = json.loads(index.read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(names, dict) and "image_unet" in names and "vae" in names


@dataclass
class VDComponents:
    """What sampling needs: the dual-attention UNet, VAE, DDIM scheduler, null embeddings."""

    unet: Any  # UNet2DConditionModel whose transformers are DualTransformer2DModel
    vae: Any
    scheduler: Any
    null_text: torch.Tensor  # (Lt, D), VD-normalised
    null_vision: torch.Tensor  # (Lv, D), VD-normalised


def read_vd_folder(path: str | Path) -> VDComponents:
    """Load a VD folder on CPU in float32; FileNotFoundError("no weights at ...") if incomplete."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    path = Path(path)
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no weights at {path}: a Versatile Diffusion folder needs {', '.join(REQUIRED)}; "
            f"missing {', '.join(missing)}"
        )
    unet = UNet2DConditionModel.from_pretrained(path / "image_unet", low_cpu_mem_usage=False)
    if not unet.config.get("dual_cross_attention", False):
        if not (path / "text_unet" / "config.json").is_file():
            raise FileNotFoundError(
                f"no weights at {path / 'text_unet'}: dual guidance needs the text UNet's "
                "transformers (the image UNet is not saved in dual-attention form)"
            )
        from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (
            UNetFlatConditionModel,
        )

        text_unet = UNetFlatConditionModel.from_pretrained(
            path / "text_unet", low_cpu_mem_usage=False
        )
        pair_transformers(unet, text_unet)
        del text_unet  # its resnets are for text generation; only the transformers are kept
    tolerate_attention_masks(unet)
    vae = AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False)
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(path / "scheduler"))
    null_text, null_vision = read_null_embeddings(path)
    width = int(unet.config.cross_attention_dim)
    for name, null in (("text", null_text), ("vision", null_vision)):
        if null.ndim != 2 or null.shape[1] != width:
            raise ValueError(
                f"{path}: null {name} embedding has shape {tuple(null.shape)}, expected "
                f"(tokens, {width}) (the image UNet's cross_attention_dim)"
            )
    return VDComponents(unet, vae, scheduler, null_text, null_vision)


def pair_transformers(image_unet: Any, text_unet: Any) -> None:
    """Replace each transformer of `image_unet` by a DualTransformer2DModel holding it
    (index 0) and the text UNet's transformer at the same site (index 1), in place."""
    from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    sites = [
        name
        for name, module in image_unet.named_modules()
        if isinstance(module, Transformer2DModel)
    ]
    if not sites:
        raise ValueError("the image UNet has no transformer blocks to pair")
    for name in sites:
        parent, index = name.rsplit(".", 1)
        image_block = image_unet.get_submodule(parent)[int(index)]
        try:
            text_block = text_unet.get_submodule(parent)[int(index)]
        except (AttributeError, IndexError):
            raise ValueError(
                f"the text UNet has no transformer at {name}: its blocks must mirror the image UNet's"
            ) from None
        c = image_block.config
        dual = DualTransformer2DModel(
            num_attention_heads=c.num_attention_heads,
            attention_head_dim=c.attention_head_dim,
            in_channels=c.in_channels,
            num_layers=c.num_layers,
            norm_num_groups=c.norm_num_groups,
            cross_attention_dim=c.cross_attention_dim,
            attention_bias=c.attention_bias,
            sample_size=c.sample_size,
        )
        dual.transformers[0] = image_block
        dual.transformers[1] = text_block
        image_unet.get_submodule(parent)[int(index)] = dual
    image_unet.register_to_config(dual_cross_attention=True)


def tolerate_attention_masks(unet: Any) -> None:
    """Make every DualTransformer2DModel of `unet` accept the ``encoder_attention_mask``
    keyword that diffusers 0.42's UNet blocks pass to all transformers (the deprecated dual
    transformer's forward does not take it, so VD's own dual-guided pipeline fails there).
    Masks are None on this path; the class swap keeps the weights and their names."""
    from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel

    for module in unet.modules():
        if isinstance(module, DualTransformer2DModel):
            module.__class__ = _mask_tolerant_dual()


@functools.cache
def _mask_tolerant_dual() -> type:
    """The subclass, built on first use so that importing this module loads no diffusers."""
    from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel

    class MaskTolerantDual(DualTransformer2DModel):
        def forward(
            self,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            timestep: Any = None,
            attention_mask: Any = None,
            cross_attention_kwargs: Any = None,
            return_dict: bool = True,
            encoder_attention_mask: Any = None,
        ) -> Any:
            if encoder_attention_mask is not None:
                raise ValueError("dual guidance takes no encoder_attention_mask")
            return super().forward(
                hidden_states,
                encoder_hidden_states,
                timestep=timestep,
                attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
                return_dict=return_dict,
            )

    return MaskTolerantDual


def read_null_embeddings(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(null text (Lt, D), null vision (Lv, D)) from the stored file or the folder's encoders."""
    from safetensors.torch import load_file

    if (path / NULL_FILE).is_file():
        stored = load_file(str(path / NULL_FILE))
        if set(stored) != {"text", "vision"}:
            raise ValueError(f"{path / NULL_FILE}: expected tensors 'text' and 'vision'")
        return stored["text"].float(), stored["vision"].float()
    absent = [name for name in ENCODERS if not (path / name).is_dir()]
    if absent:
        raise FileNotFoundError(
            f"no weights at {path}: classifier-free guidance needs {NULL_FILE} or the CLIP "
            f"encoders to compute it ({', '.join(ENCODERS)}); missing {', '.join(absent)}"
        )
    logger.info("computing VD's null embeddings with the CLIP encoders in %s", path)
    return null_embeddings_from_encoders(path)


def null_embeddings_from_encoders(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """VD's unconditional embeddings: the empty prompt and a grey (0.5) image, through the
    folder's CLIP encoders, normalised as VD normalises them (see `normalise_*`)."""
    import numpy as np
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder").eval()
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(path / "image_encoder").eval()
    processor = CLIPImageProcessor.from_pretrained(path / "image_feature_extractor")
    with torch.no_grad():
        ids = tokenizer(
            [""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        out = text_encoder(ids)
        text = text_encoder.text_projection(out.last_hidden_state)
        text = text / out.text_embeds.norm(dim=-1, keepdim=True).unsqueeze(1)
        grey = np.zeros((512, 512, 3)) + 0.5  # VD's null image, through the same processor call
        pixels = processor(images=[grey], return_tensors="pt").pixel_values
        hidden = image_encoder(pixels).last_hidden_state
        vision = image_encoder.visual_projection(image_encoder.vision_model.post_layernorm(hidden))
        vision = normalise_vision(vision)
    return text[0].float(), vision[0].float()


def normalise_vision(tokens: torch.Tensor) -> torch.Tensor:
    """(N, Lv, D) projected CLIP-Vision tokens / the norm of their class token (VD's scaling)."""
    return tokens / tokens[:, :1].norm(dim=-1, keepdim=True).clamp_min(1e-8)


def normalise_text(tokens: torch.Tensor) -> torch.Tensor:
    """(N, Lt, D) projected CLIP-Text tokens / the mean norm of their rows.

    VD divides by the norm of the end-of-text row (the pooled embedding); a predicted grid
    does not say which row that is (it depends on the prompt's length), so each grid is
    brought to unit mean row norm instead, the same order of scale.
    """
    return tokens / tokens.norm(dim=-1).mean(dim=1).clamp_min(1e-8)[:, None, None]
