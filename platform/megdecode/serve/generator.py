"""The Generator deployment: decoded latents -> images, on a fraction of a GPU.

Replicas ask Ray for ``num_gpus`` < 1 so several share one device, and autoscale between
min and max replicas. Ray's GPU share is only a scheduling label: nothing stops one
replica from taking all the device memory and crashing its neighbours, so each replica
caps its own allocator to its share (`torch.cuda.set_per_process_memory_fraction`) and
turns an out-of-memory error into a 503 that says so. Without a GPU in the cluster the
app builder drops the GPU request (``cpu_fallback``) and the replica runs on CPU.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import numpy as np
import torch
from ray import serve

from megdecode.serve.config import GeneratorConfig
from megdecode.serve.decoder import error_dict
from megdecode.serve.errors import ApiError
from megdecode.serve.reconstruct import render_png  # what `megdecode reconstruct` runs too

logger = logging.getLogger(__name__)


def gpu_share_device(cfg: GeneratorConfig) -> str:
    """ "cuda" with this process' memory capped to its share when Ray gave it a GPU, else "cpu"."""
    if cfg.num_gpus <= 0 or not torch.cuda.is_available():
        return "cpu"
    fraction = cfg.gpu_memory_fraction or cfg.num_gpus
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    logger.info("generator replica capped to %.0f%% of GPU memory", 100 * fraction)
    return "cuda"


@serve.deployment(name="Generator")
class Generator:
    """One replica of the latent-conditioned diffusion pipeline (VD or the twin generator)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = GeneratorConfig.from_flat_dict(config)
        self.device = gpu_share_device(self.cfg)
        self.pipeline: Any = None
        self.error = ""
        self._lock = threading.Lock()  # one sampling loop at a time per replica (memory)
        try:
            from megdecode.generate.loader import load_generator

            # a Versatile Diffusion folder or the twin generator's, from what it holds
            self.pipeline = load_generator(self.cfg.weights, device=self.device)
        except (
            FileNotFoundError,
            ValueError,
            ImportError,
        ) as exc:  # reported by /readyz and as 503s
            self.error = str(exc)
            logger.error("generator unavailable: %s", exc)

    def info(self) -> dict[str, Any]:
        conditions = dict(self.pipeline.conditions) if self.pipeline is not None else {}
        return {
            "ready": self.pipeline is not None,
            "error": self.error,
            "device": self.device,
            "conditions": conditions,
        }

    async def generate(
        self, latents: dict[str, np.ndarray], steps: int, guidance: float, seed: int
    ) -> dict[str, Any]:
        """latents {name: (N, F)} (what the model decodes) -> {"png": [bytes]} or an error dict."""
        try:
            return await asyncio.to_thread(self._generate, latents, steps, guidance, seed)
        except ApiError as exc:
            return error_dict(exc)

    def _generate(
        self, latents: dict[str, np.ndarray], steps: int, guidance: float, seed: int
    ) -> dict[str, Any]:
        if self.pipeline is None:
            raise ApiError(
                503, "generator_unavailable", self.error or "the generator is not loaded"
            )
        missing = sorted(set(self.pipeline.conditions) - set(latents))
        if missing:
            raise ApiError(
                422,
                "latent_mismatch",
                f"the generator is conditioned on {sorted(self.pipeline.conditions)}; "
                f"the model decodes {sorted(latents)}, not {missing}",
            )
        with self._lock:
            try:
                pngs = render_png(self.pipeline, latents, steps, guidance, seed)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                raise ApiError(
                    503,
                    "insufficient_gpu_memory",
                    "this request does not fit in the replica's "
                    "share of GPU memory; retry later or with fewer steps",
                    {"Retry-After": "5"},
                ) from None
        return {"png": pngs, "device": self.device}
