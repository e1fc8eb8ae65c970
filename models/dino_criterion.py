"""DINO's criterion: the shared ``SetCriterion`` (sigmoid focal loss, L1 + GIoU) on the final and
auxiliary decoder outputs and on the selected encoder proposals (``_interm``, with their real
classes), plus the denoising terms (``_dn``, ``_dn_i``): every positive denoising query against
the target it was made from, the negatives and padding as background.

``build_dino_criterion`` gives it the official weight dict. Differs from the official code only in
structure; the official zero ``_dn`` terms without denoising (evaluation) are kept, so the logged
keys do not change between training and evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.criterion import LossConfig, SetCriterion, build_weight_dict
from models.denoising import dn_match_indices
from models.matcher import HungarianMatcher

DN_TERMS = ("loss_bbox", "loss_giou", "loss_ce", "loss_xy", "loss_hw", "cardinality_error")


class DINOCriterion(SetCriterion):
    """``SetCriterion`` with DINO's terms: ``loss_xy`` / ``loss_hw`` (the L1 loss of the centres and of
    the sizes, logged), ``_interm`` and the denoising ``_dn`` terms."""

    def loss_boxes(
        self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_boxes: float
    ) -> dict[str, Tensor]:
        losses = super().loss_boxes(outputs, targets, indices, num_boxes)
        with torch.no_grad():
            idx = self._get_src_permutation_idx(indices)
            target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
            l1 = (outputs["pred_boxes"][idx] - target_boxes).abs()
            losses["loss_xy"] = l1[..., :2].sum() / num_boxes
            losses["loss_hw"] = l1[..., 2:].sum() / num_boxes
        return losses

    def _dn_losses(
        self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_boxes: float, suffix: str
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for loss in self.losses:
            kwargs = {"log": False} if loss == "labels" else {}
            out.update(self.get_loss(loss, outputs, targets, indices, num_boxes, **kwargs))
        return {k + suffix: v for k, v in out.items()}

    def forward(self, outputs: dict, targets: list[dict], group_targets: list[dict] | None = None) -> dict[str, Tensor]:
        """``outputs`` of ``DINO``; ``targets`` per image (``labels [N_i]``, ``boxes [N_i, 4]``).
        Returns the unweighted terms; ``group_targets``: as ``SetCriterion``'s."""
        losses = super().forward(
            {k: v for k, v in outputs.items() if k not in ("interm_outputs", "dn_outputs")}, targets, group_targets
        )
        num_boxes = self.num_boxes(outputs["pred_logits"].device, targets, group_targets)
        if "interm_outputs" in outputs:
            losses.update(self._side_losses(outputs["interm_outputs"], targets, num_boxes, "_interm"))
        dn = outputs.get("dn_outputs")
        num_aux = len(outputs.get("aux_outputs", []))
        if dn is None:
            zero = outputs["pred_logits"].new_zeros(())
            for suffix in ["_dn"] + [f"_dn_{i}" for i in range(num_aux)]:
                losses.update({k + suffix: zero for k in DN_TERMS})
            return losses
        groups = int(dn["num_groups"])
        indices = dn_match_indices(targets, dn["pred_logits"].shape[1], groups)
        losses.update(self._dn_losses(dn, targets, indices, num_boxes * groups, "_dn"))
        for i, aux in enumerate(dn.get("aux_outputs", [])):
            losses.update(self._dn_losses(aux, targets, indices, num_boxes * groups, f"_dn_{i}"))
        return losses


def build_dino_criterion(
    cfg: LossConfig,
    num_classes: int,
    matcher: HungarianMatcher,
    num_aux: int,
    denoising: bool = True,
    interm_loss_coef: float = 1.0,
) -> DINOCriterion:
    """The official weights: ``loss_ce`` / ``loss_bbox`` / ``loss_giou`` for the final and each of the
    ``num_aux`` auxiliary outputs, the same for the denoising queries when ``denoising``, and
    ``interm_loss_coef`` times them for the encoder proposals (``_interm``)."""
    base = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    with_dn = dict(base)
    if denoising:
        with_dn.update({k + "_dn": v for k, v in base.items()})
    weight_dict = build_weight_dict(with_dn, num_aux)
    weight_dict.update({k + "_interm": v * interm_loss_coef for k, v in base.items()})
    return DINOCriterion(
        num_classes,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=cfg.eos_coef,
        losses=["labels", "boxes", "cardinality"],
        focal_alpha=cfg.focal_alpha,
    )
