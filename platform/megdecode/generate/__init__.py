"""Generation: latent-conditioned image generators, post-processing and image metrics.

- `pipeline`: `LatentGenerator` (UNet2DConditionModel + DDIM, optional AutoencoderKL)
  conditioned on predicted latents with classifier-free and dual guidance, loaded from a
  local folder; `GenerateConfig` its sampling settings.
- `tiny`: random-init generator folders for tests and for serving before training.
- `postprocess`: MSE-head outputs mapped to the training latents' mean/std.
- `train`: a small generator trained on the twin's images; `evaluation`: decode, generate
  on Ray, score and log to MLflow.

Importing this package loads no diffusers model; the re-exports are light.
"""

from megdecode.generate.pipeline import GenerateConfig, LatentGenerator
from megdecode.generate.postprocess import to_latent_space
from megdecode.generate.tiny import build_tiny_generator

__all__ = ["GenerateConfig", "LatentGenerator", "build_tiny_generator", "to_latent_space"]
