"""CLIP-Vision latents from open_clip, from weights on local disk only.

Two outputs, as in the paper:
- ``"cls"``: the projected image embedding (what ``model.encode_image`` returns,
  unnormalised), F = embed_dim (768 for ViT-L/14). Retrieval target.
- ``"tokens"``: every token of the last transformer block, class token first, through
  the same final LayerNorm and projection as the class token: (1 + grid², embed_dim),
  257 x 768 for ViT-L/14 at 224 px. This is the CLIP-Vision conditioning of Versatile
  Diffusion in brain-diffuser (HF ``last_hidden_state`` -> ``post_layernorm`` ->
  ``visual_projection``); row 0 equals the ``"cls"`` vector. Flattened to F; the grid
  shape is in ``token_shape``.

Nothing is ever downloaded: `pretrained` must be a checkpoint file on disk. OpenAI's
ViT-L/14 weights need the ``ViT-L-14-quickgelu`` architecture name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from megdecode.latents.weights import RANDOM_INIT_SEED, seeded_init

logger = logging.getLogger(__name__)


class ClipVisionEncoder:
    """Images -> CLIP-Vision latents (N, F) float32, on `device`."""

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | Path | None = None,
        output: str = "cls",
        device: str = "cpu",
        allow_random_init: bool = False,
    ) -> None:
        import open_clip
        import torch

        if output not in ("cls", "tokens"):
            raise ValueError(f"output must be 'cls' or 'tokens', got {output!r}")
        if pretrained is None:
            if not allow_random_init:
                raise ValueError(
                    f"ClipVisionEncoder({model_name!r}) needs weights: pass pretrained=<path to a "
                    "local open_clip checkpoint>; nothing is downloaded. allow_random_init=True "
                    "exists for tests and twin demos only."
                )
            logger.warning(
                "CLIP-Vision %s has RANDOM weights (seed %d): its latents are not CLIP "
                "features; use it for tests and demos only",
                model_name,
                RANDOM_INIT_SEED,
            )
            with seeded_init():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=None, pretrained_text=False
                )
            self.fingerprint = f"{model_name}|random-init-seed-{RANDOM_INIT_SEED}"
        else:
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"no weights at {path}: ClipVisionEncoder loads a local open_clip checkpoint "
                    "file (state_dict, .pt/.bin/.safetensors); nothing is downloaded"
                )
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(path), pretrained_text=False
            )
            stat = path.stat()
            self.fingerprint = f"{model_name}|{path.resolve()}|{stat.st_size}"
            logger.info("CLIP-Vision %s: weights from %s", model_name, path)

        self.visual = model.visual.to(device).eval()  # the text tower is not needed
        del model
        self.preprocess = preprocess
        self.device, self.output = device, output
        self.name = "clip-vision" if output == "cls" else "clip-vision-tokens"
        if output == "tokens":
            self._check_token_support()
        size = getattr(self.visual, "image_size", (224, 224))
        probe = self._forward(torch.zeros(1, 3, *_pair(size), device=device))
        self.token_shape: tuple[int, ...] | None = (
            tuple(probe.shape[1:]) if output == "tokens" else None
        )
        self.dim = int(np.prod(probe.shape[1:]))

    def _check_token_support(self) -> None:
        """The token grid is defined for plain open_clip ViTs with class-token pooling."""
        visual = self.visual
        plain_vit = (
            hasattr(visual, "forward_intermediates")
            and hasattr(visual, "ln_post")
            and getattr(visual, "attn_pool", None) is None
            and getattr(visual, "pool_type", "tok") == "tok"
            and not getattr(visual, "final_ln_after_pool", False)
        )
        if not plain_vit:
            raise ValueError(
                f"output='tokens' needs an open_clip VisionTransformer with class-"
                f"token pooling; got {type(visual).__name__}"
            )

    def _forward(self, pixels):
        """(B, 3, H, W) normalised pixels -> (B, F) or (B, tokens, embed_dim) tensor."""
        import torch

        with torch.inference_mode():
            if self.output == "cls":
                return self.visual(pixels)
            out = self.visual.forward_intermediates(
                pixels,
                indices=1,
                normalize_intermediates=True,
                output_fmt="NLC",
                output_extra_tokens=True,
            )
            tokens = torch.cat(
                [out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1
            )
            proj = self.visual.proj
            return tokens @ proj if proj is not None else tokens

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (N, F) float32 (tokens flattened row-major from `token_shape`)."""
        import torch

        if not images:
            return np.empty((0, self.dim), np.float32)
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        out = self._forward(pixels.to(self.device))
        return out.float().cpu().numpy().reshape(len(images), -1)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])
