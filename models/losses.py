"""Per-element losses shared by the set criteria: sigmoid focal loss (Lin et al., 2017) and the
DICE / F-1 loss on masks (Milletari et al., 2016).

Identical formulas and normalisation to the official DETR ``models/segmentation.py`` (where they
used to live; they are re-exported there).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dice_loss(inputs: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """``inputs [N, *]`` logits, ``targets [N, *]`` in {0, 1}; summed over N, divided by ``num_boxes``."""
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_boxes


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2
) -> Tensor:
    """``inputs [N, M, ...]`` logits, ``targets`` same shape in {0, 1}.

    Mean over dim 1, sum over the rest, divided by ``num_boxes`` (the official normalisation).
    ``alpha < 0`` disables the class-balancing weight.
    """
    prob = inputs.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.mean(1).sum() / num_boxes
