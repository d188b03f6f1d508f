"""CLIP-Text latents from open_clip's text tower, for the text attached to each image.

On THINGS-MEG an image has no caption, only its category ("ice_cream"), so the text of
an image is its category name with underscores as spaces, formatted by `template`
("{}" by default). Two outputs:
- ``"mean"``: the mean over all ``context_length`` positions (77 for CLIP) of the last
  transformer block's tokens, after ``ln_final`` and ``text_projection``: F = embed_dim
  (768 for ViT-L/14). The paper's low-dimensional CLIP-Text latent. Padding positions
  are included on purpose: in a causal transformer they have attended to the whole text,
  and the mean is then exactly the mean of the ``"tokens"`` grid below.
- ``"tokens"``: that whole grid, (context_length, embed_dim) = 77 x 768 for ViT-L/14,
  the CLIP-Text conditioning of Versatile Diffusion (brain-diffuser takes HF
  ``last_hidden_state`` -> ``text_projection``). The row at the end-of-text token equals
  ``model.encode_text``. Flattened to F; the grid shape is in ``token_shape``. Stored
  unnormalised: a generator that wants Versatile Diffusion's scaling divides by the norm
  of the end-of-text row itself.

Nothing is ever downloaded: `pretrained` must be a local open_clip checkpoint file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from megdecode.latents.weights import (
    require_weights,
    seeded_init,
    weights_identity,
)

logger = logging.getLogger(__name__)


def category_text(category: str, template: str = "{}") -> str:
    """THINGS concept name -> prompt: "ice_cream" -> "ice cream" (inside `template`)."""
    return template.format(category.replace("_", " ").strip())


class ClipTextEncoder:
    """Texts -> CLIP-Text latents (N, F) float32, on `device`. A `TextEncoder`."""

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | Path | None = None,
        output: str = "mean",
        device: str = "cpu",
        template: str = "{}",
        allow_random_init: bool = False,
    ) -> None:
        import open_clip

        if output not in ("mean", "tokens"):
            raise ValueError(f"output must be 'mean' or 'tokens', got {output!r}")
        who = f"ClipTextEncoder({model_name!r})"
        path = require_weights(
            pretrained, who, "a local open_clip checkpoint file", allow_random_init
        )
        with seeded_init():
            model = open_clip.create_model(
                model_name, pretrained=str(path) if path else None, pretrained_image=False
            )
        if not hasattr(model, "token_embedding") or not hasattr(model, "ln_final"):
            raise ValueError(
                f"{who}: the token grid is defined for open_clip's built-in text transformer; "
                f"{type(model).__name__} has another text tower"
            )
        if path is not None:
            logger.info("CLIP-Text %s: weights from %s", model_name, path)
        self.fingerprint = f"{model_name}|{weights_identity(path)}|{output}|{template}"
        self.tokenizer = open_clip.get_tokenizer(model_name)
        # keep the text tower only; the image tower is the big half of CLIP
        model.visual = None
        self.model = model.to(device).eval()
        self.device, self.output, self.template = device, output, template
        self.name = "clip-text" if output == "mean" else "clip-text-tokens"
        probe = self.tokens(["probe"])
        self.token_shape: tuple[int, ...] | None = (
            tuple(probe.shape[1:]) if output == "tokens" else None
        )
        self.dim = int(probe.shape[-1]) if output == "mean" else int(np.prod(probe.shape[1:]))

    def tokens(self, texts: Sequence[str]):
        """Texts -> (N, context_length, embed_dim) tensor: every last-layer token, projected.

        `encode_text` up to its pooling step, which is skipped to keep every position.
        """
        import torch

        m = self.model
        ids = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            cast = m.transformer.get_cast_dtype()
            x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
            x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
            proj = m.text_projection
            if proj is None:
                return x
            return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, F) float32: the token mean, or the token grid flattened row-major."""
        if not texts:
            return np.empty((0, self.dim), np.float32)
        grid = self.tokens(texts).float()
        out = grid.mean(dim=1) if self.output == "mean" else grid.flatten(1)
        return out.cpu().numpy()

    def prompt(self, category: str) -> str:
        """The text encoded for an image of `category` (THINGS concept name)."""
        return category_text(category, self.template)
