"""DETR: the detector, its set-prediction criterion and its box post-processor (Carion et al., 2020).

Same modules, parameter names and numbers as the official ``models/detr.py``. Differences:

* ``build`` takes a typed ``DETRConfig`` instead of the whole ``args`` namespace;
  ``num_classes`` is explicit (no guess from the data set's name).
* ``SetCriterion`` also implements the sigmoid focal classification loss and the two-stage
  ``enc_outputs`` terms of Deformable DETR (``focal_alpha`` set), so both models share one
  criterion; with ``focal_alpha=None`` it is DETR's softmax cross-entropy.
* The criterion raises a clear error for targets with labels outside ``[0, num_classes)``
  instead of failing inside CUDA with a device-side assert.
* The model accepts a ``NestedTensor``, a ``[B, 3, H, W]`` tensor or a list of ``[3, H, W]`` images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import BackboneConfig, build_backbone
from models.losses import dice_loss, sigmoid_focal_loss
from models.matcher import HungarianMatcher, MatcherConfig, build_matcher
from models.transformer import TransformerConfig, build_transformer
from util import box_ops
from util.distributed import get_world_size, is_dist_avail_and_initialized
from util.misc import NestedTensor, accuracy, nested_tensor_from_tensor_list, to_nested_tensor


class DETR(nn.Module):
    """Backbone + transformer + class and box heads over ``num_queries`` object queries."""

    def __init__(
        self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int, aux_loss: bool = False
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    def forward(self, samples: NestedTensor | Tensor | list[Tensor]) -> dict:
        """``samples``: images ``[B, 3, H, W]`` with padding mask ``[B, H, W]``.

        Returns ``pred_logits [B, Q, num_classes + 1]``, ``pred_boxes [B, Q, 4]`` (normalised
        cxcywh) and, with ``aux_loss``, ``aux_outputs`` (the same for each earlier decoder layer).
        """
        samples = to_nested_tensor(samples)
        features, pos = self.backbone(samples)
        src, mask = features[-1].decompose()
        hs = self.transformer(self.input_proj(src), mask, self.query_embed.weight, pos[-1])[0]
        outputs_class = self.class_embed(hs)
        outputs_coord = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = self._set_aux_loss(outputs_class, outputs_coord)
        return out

    @torch.jit.unused
    def _set_aux_loss(self, outputs_class: Tensor, outputs_coord: Tensor) -> list[dict[str, Tensor]]:
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]


class SetCriterion(nn.Module):
    """Hungarian-matched set loss: classification, L1 + GIoU on boxes, cardinality error (logged),
    masks (focal + DICE) when asked. Auxiliary decoder layers get the same terms with ``_i`` suffixes
    and two-stage encoder proposals with ``_enc``.
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
    ) -> dict[str, Tensor]:
        """Classification: softmax cross-entropy with a down-weighted no-object class (DETR) or
        sigmoid focal loss over one-hot targets (Deformable DETR)."""
        src_logits = outputs["pred_logits"]
        idx = self._get_src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device)
        target_classes[idx] = target_classes_o
        if self.focal_alpha is None:
            loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
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
        **kwargs: bool,
    ) -> dict[str, Tensor]:
        return self._loss_map()[loss](outputs, targets, indices, num_boxes, **kwargs)

    def _check_targets(self, targets: list[dict]) -> None:
        for i, t in enumerate(targets):
            labels = t["labels"]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                image = t.get("image_id", i)
                raise ValueError(
                    f"target of image {image.tolist() if isinstance(image, Tensor) else image} has label(s) "
                    f"{sorted(set(labels.tolist()))} outside [0, num_classes={self.num_classes}); "
                    "raise --num_classes to max category id + 1"
                )

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """``outputs`` of the model, ``targets`` per image (``labels [N_i]``, ``boxes [N_i, 4]``
        normalised cxcywh, ``masks [N_i, H, W]`` for the mask loss). Returns unweighted terms;
        weight them with ``weight_dict``."""
        self._check_targets(targets)
        outputs_without_aux = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        indices = self.matcher(outputs_without_aux, targets)

        # Average the number of target boxes across all nodes, for normalisation.
        num_boxes_t = torch.as_tensor(
            [sum(len(t["labels"]) for t in targets)], dtype=torch.float, device=next(iter(outputs.values())).device
        )
        if is_dist_avail_and_initialized():
            torch.distributed.all_reduce(num_boxes_t)
        num_boxes = torch.clamp(num_boxes_t / get_world_size(), min=1).item()

        losses: dict[str, Tensor] = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))

        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._side_losses(aux_outputs, targets, num_boxes, f"_{i}"))

        if "enc_outputs" in outputs:
            bin_targets = copy.deepcopy(targets)
            for bt in bin_targets:
                bt["labels"] = torch.zeros_like(bt["labels"])
            losses.update(self._side_losses(outputs["enc_outputs"], bin_targets, num_boxes, "_enc"))
        return losses

    def _side_losses(self, outputs: dict, targets: list[dict], num_boxes: float, suffix: str) -> dict[str, Tensor]:
        """Losses of an auxiliary prediction set, matched on its own (no masks, no class_error)."""
        indices = self.matcher(outputs, targets)
        out: dict[str, Tensor] = {}
        for loss in self.losses:
            if loss == "masks":  # intermediate masks are too costly to compute
                continue
            kwargs = {"log": False} if loss == "labels" else {}
            l_dict = self.get_loss(loss, outputs, targets, indices, num_boxes, **kwargs)
            out.update({k + suffix: v for k, v in l_dict.items()})
        return out


