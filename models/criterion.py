"""The set-prediction criterion of DETR and Deformable DETR (Carion et al., 2020; Zhu et al., 2021).

``SetCriterion`` matches predictions to targets (``models.matcher``), then computes the
classification, L1 + GIoU box, cardinality and mask terms, again for each auxiliary decoder
output and the two-stage proposals; ``build_criterion`` builds it and its weight dict from a
``LossConfig``.

The official numbers, in one class for both models (``focal_alpha`` picks the classification
loss), with label checks and normalisation over a gradient-accumulation group added.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.losses import dice_loss, sigmoid_focal_loss
from models.matcher import HungarianMatcher
from util import box_ops
from util.distributed import get_world_size, is_dist_avail_and_initialized
from util.misc import accuracy, nested_tensor_from_tensor_list


class SetCriterion(nn.Module):
    """Hungarian-matched set loss: classification, L1 + GIoU on boxes, cardinality error (logged),
    masks (focal + DICE) when asked. Auxiliary decoder layers get the same terms with ``_i`` suffixes
    and two-stage encoder proposals with ``_enc``.

    ``focal_alpha=None`` is DETR's softmax cross-entropy with a down-weighted no-object class
    (``eos_coef``); a float is Deformable DETR's sigmoid focal loss with that alpha (``eos_coef``
    unused). The official ``SetCriterion`` of each repository (in ``models/detr.py`` there, where
    it is still importable from here) is one of the two.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float,
        losses: list[str],
        focal_alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = losses
        self.focal_alpha = focal_alpha
        unknown = [loss for loss in losses if loss not in self._loss_map()]
        if unknown:
            raise ValueError(f"SetCriterion: unknown loss(es) {unknown}, choose from {sorted(self._loss_map())}")
        if focal_alpha is None:
            empty_weight = torch.ones(self.num_classes + 1)
            empty_weight[-1] = self.eos_coef
            self.register_buffer("empty_weight", empty_weight)

    def loss_labels(
        self,
        outputs: dict,
        targets: list[dict],
        indices: list[tuple[Tensor, Tensor]],
        num_boxes: float,
        log: bool = True,
        group_sizes: list[int] | None = None,
    ) -> dict[str, Tensor]:
        """Classification: softmax cross-entropy with a down-weighted no-object class (DETR) or
        sigmoid focal loss over one-hot targets (Deformable DETR). ``group_sizes``: the box counts
        of every image of an accumulation group, whose total class weight normalises the
        cross-entropy instead of this batch's."""
        src_logits = outputs["pred_logits"]
        idx = self._get_src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device)
        target_classes[idx] = target_classes_o
        if self.focal_alpha is None and group_sizes is None:
            loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
        elif self.focal_alpha is None:  # mean over the group: sum here / the group's total weight
            queries = src_logits.shape[1]
            matched = [min(n, queries) for n in group_sizes]
            weight_total = sum(m + (queries - m) * self.eos_coef for m in matched)
            loss_ce = F.cross_entropy(
                src_logits.transpose(1, 2), target_classes, self.empty_weight, reduction="sum"
            ) / max(weight_total, 1e-12)
        else:
            onehot = torch.zeros(
                [*src_logits.shape[:2], src_logits.shape[2] + 1], dtype=src_logits.dtype, device=src_logits.device
            )
            onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
            onehot = onehot[:, :, :-1]
            loss_ce = (
                sigmoid_focal_loss(src_logits, onehot, num_boxes, alpha=self.focal_alpha, gamma=2) * src_logits.shape[1]
            )
        losses = {"loss_ce": loss_ce}
        if log:
            losses["class_error"] = 100 - accuracy(src_logits[idx], target_classes_o)[0]
        return losses

    @torch.no_grad()
    def loss_cardinality(
        self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_boxes: float
    ) -> dict[str, Tensor]:
        """Absolute error in the number of predicted (non-"no-object") boxes; for logging only."""
        pred_logits = outputs["pred_logits"]
        device = pred_logits.device
        tgt_lengths = torch.as_tensor([len(v["labels"]) for v in targets], device=device)
        card_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths.float())}

    def loss_boxes(
        self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_boxes: float
    ) -> dict[str, Tensor]:
        """L1 and generalized-IoU losses of matched boxes (normalised cxcywh), per target box."""
        idx = self._get_src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        loss_giou = 1 - torch.diag(
            box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(src_boxes), box_ops.box_cxcywh_to_xyxy(target_boxes))
        )
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    def loss_masks(
        self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_boxes: float
    ) -> dict[str, Tensor]:
        """Focal and DICE losses of matched masks, predictions upsampled to the padded target size."""
        src_idx = self._get_src_permutation_idx(indices)
        tgt_idx = self._get_tgt_permutation_idx(indices)
        src_masks = outputs["pred_masks"][src_idx]
        target_masks, _ = nested_tensor_from_tensor_list([t["masks"] for t in targets]).decompose()
        target_masks = target_masks.to(src_masks)[tgt_idx]
        src_masks = F.interpolate(
            src_masks[:, None], size=target_masks.shape[-2:], mode="bilinear", align_corners=False
        )
        src_masks = src_masks[:, 0].flatten(1)
        target_masks = target_masks.flatten(1).view(src_masks.shape)
        return {
            "loss_mask": sigmoid_focal_loss(src_masks, target_masks, num_boxes),
            "loss_dice": dice_loss(src_masks, target_masks, num_boxes),
        }

    @staticmethod
    def _get_src_permutation_idx(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for (src, _) in indices])
        return batch_idx, src_idx

    @staticmethod
    def _get_tgt_permutation_idx(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(tgt, i) for i, (_, tgt) in enumerate(indices)])
        tgt_idx = torch.cat([tgt for (_, tgt) in indices])
        return batch_idx, tgt_idx

    def _loss_map(self) -> dict:
        return {
            "labels": self.loss_labels,
            "cardinality": self.loss_cardinality,
            "boxes": self.loss_boxes,
            "masks": self.loss_masks,
        }

    def get_loss(
        self,
        loss: str,
        outputs: dict,
        targets: list[dict],
        indices: list[tuple[Tensor, Tensor]],
        num_boxes: float,
        **kwargs: Any,
    ) -> dict[str, Tensor]:
        return self._loss_map()[loss](outputs, targets, indices, num_boxes, **kwargs)

    def _check_targets(self, targets: list[dict]) -> None:
        """A clear error naming the image for labels outside ``[0, num_classes)``, instead of a
        failure inside CUDA with a device-side assert (officially)."""
        for i, t in enumerate(targets):
            labels = t["labels"]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                image = t.get("image_id", i)
                raise ValueError(
                    f"target of image {image.tolist() if isinstance(image, Tensor) else image} has label(s) "
                    f"{sorted(set(labels.tolist()))} outside [0, num_classes={self.num_classes}); "
                    "raise --num_classes to max category id + 1"
                )

    def forward(self, outputs: dict, targets: list[dict], group_targets: list[dict] | None = None) -> dict[str, Tensor]:
        """``outputs`` of the model, ``targets`` per image (``labels [N_i]``, ``boxes [N_i, 4]``
        normalised cxcywh, ``masks [N_i, H, W]`` for the mask loss). Returns unweighted terms;
        weight them with ``weight_dict``. ``group_targets``: with gradient accumulation, the targets
        of every batch of the group (this one included): the terms are normalised over all of them
        (box count; for the softmax cross-entropy the total class weight, computable from the box
        counts before matching), so the group's summed loss equals that of one batch as large as
        the group."""
        self._check_targets(targets)
        outputs_without_aux = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        indices = self.matcher(outputs_without_aux, targets)
        group_sizes = None if group_targets is None else [len(t["labels"]) for t in group_targets]
        num_boxes = self.num_boxes(next(iter(outputs.values())).device, targets, group_targets)

        losses: dict[str, Tensor] = {}
        for loss in self.losses:
            kwargs = {"group_sizes": group_sizes} if loss == "labels" and group_sizes is not None else {}
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes, **kwargs))

        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._side_losses(aux_outputs, targets, num_boxes, f"_{i}", group_sizes))

        if "enc_outputs" in outputs:
            bin_targets = copy.deepcopy(targets)
            for bt in bin_targets:
                bt["labels"] = torch.zeros_like(bt["labels"])
            losses.update(self._side_losses(outputs["enc_outputs"], bin_targets, num_boxes, "_enc", group_sizes))
        return losses

    @staticmethod
    def num_boxes(device: torch.device, targets: list[dict], group_targets: list[dict] | None = None) -> float:
        """The normalisation of the box terms: the target boxes of the batch (of the accumulation
        group with ``group_targets``), averaged over the ranks, at least 1."""
        normalising = targets if group_targets is None else group_targets
        num_boxes_t = torch.as_tensor([sum(len(t["labels"]) for t in normalising)], dtype=torch.float, device=device)
        if is_dist_avail_and_initialized():
            torch.distributed.all_reduce(num_boxes_t)
        return torch.clamp(num_boxes_t / get_world_size(), min=1).item()

    def _side_losses(
        self, outputs: dict, targets: list[dict], num_boxes: float, suffix: str, group_sizes: list[int] | None = None
    ) -> dict[str, Tensor]:
        """Losses of an auxiliary prediction set, matched on its own (no masks, no class_error)."""
        indices = self.matcher(outputs, targets)
        out: dict[str, Tensor] = {}
        for loss in self.losses:
            if loss == "masks":  # intermediate masks are too costly to compute
                continue
            kwargs: dict = {"log": False, "group_sizes": group_sizes} if loss == "labels" else {}
            l_dict = self.get_loss(loss, outputs, targets, indices, num_boxes, **kwargs)
            out.update({k + suffix: v for k, v in l_dict.items()})
        return out


