"""Dilated 1-D convolution on time-major tensors (B, T, C), written as large matrix products.

Why not `nn.Conv1d`: on this project's 2-core CPU its oneDNN kernels ran the brain
module's conv stack (forward + backward) at ~0.74 of the dense matmul peak on one thread,
the same stack as the products below at ~0.80, and the whole training step was ~4-12%
faster with them (1 and 2 threads; benchmarks/train_throughput.py measures the model).

The trick: zero-pad each sample in time by p = d·(k//2); tap j of the kernel is then a
batched product of the time-shifted window x_pad[:, j·d : j·d + T] (a strided
view) with W[j] (C_in x C_out), accumulated in place. The weight gradient flattens the
batch into one long product per tap. Apart from the products, a call copies x once into
the padded buffer and grad_y once into a padded buffer.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


class _DilatedConvFn(torch.autograd.Function):
    """y[b, t] = bias + Σ_j x[b, t + (j - k//2)·d] @ W[j], with zeros outside [0, T)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int
    ) -> torch.Tensor:
        batch, n_times, c_in = x.shape
        taps, _, c_out = weight.shape
        pad = dilation * (taps // 2)
        x_pad = x.new_empty(batch, n_times + 2 * pad, c_in)
        x_pad[:, :pad] = 0
        x_pad[:, pad + n_times :] = 0
        x_pad[:, pad : pad + n_times] = x
        # Tap j reads the time-shifted window x_pad[:, j·d : j·d + T] (a strided view, no
        # copy); the weight is broadcast over the batch (stride 0, no copy either).
        y = torch.baddbmm(bias, x_pad[:, :n_times], weight[0].expand(batch, c_in, c_out))
        for j in range(1, taps):
            window = x_pad[:, j * dilation : j * dilation + n_times]
            torch.baddbmm(y, window, weight[j].expand(batch, c_in, c_out), out=y)
        ctx.save_for_backward(x_pad, weight)
        ctx.dilation = dilation
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_pad, weight = ctx.saved_tensors
        dilation = ctx.dilation
        batch, length, c_in = x_pad.shape
        taps, _, c_out = weight.shape
        pad = dilation * (taps // 2)
        n_times = length - 2 * pad
        # One buffer holds grad_y twice over: rows [pad:] are grad_y laid out like the
        # forward's flat product (zeros after each sample), rows [:B·L] are grad_y centred
        # in `pad` zeros on both sides, as the input-gradient products need.
        buffer = grad_y.new_empty(pad + batch * length, c_out)
        buffer[:pad] = 0
        aligned = buffer[pad:].view(batch, length, c_out)
        aligned[:, n_times:] = 0
        aligned[:, :n_times] = grad_y
        centred = buffer[: batch * length].view(batch, length, c_out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # grad_x[t] = Σ_j grad_y[t + p - j·d] @ W[j]^T
            last = (taps - 1) * dilation
            grad_x = torch.bmm(
                centred[:, last : last + n_times], weight[0].T.expand(batch, c_out, c_in)
            )
            for j in range(1, taps):
                start = (taps - 1 - j) * dilation
                window = centred[:, start : start + n_times]
                torch.baddbmm(grad_x, window, weight[j].T.expand(batch, c_out, c_in), out=grad_x)
        if ctx.needs_input_grad[1]:
            # One (C_in x rows) @ (rows x C_out) product per tap over the whole flattened
            # batch; the 2·pad rows between samples multiply zeros of `aligned`.
            rows = batch * length - 2 * pad
            x_flat = x_pad.view(-1, c_in)
            g_flat = aligned.view(-1, c_out)[:rows]
            grad_w = torch.empty_like(weight)
            for j in range(taps):
                torch.mm(x_flat[j * dilation : j * dilation + rows].T, g_flat, out=grad_w[j])
        if ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 1))
        return grad_x, grad_w, grad_b, None


def dilated_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int = 1
) -> torch.Tensor:
    """x (B, T, C_in), weight (k, C_in, C_out), bias (C_out,) -> (B, T, C_out), 'same' length.

    Equals `F.conv1d(x.mT, weight.permute(2, 1, 0), bias, padding=dilation * (k // 2),
    dilation=dilation).mT` for odd k.
    """
    if x.ndim != 3 or weight.ndim != 3 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"expected x (B, T, C) and weight (k, C, D), got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if weight.shape[0] % 2 == 0:
        raise ValueError(f"kernel size must be odd to keep the length, got {weight.shape[0]}")
    return _DilatedConvFn.apply(x.contiguous(), weight.contiguous(), bias, dilation)


class DilatedConv(nn.Module):
    """Time-major dilated conv: (B, T, C_in) -> (B, T, C_out); weight (k, C_in, C_out).

    Initialised like `nn.Conv1d` (uniform ±1/sqrt(C_in·k) for weight and bias).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the length, got {kernel_size}")
        bound = 1.0 / math.sqrt(in_channels * kernel_size)
        self.weight = nn.Parameter(
            torch.empty(kernel_size, in_channels, out_channels).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dilated_conv(x, self.weight, self.bias, self.dilation)

    def extra_repr(self) -> str:
        k, c_in, c_out = self.weight.shape
        return f"{c_in}, {c_out}, kernel_size={k}, dilation={self.dilation}"