class PostProcess(nn.Module):
    """Converts the model's output into the COCO API format: per image the best non-"no-object"
    class, its probability, and the box in absolute xyxy pixels."""

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """``target_sizes [B, 2]`` (h, w) of each original image -> per image ``scores [Q]``,
        ``labels [Q]``, ``boxes [Q, 4]``."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        if len(out_logits) != len(target_sizes) or target_sizes.shape[1] != 2:
            raise ValueError(f"target_sizes must be [batch={len(out_logits)}, 2], got {tuple(target_sizes.shape)}")
        prob = F.softmax(out_logits, -1)
        scores, labels = prob[..., :-1].max(-1)
        boxes = box_ops.box_cxcywh_to_xyxy(out_bbox)
        img_h, img_w = target_sizes.unbind(1)
        scale_fct = torch.stack([img_w, img_h, img_w, img_h], dim=1)
        boxes = boxes * scale_fct[:, None, :]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]


class MLP(nn.Module):
    """A simple multi-layer perceptron (ReLU between layers, none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        """``[..., input_dim]`` -> ``[..., output_dim]``."""
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


@dataclass
class LossConfig:
    bbox_loss_coef: float = 5
    giou_loss_coef: float = 2
    mask_loss_coef: float = 1
    dice_loss_coef: float = 1
    eos_coef: float = 0.1


@dataclass
class DETRConfig:
    """Everything ``build`` needs. ``num_classes`` is the max category id + 1 (the no-object
    logit is added on top)."""

    num_classes: int = 91
    num_queries: int = 100
    aux_loss: bool = True
    masks: bool = False
    freeze_detr: bool = False  # second stage of panoptic training: only the mask head learns
    panoptic_is_thing_map: dict[int, bool] | None = None  # enables the panoptic post-processor
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def build_weight_dict(base: dict[str, float], num_aux: int, extra_suffixes: tuple[str, ...] = ()) -> dict[str, float]:
    """Repeat the base weights for each auxiliary layer (``_0`` ... ``_{num_aux-1}``) and suffix."""
    weight_dict = dict(base)
    for i in range(num_aux):
        weight_dict.update({k + f"_{i}": v for k, v in base.items()})
    for suffix in extra_suffixes:
        weight_dict.update({k + suffix: v for k, v in base.items()})
    return weight_dict


def build(cfg: DETRConfig) -> tuple[nn.Module, SetCriterion, dict[str, nn.Module]]:
    """Returns ``(model, criterion, postprocessors)`` as the official ``build(args)``."""
    if cfg.num_classes < 1:
        raise ValueError(f"--num_classes must be >= 1, got {cfg.num_classes}")
    backbone = build_backbone(cfg.backbone)
    transformer = build_transformer(cfg.transformer)
    model: nn.Module = DETR(
        backbone, transformer, num_classes=cfg.num_classes, num_queries=cfg.num_queries, aux_loss=cfg.aux_loss
    )
    postprocessors: dict[str, nn.Module] = {"bbox": PostProcess()}
    if cfg.masks:
        from models.segmentation import DETRsegm, PostProcessPanoptic, PostProcessSegm

        model = DETRsegm(model, freeze_detr=cfg.freeze_detr)
        postprocessors["segm"] = PostProcessSegm()
        if cfg.panoptic_is_thing_map is not None:
            postprocessors["panoptic"] = PostProcessPanoptic(cfg.panoptic_is_thing_map, threshold=0.85)

    base = {"loss_ce": 1.0, "loss_bbox": cfg.loss.bbox_loss_coef, "loss_giou": cfg.loss.giou_loss_coef}
    if cfg.masks:
        base.update({"loss_mask": cfg.loss.mask_loss_coef, "loss_dice": cfg.loss.dice_loss_coef})
    weight_dict = build_weight_dict(base, cfg.transformer.dec_layers - 1 if cfg.aux_loss else 0)
    losses = ["labels", "boxes", "cardinality"] + (["masks"] if cfg.masks else [])
    criterion = SetCriterion(
        cfg.num_classes,
        matcher=build_matcher(cfg.matcher),
        weight_dict=weight_dict,
        eos_coef=cfg.loss.eos_coef,
        losses=losses,
    )
    return model, criterion, postprocessors
