"""One MEG window -> one image: the path `/v1/reconstruct` and `megdecode reconstruct` share.

    window (C, T) -> served model (folded layout, MSE head) -> latents z-scored with the
    bundle's stored prediction statistics and mapped to the training scale -> split per
    named latent -> generator (steps, guidance, seed) -> PNG bytes

The BrainDecoder deployment runs `window_latents`, the Generator deployment `render_png`,
and `reconstruct` runs both in one process on the same loaders (`load_served_model`,
`load_generator`), so a window gives the same PNG bytes online and offline for
the same seed, steps and guidance (on the same device and torch thread count: float
reductions differ between them).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megdecode.generate.postprocess import bundle_latents
from megdecode.serve.channels import channels_value
from megdecode.serve.model import LoadedModel
from megdecode.serve.validate import check_window, parse_json_body, subject_index, window_from_json

logger = logging.getLogger(__name__)


def window_latents(
    state: LoadedModel,
    window: np.ndarray,
    subject: str | int,
    channels: tuple[str, ...] | None = None,
) -> dict[str, np.ndarray]:
    """(C, T) float32 window of `subject` -> {latent name: (1, F_name)} on the training scale.

    `channels` names the window's rows (reordered to the model's by sensor), None when
    they are already in the model's order. Raises `ApiError` (422) for a window or subject
    the model cannot take.
    """
    window = state.channels.align(window, channels)
    check_window(window, *state.shape)
    index = subject_index(subject, state.bundle.subjects)
    _, mse = state.forward(window[None], np.array([index], np.int64))
    return state.bundle.split_latent(bundle_latents(state.bundle, mse))


def render_png(
    pipeline: Any, latents: dict[str, np.ndarray], steps: int, guidance: float, seed: int
) -> list[bytes]:
    """A generator's (`megdecode.generate.loader`) images of `latents` {name: (N, F)} as PNG bytes; its stored
    defaults (strength, mix, eta) for everything but steps, guidance and seed."""
    images = pipeline.generate(latents, steps=steps, guidance_scale=guidance, seed=seed)
    pngs = []
    for image in images:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs


def read_window(path: str | Path) -> tuple[str | int, np.ndarray, tuple[str, ...] | None]:
    """A /v1/decode JSON body on disk -> (subject, float32 (C, T), channel names or None),
    parsed as the ingress does."""
    doc = parse_json_body(Path(path).read_bytes())
    subject, data = window_from_json(doc)
    return subject, data, channels_value(doc.get("channels"))


@dataclass(frozen=True)
class Reconstruction:
    """What `reconstruct` made: the PNG and the model it came from."""

    png: bytes
    model: dict[str, Any]  # the card's name, version, prediction_stats


def reconstruct(
    source: str,
    generator_dir: str | Path,
    window: str | Path,
    *,
    tracking_uri: str = "",
    steps: int,
    guidance: float,
    seed: int,
    device: str = "cpu",
    precision: str = "float32",
) -> Reconstruction:
    """The offline `/v1/reconstruct`: bundle folder or ``models:/`` URI, generator folder and a
    window JSON file -> the PNG the app returns for them."""
    from megdecode.generate.loader import load_generator
    from megdecode.serve.model import load_served_model

    subject, data, channels = read_window(window)
    state = load_served_model(source, tracking_uri, precision=precision)
    latents = window_latents(state, data, subject, channels)
    pipeline = load_generator(generator_dir, device=device)
    missing = sorted(set(pipeline.conditions) - set(latents))
    if missing:
        raise ValueError(
            f"the generator is conditioned on {sorted(pipeline.conditions)}; "
            f"the model decodes {sorted(latents)}, not {missing}"
        )
    png = render_png(pipeline, latents, steps, guidance, seed)[0]
    card = state.card
    return Reconstruction(
        png,
        {
            "name": card["name"],
            "version": card["version"],
            "prediction_stats": card.get("prediction_stats"),
        },
    )
