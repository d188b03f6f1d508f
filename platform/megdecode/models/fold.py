"""The serving fold: a brain module's input layers as one affine map per subject.

In eval mode spatial attention, the initial 1x1 layer and the subject layer are all
linear in the sensors, so they compose into one (C, D) matrix and a bias per subject.
Training needs them apart (the attention logits are parameters, dropout masks sensors);
a served window does not, and pays one product where it paid three.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from megdecode.models.brain import BrainModule

logger = logging.getLogger(__name__)


class FoldedInput(nn.Module):
    """Spatial attention, the initial 1x1 layer and the subject layer as one affine map per subject.

    h (B, T, C), subject (B,) long -> (B, T, D). In eval mode the three are linear in the
    sensors: x @ A (A = softmax of the position logits, (C, D)), then @ L^T + b, then @ S_s.
    Training recomputes A every step (the logits are parameters, dropout masks sensors), and
    so did every served forward: a (D, 2K^2) x (2K^2, C) product that on the paper's model
    (270 x 2048 x 272) cost a quarter of a one-window forward. Folded once at load:
    M_s = A L^T S_s (C, D), c_s = b S_s, and a window costs one product where it cost three.
    """

    matrices: torch.Tensor  # (S, C, D) buffer; S = 1 without a subject layer
    biases: torch.Tensor  # (S, 1, D) buffer

    def __init__(self, matrices: torch.Tensor, biases: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrices", matrices.contiguous())
        self.register_buffer("biases", biases.contiguous())
        self.shared = matrices.shape[0] == 1  # no subject layer: one map for everyone

    def forward(self, h: torch.Tensor, subject: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return torch.addmm(
                self.biases[0, 0], h.reshape(-1, h.shape[-1]), self.matrices[0]
            ).view(*h.shape[:2], -1)
        return torch.baddbmm(
            self.biases.index_select(0, subject), h, self.matrices.index_select(0, subject)
        )


@torch.no_grad()
def fold(model: BrainModule) -> BrainModule:
    """An eval-mode copy of `model` with its input layers folded (`FoldedInput`): same outputs
    to float rounding, fewer and cheaper products per window. `model` itself is untouched."""
    model = copy.deepcopy(model).eval()
    if model.spatial_attention is not None:
        first = torch.softmax(model.spatial_attention.logits(), dim=-1).T  # (C, D)
    else:
        first = torch.eye(model.cfg.n_channels)
    lin = model.initial_linear
    matrix, bias = first @ lin.weight.T, lin.bias[None]  # (C, D), (1, D)
    if model.subject_layer is not None:
        weight = model.subject_layer.weight  # (S, D, D)
        matrices, biases = matrix @ weight, (bias @ weight)  # (S, C, D), (S, 1, D)
    else:
        matrices, biases = matrix[None], bias[None]
    # BrainModule.features feeds x (B, C, T) as x.transpose(1, 2) when there is no spatial
    # attention, then initial_linear, then subject_layer(h, subject): the fold goes in the last.
    model.spatial_attention = None
    model.initial_linear = nn.Identity()  # type: ignore[assignment]  # a layer of another type, on purpose
    model.subject_layer = FoldedInput(matrices, biases)  # type: ignore[assignment]  # same call signature
    return model
