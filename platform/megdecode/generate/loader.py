"""One generator folder -> the pipeline its files call for: Versatile Diffusion or the twin's.

``--generator DIR`` (serving, ``megdecode reconstruct``) and the Generator deployment go
through `load_generator`, so a folder is recognised the same way everywhere:
- ``model_index.json`` naming ``image_unet`` and ``vae`` (the layout of a saved
  ``shi-labs/versatile-diffusion``) -> `VersatileGenerator`, the paper's generator;
- ``generator.json`` -> the twin's `LatentGenerator`, the offline default.
Both answer ``conditions`` ({latent name: F}) and ``generate(latents, steps=,
guidance_scale=, seed=)``, which is all the serving side uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from megdecode.generate.vd_folder import MODEL_INDEX, is_vd_folder

logger = logging.getLogger(__name__)

TWIN_FILE = "generator.json"
EXPECTED = (
    f"expected a Versatile Diffusion folder ({MODEL_INDEX} with image_unet/, text_unet/, vae/, "
    f"scheduler/) or a twin generator folder ({TWIN_FILE}, unet/, scheduler/)"
)


def generator_kind(path: str | Path) -> str:
    """ "versatile" or "twin" from what the folder holds; FileNotFoundError when neither."""
    path = Path(path)
    if not path.is_dir() or not any(path.iterdir()):
        what = "no such folder" if not path.exists() else "empty folder"
        raise FileNotFoundError(f"no weights at {path} ({what}): {EXPECTED}")
    if is_vd_folder(path):
        return "versatile"
    if (path / TWIN_FILE).is_file():
        return "twin"
    raise FileNotFoundError(f"no weights at {path}: {EXPECTED}")


def load_generator(path: str | Path, device: str = "cpu", dtype: str = "float32") -> Any:
    """The generator in `path` on `device` (dtype applies to Versatile Diffusion only)."""
    kind = generator_kind(path)
    logger.info("generator at %s: %s", path, kind)
    if kind == "versatile":
        from megdecode.generate.versatile import VersatileGenerator

        return VersatileGenerator.from_dir(path, device=device, dtype=dtype)
    from megdecode.generate.pipeline import LatentGenerator

    return LatentGenerator.from_dir(path, device=device)