@dataclass
class LossConfig:
    """Loss weights (``--cls_loss_coef``, ``--bbox_loss_coef``, ...) and the classification loss.

    ``focal_alpha=None``: DETR's softmax cross-entropy, the no-object class weighted by
    ``eos_coef`` and ``loss_ce`` by 1 as officially (DETR has no ``--cls_loss_coef``). A float:
    Deformable DETR's sigmoid focal loss with that alpha (``--focal_alpha``; ``eos_coef`` unused).
    ``mask_loss_coef`` and ``dice_loss_coef`` weight the mask terms when the model has masks.
    """

    cls_loss_coef: float = 1.0
    bbox_loss_coef: float = 5
    giou_loss_coef: float = 2
    mask_loss_coef: float = 1
    dice_loss_coef: float = 1
    eos_coef: float = 0.1
    focal_alpha: float | None = None


def build_weight_dict(base: dict[str, float], num_aux: int, extra_suffixes: tuple[str, ...] = ()) -> dict[str, float]:
    """Repeat the base weights for each auxiliary layer (``_0`` ... ``_{num_aux-1}``) and suffix."""
    weight_dict = dict(base)
    for i in range(num_aux):
        weight_dict.update({k + f"_{i}": v for k, v in base.items()})
    for suffix in extra_suffixes:
        weight_dict.update({k + suffix: v for k, v in base.items()})
    return weight_dict


def build_criterion(
    cfg: LossConfig,
    num_classes: int,
    matcher: HungarianMatcher,
    num_aux: int,
    masks: bool = False,
    two_stage: bool = False,
) -> SetCriterion:
    """The criterion of a model with ``num_aux`` auxiliary decoder outputs (``dec_layers - 1`` with
    the auxiliary loss, else 0), mask terms with ``masks``, encoder-proposal terms with ``two_stage``."""
    base = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    if masks:
        base.update({"loss_mask": cfg.mask_loss_coef, "loss_dice": cfg.dice_loss_coef})
    weight_dict = build_weight_dict(base, num_aux, ("_enc",) if two_stage else ())
    losses = ["labels", "boxes", "cardinality"] + (["masks"] if masks else [])
    return SetCriterion(
        num_classes,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=cfg.eos_coef,
        losses=losses,
        focal_alpha=cfg.focal_alpha,
    )
