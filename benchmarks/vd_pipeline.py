"""Images/s of the Versatile Diffusion pipeline (tiny random components) and the twin's.

Prints, from one run on one device: images/s of `VersatileGenerator.generate` at batch 1
and 4, and of the twin generator (`LatentGenerator`, the tiny random folder the tests
use) at the same batches, steps and guidance, with their ratio. Random weights run at
the trained ones' speed; the tiny VD's sizes are `TinyVDConfig`'s, not VD's (a real VD
step is ~10^4 times the work: give --vd DIR with real weights on a GPU for that).

    python benchmarks/vd_pipeline.py [--steps 10 --repeats 2 --device cpu --vd DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megdecode.generate.loader import load_generator
from megdecode.generate.tiny import build_tiny_generator
from megdecode.generate.tiny_vd import build_tiny_vd


def random_latents(conditions: dict[str, int], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """{name: (n, F)} standard-normal latents for a generator's `conditions`."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, f)).astype(np.float32) for k, f in conditions.items()}


def images_per_second(gen: Any, batch: int, steps: int, repeats: int, guidance: float) -> float:
    """Best-of-`repeats` images/s of one `generate` call on `batch` samples (after a warm-up)."""
    latents = random_latents(gen.conditions, batch)
    kwargs = {"steps": steps, "guidance_scale": guidance, "batch_size": batch}
    gen.generate(latents, **{**kwargs, "steps": 1})  # warm-up: kernels, allocator
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        gen.generate(latents, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return batch / best


def compare(
    vd_dir: Path, twin_dir: Path, device: str, steps: int, repeats: int, guidance: float
) -> dict[str, dict[int, float]]:
    """{"vd": {batch: images/s}, "twin": {...}} for batches 1 and 4."""
    out: dict[str, dict[int, float]] = {}
    for name, path in (("vd", vd_dir), ("twin", twin_dir)):
        gen = load_generator(path, device=device)
        out[name] = {b: images_per_second(gen, b, steps, repeats, guidance) for b in (1, 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vd", type=Path, default=None, help="a VD folder (default: tiny random)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        vd_dir = args.vd or build_tiny_vd(Path(tmp) / "vd")
        twin_dir = build_tiny_generator(Path(tmp) / "twin", {"clip": 64, "handcrafted": 8}, size=16)
        rates = compare(vd_dir, twin_dir, args.device, args.steps, args.repeats, args.guidance)
    print(
        f"device {args.device}, torch threads {args.threads}, {args.steps} DDIM steps, "
        f"guidance {args.guidance:g}"
    )
    for batch in (1, 4):
        vd, twin = rates["vd"][batch], rates["twin"][batch]
        print(
            f"batch {batch}: VD {vd:.2f} images/s, twin {twin:.2f} images/s (VD/twin {vd / twin:.2f})"
        )


if __name__ == "__main__":
    main()
