"""One command that runs every CUDA path briefly and prints its numbers, PASS/FAIL per step.

    python benchmarks/gpu_check.py [--vd DIR] [--only STEP ...]

Steps (each in its own process with its own timeout; all within 10 minutes):
- ``matmul``: the device's measured matmul peak, bf16 and fp32 (TFLOP/s);
- ``brain``: training samples/s of the brain module at the paper's size (`paper_config`,
  batch 128, Adam) and the share of the measured bf16 and fp32 peaks it reaches, from the
  FLOPs of one training step counted by torch's FlopCounterMode;
- ``latents``: images/s of a random-init open_clip ViT-B-32 image tower on the GPU;
- ``generators``: images/s of the VD pipeline (tiny random components, or --vd DIR) and
  the twin generator on the GPU;
- ``serve``: two Generator replicas at 0.25 GPU each (memory capped to their share), a burst
  of /v1/reconstruct that must meet HTTP 503 once replicas and queue are full, then the
  stream's per-decode latency over WS /v1/stream.
Without a CUDA device it prints that and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TIMEOUTS = {"matmul": 60, "brain": 120, "latents": 90, "generators": 150, "serve": 170}
NO_CUDA = "no CUDA device: nothing to check (the CUDA paths need a GPU)"


def matmul_flops(n: int) -> int:
    """FLOPs of one (n x n) @ (n x n) product: n^2 dot products of n multiply-adds."""
    return 2 * n**3


def training_step_flops(model: Any, batch: tuple[Any, ...], loss_fn: Any) -> int:
    """FLOPs of one forward + backward of `loss_fn(model(*batch))`, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_fn(model(*batch)).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def share(achieved_flops_per_s: float, peak_flops_per_s: float) -> float:
    """Achieved / peak, for the "x% of the measured peak" lines."""
    if peak_flops_per_s <= 0:
        raise ValueError("peak must be > 0")
    return achieved_flops_per_s / peak_flops_per_s


def _timed(fn: Any, repeats: int) -> float:
    """Best seconds of `repeats` calls of fn(), CUDA-synchronised."""
    import torch

    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def step_matmul(_: argparse.Namespace) -> dict[str, float]:
    import torch

    n, out = 8192, {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        torch.backends.cuda.matmul.allow_tf32 = False
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        seconds = _timed(lambda a=a, b=b: [a @ b for _ in range(10)], 3) / 10
        out[f"{name}_tflops"] = matmul_flops(n) / seconds / 1e12
    return out


def step_brain(args: argparse.Namespace) -> dict[str, float]:
    import numpy as np
    import torch

    from megdecode.models.brain import BrainModule, paper_config

    cfg = paper_config()
    pos = np.random.default_rng(0).uniform(0, 1, (cfg.n_channels, 2)).astype(np.float32)
    model = BrainModule(cfg, pos).cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    x = torch.randn(128, cfg.n_channels, cfg.n_times, device="cuda")
    subject = torch.randint(0, cfg.n_subjects, (128,), device="cuda")
    target = torch.randn(128, cfg.out_dim, device="cuda")

    def loss_fn(out: Any) -> Any:
        return ((out.clip - target) ** 2).mean() + ((out.mse - target) ** 2).mean()

    flops = training_step_flops(model, (x, subject), loss_fn)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x, subject)).backward()
        opt.step()

    seconds = _timed(lambda: [train_step() for _ in range(10)], 2) / 10
    peaks = step_matmul(args)
    achieved = flops / seconds
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "samples_per_s": 128 / seconds,
        "gflop_per_step": flops / 1e9,
        "share_of_bf16_peak": share(achieved, peaks["bf16_tflops"] * 1e12),
        "share_of_fp32_peak": share(achieved, peaks["fp32_tflops"] * 1e12),
    }


