"""DETR (Carion et al., 2020): the ``DETR`` detector (backbone, transformer, class and box heads
over learned object queries), its box ``PostProcess``, and ``build``, which returns ``(model,
criterion, postprocessors)`` from a ``DETRConfig`` (with ``masks``: ``models.segmentation``).

The official modules, parameter names and numbers, with typed configs, the criterion in
``models.criterion`` (re-exported here) and no TorchScript.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import BackboneConfig, build_backbone
from models.criterion import LossConfig, SetCriterion, build_criterion  # SetCriterion: also an official import
from models.matcher import MatcherConfig, build_matcher
from models.transformer import TransformerConfig, build_transformer
from util import box_ops
from util.misc import NestedTensor, refuse_torchscript, to_nested_tensor


class DETR(nn.Module):
    """Backbone + transformer + class and box heads over ``num_queries`` object queries."""

    __prepare_scriptable__ = refuse_torchscript  # torch.jit.script: a clear error

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
        """``samples``: images ``[B, 3, H, W]`` with padding mask ``[B, H, W]`` (a ``NestedTensor``; a
        ``[B, 3, H, W]`` tensor or a list of ``[3, H, W]`` images is accepted too).

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

    def _set_aux_loss(self, outputs_class: Tensor, outputs_coord: Tensor) -> list[dict[str, Tensor]]:
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]


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
class DETRConfig:
    """Everything ``build`` needs. ``num_classes`` is the max category id + 1 (the no-object
    logit is added on top; the official code guesses it from the data set's name)."""

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


def build(cfg: DETRConfig) -> tuple[nn.Module, SetCriterion, dict[str, nn.Module]]:
    """Returns ``(model, criterion, postprocessors)`` as the official ``build(args)``."""
    if cfg.num_classes < 1:
        raise ValueError(f"--num_classes must be >= 1, got {cfg.num_classes}")
    if cfg.loss.focal_alpha is not None:
        raise ValueError("DETR's classification loss is softmax cross-entropy: LossConfig.focal_alpha must be None")
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

    num_aux = cfg.transformer.dec_layers - 1 if cfg.aux_loss else 0
    criterion = build_criterion(cfg.loss, cfg.num_classes, build_matcher(cfg.matcher), num_aux, masks=cfg.masks)
    return model, criterion, postprocessors
