"""benchmarks/gpu_check.py without CUDA (exit 0, says so) and its pure helpers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_and_exits_0() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert _module().NO_CUDA in done.stdout


def test_flop_counting_matches_the_arithmetic() -> None:
    gc = _module()
    assert gc.matmul_flops(4) == 128
    model = torch.nn.Linear(8, 3, bias=False)
    x = torch.randn(5, 8, requires_grad=False)
    # forward 2*B*in*out, backward the weight gradient only (x needs none): as much again
    flops = gc.training_step_flops(model, (x,), lambda out: out.sum())
    assert flops == 2 * (2 * 5 * 8 * 3)
    assert model.weight.grad is None  # the count leaves no gradients behind
    assert gc.share(50.0, 200.0) == 0.25
    with pytest.raises(ValueError, match="peak"):
        gc.share(1.0, 0.0)


def test_step_timeouts_fit_ten_minutes() -> None:
    gc = _module()
    assert set(gc.TIMEOUTS) == set(gc.STEPS) and sum(gc.TIMEOUTS.values()) <= 600
