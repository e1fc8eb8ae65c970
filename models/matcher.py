"""Hungarian matching between predictions and ground-truth boxes (Carion et al., 2020):
``HungarianMatcher`` (class cost: softmax probability for DETR, sigmoid focal cost for Deformable
DETR; L1 distance of normalised cxcywh boxes; negative generalized IoU), solved per image with
``scipy.optimize.linear_sum_assignment``; ``build_matcher`` builds it from a ``MatcherConfig``.

The official matchers' costs and numbers, both models' in one class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted matching cost."""

    def __init__(
        self,
        cost_class: float = 1,
        cost_bbox: float = 1,
        cost_giou: float = 1,
        focal: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs can't be 0 (--set_cost_class/bbox/giou)")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """``outputs``: ``pred_logits [B, Q, K]``, ``pred_boxes [B, Q, 4]``; ``targets``: per image
        ``labels [N_i]`` and ``boxes [N_i, 4]`` (normalised cxcywh).

        Returns per image ``(query_idx [min(Q, N_i)], target_idx [min(Q, N_i)])`` as int64 tensors.
        """
        bs, num_queries = outputs["pred_logits"].shape[:2]
        sizes = [len(v["boxes"]) for v in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]

        logits = outputs["pred_logits"].flatten(0, 1)
        out_bbox = outputs["pred_boxes"].flatten(0, 1)
        tgt_ids = torch.cat([v["labels"] for v in targets])
        tgt_bbox = torch.cat([v["boxes"] for v in targets])

        if self.focal:
            prob = logits.sigmoid()
            a, g = self.focal_alpha, self.focal_gamma
            neg = (1 - a) * (prob**g) * (-(1 - prob + 1e-8).log())
            pos = a * ((1 - prob) ** g) * (-(prob + 1e-8).log())
            cost_class = pos[:, tgt_ids] - neg[:, tgt_ids]
        else:
            cost_class = -logits.softmax(-1)[:, tgt_ids]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))

        c = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        c = c.view(bs, num_queries, -1).cpu()  # the whole batch's costs, moved to the CPU once (as officially)
        indices = [linear_sum_assignment(m[i]) for i, m in enumerate(c.split(sizes, -1))]
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


@dataclass
class MatcherConfig:
    """Weights of the class, L1 box and GIoU costs (``--set_cost_class/bbox/giou``).

    No alpha: the focal class cost uses ``alpha = 0.25`` and ``gamma = 2`` whatever ``--focal_alpha``
    says, as the official Deformable DETR matcher hard-codes them (``--focal_alpha`` is the loss's
    alpha only); ``HungarianMatcher(focal_alpha=...)`` still allows another one."""

    set_cost_class: float = 1
    set_cost_bbox: float = 5
    set_cost_giou: float = 2


def build_matcher(cfg: MatcherConfig, focal: bool = False) -> HungarianMatcher:
    """DETR's softmax class cost, or with ``focal`` Deformable DETR's (alpha 0.25, gamma 2, as officially).
    ``focal`` follows the model's classification (set by the model's builder), not a flag."""
    return HungarianMatcher(
        cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox, cost_giou=cfg.set_cost_giou, focal=focal
    )