def step_latents(_: argparse.Namespace) -> dict[str, float]:
    import open_clip
    import torch

    model = open_clip.create_model("ViT-B-32", pretrained=None).visual.cuda().eval()
    pixels = torch.randn(64, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        seconds = _timed(lambda: model(pixels), 3)
    return {"clip_vit_b32_images_per_s": 64 / seconds}


def step_generators(args: argparse.Namespace) -> dict[str, float]:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from megdecode.generate.tiny import build_tiny_generator
    from megdecode.generate.tiny_vd import build_tiny_vd
    from vd_pipeline import compare

    with tempfile.TemporaryDirectory() as tmp:
        vd = Path(args.vd) if args.vd else build_tiny_vd(Path(tmp) / "vd")
        twin = build_tiny_generator(Path(tmp) / "twin", {"clip": 64}, size=16)
        rates = compare(vd, twin, "cuda", steps=20, repeats=2, guidance=7.5)
    return {f"{name}_batch{b}_images_per_s": v for name, r in rates.items() for b, v in r.items()}


def step_serve(_: argparse.Namespace) -> dict[str, float]:
    import concurrent.futures as cf
    import tempfile

    import numpy as np
    import requests
    from ray import serve

    sys.path.insert(0, str(Path(__file__).parent))
    from megdecode.bundle_io import load_bundle
    from megdecode.generate.tiny import build_tiny_generator
    from megdecode.serve.app import free_port, start
    from megdecode.serve.config import ServeConfig
    from serve_latency import stream, synthetic_bundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle = synthetic_bundle("paper", Path(tmp) / "bundle")
        b = load_bundle(bundle)
        gen = build_tiny_generator(
            Path(tmp) / "gen", {"synthetic": int(b.latent_mean.shape[0])}, size=16
        )
        cfg = ServeConfig.from_flat_dict(
            {
                "http.port": free_port(),
                "decoder.model": str(bundle),
                "generator.weights": str(gen),
                "generator.num_gpus": 0.25,
                "generator.min_replicas": 2,
                "generator.max_replicas": 2,
                "generator.max_ongoing_requests": 1,
                "generator.max_queued_requests": 1,
                "generator.cpu_fallback": False,
            }
        )
        url = start(cfg)
        try:
            x = np.random.default_rng(0).standard_normal((len(b.ch_names), b.n_times))
            body = json.dumps({"subject": b.subjects[0], "data": x.tolist()})

            def post(_: int) -> int:
                reply = requests.post(f"{url}/v1/reconstruct?steps=50", data=body, timeout=120)
                return int(reply.status_code)

            with cf.ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(post, range(16)))
            if 503 not in codes or 200 not in codes:
                raise RuntimeError(f"expected 200s and 503s from a full pool, got {codes}")
            ws = stream(
                url.replace("http", "ws") + "/v1/stream",
                b.subjects[0],
                len(b.ch_names),
                float(b.scalers[b.subjects[0]].raw_sfreq or 1200.0),
                3.0,
                False,
            )
        finally:
            serve.shutdown()
        return {
            "reconstruct_200": float(codes.count(200)),
            "reconstruct_503": float(codes.count(503)),
            **{f"stream_{k}": float(v) for k, v in ws.items() if isinstance(v, int | float)},
        }


STEPS = {
    "matmul": step_matmul,
    "brain": step_brain,
    "latents": step_latents,
    "generators": step_generators,
    "serve": step_serve,
}


def run_step(name: str, args: argparse.Namespace) -> bool:
    """Run one step in a child process under its timeout; print its PASS/FAIL line."""
    cmd = [sys.executable, __file__, "--step", name] + (["--vd", args.vd] if args.vd else [])
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUTS[name])
    except subprocess.TimeoutExpired:
        print(f"FAIL {name}: timed out after {TIMEOUTS[name]} s")
        return False
    took = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        print(f"FAIL {name} ({took:.0f} s): {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        return False
    numbers = json.loads(lines[-1])
    print(f"PASS {name} ({took:.0f} s): " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vd", default="", help="a real Versatile Diffusion folder")
    parser.add_argument("--only", nargs="*", choices=sorted(STEPS), default=None)
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    if args.step:  # the child process of run_step: one JSON line of numbers
        print(json.dumps(STEPS[args.step](args)))
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}")
    results = [run_step(name, args) for name in (args.only or list(STEPS))]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
