"""Bounding-box utilities: format conversions, IoU and generalized IoU (Rezatofighi et al., 2019).

Boxes are ``(x0, y0, x1, y1)`` ("xyxy") or ``(cx, cy, w, h)`` ("cxcywh"), in any unit.
Same functions and semantics as the official DETR ``util/box_ops.py``; ``generalized_box_iou``
raises a ``ValueError`` naming the bad boxes instead of asserting.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops.boxes import box_area


def box_cxcywh_to_xyxy(x: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x0, y0, x1, y1)."""
    cx, cy, w, h = x.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(x: Tensor) -> Tensor:
    """``[..., 4]`` (x0, y0, x1, y1) -> ``[..., 4]`` (cx, cy, w, h)."""
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes.

    Returns ``(iou [N, M], union [N, M])``.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])  # [N, M, 2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])  # [N, M, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2 - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``[N, M]``.

    Degenerate boxes (x1 < x0 or y1 < y0) give inf/nan results, so they are rejected.
    """
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        bad = ~(b[:, 2:] >= b[:, :2]).all(dim=1)
        if bad.any():
            raise ValueError(
                f"generalized_box_iou: {name} has {int(bad.sum())} degenerate box(es) "
                f"(x1 < x0 or y1 < y0), e.g. {b[bad][0].tolist()}"
            )
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[..., 0] * wh[..., 1]
    return iou - (area - union) / area


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes around ``[N, H, W]`` binary masks -> ``[N, 4]``.

    Follows the official convention: the box spans the max pixel index (not index + 1);
    an empty mask gives ``(0, 0, 0, 0)``.
    """
    if masks.numel() == 0:
        return torch.zeros((0, 4), device=masks.device)
    h, w = masks.shape[-2:]
    y = torch.arange(0, h, dtype=torch.float, device=masks.device)
    x = torch.arange(0, w, dtype=torch.float, device=masks.device)
    y, x = torch.meshgrid(y, x, indexing="ij")
    m = masks.bool()
    x_mask = masks * x.unsqueeze(0)
    x_max = x_mask.flatten(1).max(-1)[0]
    x_min = x_mask.masked_fill(~m, 1e8).flatten(1).min(-1)[0]
    y_mask = masks * y.unsqueeze(0)
    y_max = y_mask.flatten(1).max(-1)[0]
    y_min = y_mask.masked_fill(~m, 1e8).flatten(1).min(-1)[0]
    boxes = torch.stack([x_min, y_min, x_max, y_max], 1)
    empty = ~m.flatten(1).any(1)
    return boxes.masked_fill(empty[:, None], 0.0)
