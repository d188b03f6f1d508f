"""Training throughput of the paper's brain module against this machine's matmul peak.

Prints, from one run on one machine: training samples/s (forward + backward + Adam step
with `CombinedLoss`, batch 128, C=272, T=181, F=768, 4 subjects, random data), the
model's dense forward+backward FLOPs per sample (torch.utils.flop_counter), the dense
float32 matmul FLOP/s (2048 x 2048) measured now, and the ratio achieved / matmul peak
(goal >= 0.70). Peak and step timings alternate, so a busy machine slows both alike;
the median of the per-pair ratios is the headline, the best step over the best peak is
printed next to it.

    python benchmarks/train_throughput.py [--steps 8] [--batch-size 128] [--profile]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from megdecode.logs import setup_logging
from megdecode.losses import CombinedLoss, LossConfig
from megdecode.models.brain import BrainModule, paper_config
from megdecode.models.dilated import DilatedConv

logger = logging.getLogger(__name__)


def matmul_flops_per_s(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, repeats: int = 4
) -> float:
    """Dense float32 matmul FLOP/s of `repeats` back-to-back (n x n) @ (n x n) products."""
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b, out=out)
    return repeats * 2 * a.shape[0] ** 3 / (time.perf_counter() - start)


@contextmanager
def conv1d_reference() -> Iterator[None]:
    """Run every `DilatedConv` through torch's conv1d, for counting useful FLOPs only.

    Our conv's weight gradient also multiplies the 2·pad zero rows between samples
    (under 1% here); counting the conv1d equivalent keeps the ratio honest.
    """

    def forward(self: DilatedConv, x: torch.Tensor) -> torch.Tensor:
        pad = self.dilation * (self.weight.shape[0] // 2)
        weight = self.weight.permute(2, 1, 0)
        return F.conv1d(
            x.transpose(1, 2), weight, self.bias, padding=pad, dilation=self.dilation
        ).transpose(1, 2)

    with mock.patch.object(DilatedConv, "forward", forward):
        yield


def make_step(batch_size: int, seed: int = 0):
    """Model, loss, optimiser and random batch of the paper config; returns step()."""
    torch.manual_seed(seed)
    cfg = paper_config()
    model = BrainModule(cfg, torch.rand(cfg.n_channels, 2))
    loss_fn = CombinedLoss(LossConfig())
    opt = torch.optim.Adam(
        [*model.parameters(), *loss_fn.parameters()], lr=3e-4, betas=(0.9, 0.999)
    )
    x = torch.randn(batch_size, cfg.n_channels, cfg.n_times)
    subject = torch.randint(0, cfg.n_subjects, (batch_size,))
    target = torch.randn(batch_size, cfg.out_dim)
    model.train()

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        out = model(x, subject)
        parts = loss_fn(out.clip, out.mse, target, None)  # random targets: all distinct
        parts.total.backward()
        opt.step()
        loss_fn.clamp_()
        return parts.total

    return model, step


def flops_per_sample(batch_size: int, reference: bool) -> float:
    """Dense forward+backward FLOPs per sample (matmul/conv family, as FlopCounterMode counts).

    reference=True counts the conv1d-equivalent model (useful work); False, what runs.
    """
    model, _ = make_step(batch_size)
    cfg = model.cfg
    loss_fn = CombinedLoss(LossConfig())
    x = torch.randn(batch_size, cfg.n_channels, cfg.n_times)
    subject = torch.randint(0, cfg.n_subjects, (batch_size,))
    target = torch.randn(batch_size, cfg.out_dim)
    counter = FlopCounterMode(display=False)
    with conv1d_reference() if reference else nullcontext(), counter:
        out = model(x, subject)
        loss_fn(out.clip, out.mse, target, None).total.backward()
    return counter.get_total_flops() / batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table of one step"
    )
    args = parser.parse_args()
    setup_logging("INFO")
    if args.threads:
        torch.set_num_threads(args.threads)

    flops = flops_per_sample(args.batch_size, reference=True)
    flops_run = flops_per_sample(args.batch_size, reference=False)
    model, step = make_step(args.batch_size)
    n = 2048
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    for _ in range(args.warmup):
        step()
        matmul_flops_per_s(a, b, out, repeats=1)
    # Interleave peak and step timings so that both see the same machine load.
    peaks, times = [], []
    for _ in range(args.steps):
        peaks.append(matmul_flops_per_s(a, b, out))
        start = time.perf_counter()
        step()  # no host sync inside the step; it returns once backward and Adam are done
        times.append(time.perf_counter() - start)
    ratios = [flops * args.batch_size / t / p for t, p in zip(times, peaks, strict=True)]
    samples_per_s = args.batch_size / statistics.median(times)
    result = {
        "threads": torch.get_num_threads(),
        "params": model.count_parameters()["total"],
        "batch_size": args.batch_size,
        "steps": args.steps,
        "step_s_median": round(statistics.median(times), 3),
        "samples_per_s": round(samples_per_s, 2),
        "gflops_per_sample_fwd_bwd": round(flops / 1e9, 3),
        "gflops_per_sample_executed": round(flops_run / 1e9, 3),
        "achieved_gflop_s": round(flops * samples_per_s / 1e9, 1),
        "matmul_peak_gflop_s_median": round(statistics.median(peaks) / 1e9, 1),
        "ratio_achieved_over_peak_median": round(statistics.median(ratios), 3),
        "ratio_best_step_over_best_peak": round(
            flops * args.batch_size / min(times) / max(peaks), 3
        ),
    }
    print(json.dumps(result, indent=2))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
