"""Throughput of the twin generator on CPU, and where the time goes.

Prints, from one run: images/s of `LatentGenerator.generate` at the generator's size
(16 px for the twin generator) and at 64x64 (the same convolutional UNet on a 4x larger
sample, as a 64 px twin generator would run) for 1 DDIM step and for N steps (default
50, with classifier-free guidance as configured),
and the split of the N-step time between the UNet, the VAE / pixel decoding, the
conditioning (latents -> tokens) and the rest (scheduler, noise, PIL conversion).
Timings come from forward hooks on the modules during the same calls.

    python benchmarks/generate_throughput.py --generator runs/demo/generator [--batch 16 --steps 50]
    python benchmarks/generate_throughput.py            # a random-init generator of the twin's shape

A random-init generator has the trained one's architecture, so its speed is the same.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from megdecode.generate.pipeline import LatentGenerator
from megdecode.logs import setup_logging


@contextmanager
def timed_modules(modules: dict[str, torch.nn.Module | None]) -> Iterator[dict[str, float]]:
    """Seconds spent inside each module's forward while the context is open."""
    totals: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    handles = []
    for name, module in modules.items():
        if module is None:
            continue

        def pre(_m, _a, name=name):
            starts[name] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            totals[name] += time.perf_counter() - starts[name]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield totals
    finally:
        for h in handles:
            h.remove()


class _Decoder(torch.nn.Module):
    """Wraps `_decode` so a hook can time it (VAE decode or pixel unfolding)."""

    def __init__(self, gen: LatentGenerator) -> None:
        super().__init__()
        self.fn = gen._decode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def run(
    gen: LatentGenerator, batch: int, steps: int, repeats: int, size: int | None = None
) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    latents = {
        k: rng.standard_normal((batch, f)).astype(np.float32) for k, f in gen.conditions.items()
    }
    decoder = _Decoder(gen)
    gen._decode = decoder
    rows = []
    hw = {"height": size, "width": size} if size else {}
    gen.generate(latents, steps=1, batch_size=batch, **hw)  # warm-up
    for n_steps in (1, steps):
        best: dict[str, float] | None = None
        for _ in range(repeats):
            with timed_modules(
                {"unet": gen.unet, "decode": decoder, "conditioning": gen.encoder}
            ) as t:
                start = time.perf_counter()
                gen.generate(latents, steps=n_steps, batch_size=batch, **hw)
                wall = time.perf_counter() - start
            row = {
                "size": size or gen.size,
                "steps": n_steps,
                "wall_s": wall,
                "images_per_s": batch / wall,
                **t,
            }
            if best is None or wall < best["wall_s"]:
                best = row
        assert best is not None
        rows.append(best)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--generator", type=Path, help="generator folder; default a random-init twin-shaped one"
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    setup_logging("WARNING")
    torch.set_num_threads(args.threads)
    if args.generator is None:
        from megdecode.generate.pipeline import GenerateConfig
        from megdecode.generate.tiny import ArchConfig, new_generator
        from megdecode.generate.train import GenTrainConfig

        c = GenTrainConfig()
        arch = ArchConfig(
            size=c.size,
            patch=c.patch,
            channels=c.channels,
            n_tokens=c.n_tokens,
            cross_attention_dim=64,
            prediction_type=c.prediction_type,
            coords=c.coords,
            global_cond=c.global_cond,
        )
        defaults = GenerateConfig(steps=c.sample_steps, guidance_scale=c.guidance_scale)
        gen_dir = new_generator({"twin-lowlevel": 11}, arch, defaults=defaults).save(
            Path(tempfile.mkdtemp()) / "g"
        )
    else:
        gen_dir = args.generator
    gen = LatentGenerator.from_dir(gen_dir)
    cfg = gen.default_config
    print(
        f"generator {gen_dir}: {gen.size} px, conditions {gen.conditions}, guidance {cfg.guidance_scale} "
        f"({'2 UNet batches' if cfg.guidance_scale != 1.0 else '1 UNet batch'} per step), "
        f"batch {args.batch}, {torch.get_num_threads()} thread(s)"
    )
    rows = run(gen, args.batch, args.steps, args.repeats) + run(
        gen, args.batch, args.steps, args.repeats, size=64
    )
    print(
        f"{'size':>4} {'steps':>5} {'images/s':>9} {'wall s':>8} {'unet':>7} {'decode':>7} {'cond':>7} {'other':>7}"
    )
    for r in rows:
        other = r["wall_s"] - r.get("unet", 0) - r.get("decode", 0) - r.get("conditioning", 0)
        shares = [r.get(k, 0.0) / r["wall_s"] for k in ("unet", "decode", "conditioning")] + [
            other / r["wall_s"]
        ]
        print(
            f"{r['size']:>4} {r['steps']:>5} {r['images_per_s']:>9.2f} {r['wall_s']:>8.2f} "
            + " ".join(f"{s:>6.1%}" for s in shares)
        )


if __name__ == "__main__":
    main()
