"""Deformable DETR (Zhu et al., 2021): ``DeformableDETR`` (multi-scale backbone features, the
deformable transformer, sigmoid class and box heads per decoder layer, optional iterative box
refinement and two-stage proposals, and with ``dn`` DINO's contrastive denoising queries in
training), its top-k ``PostProcess``, and ``build``, which returns ``(model, criterion,
postprocessors)`` from a ``DeformableDETRConfig``.

The official modules, parameter names, initialisation and numbers (official checkpoints load with
``strict=True``), with the shared ``models.criterion``, typed configs and fixes for edge cases; the
denoising option is not in the official code (DN-Deformable-DETR's idea, on the plain model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import BackboneConfig, build_backbone
from models.criterion import LossConfig, SetCriterion, build_criterion
from models.deformable_transformer import (
    DeformableTransformerConfig,
    build_deformable_transformer,
    inverse_sigmoid,
)
from models.denoising import DenoisingQueries, make_cdn_queries
from models.detr import MLP
from models.dino_criterion import build_dino_criterion
from models.matcher import MatcherConfig, build_matcher
from models.transformer import get_clones
from util import box_ops
from util.misc import NestedTensor, refuse_torchscript, to_nested_tensor


def build_input_proj(channels: list[int], hidden_dim: int, num_feature_levels: int) -> nn.ModuleList:
    """1x1 convolution + GroupNorm(32) per backbone stage, then a stride-2 3x3 one for each extra
    level (Deformable DETR and DINO); Xavier-initialised, zero bias."""
    if num_feature_levels > 1:
        input_proj_list = []
        for in_channels in channels:
            input_proj_list.append(
                nn.Sequential(nn.Conv2d(in_channels, hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim))
            )
        in_channels = channels[-1]
        for _ in range(num_feature_levels - len(channels)):
            input_proj_list.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(32, hidden_dim),
                )
            )
            in_channels = hidden_dim
        input_proj = nn.ModuleList(input_proj_list)
    else:
        input_proj = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(channels[0], hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim))]
        )
    for proj in input_proj:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.constant_(proj[0].bias, 0)
    return input_proj


def multiscale_features(
    backbone: nn.Module, input_proj: nn.ModuleList, samples: NestedTensor
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The projected feature levels ``[B, C, H_l, W_l]``, their padding masks ``[B, H_l, W_l]`` and
    position encodings: the backbone's stages, then ``len(input_proj)`` minus those levels made by
    the strided projections from the last stage."""
    features, pos = backbone(samples)
    pos = list(pos)
    srcs = []
    masks = []
    for lvl, feat in enumerate(features):
        src, mask = feat.decompose()
        srcs.append(input_proj[lvl](src))
        masks.append(mask)
    n_srcs = len(srcs)
    for lvl in range(n_srcs, len(input_proj)):
        src = input_proj[lvl](features[-1].tensors if lvl == n_srcs else srcs[-1])
        mask = F.interpolate(samples.mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
        pos_l = backbone[1](NestedTensor(src, mask)).to(src.dtype)
        srcs.append(src)
        masks.append(mask)
        pos.append(pos_l)
    return srcs, masks, pos


class DeformableDETR(nn.Module):
    """Backbone (``Joiner``) + ``DeformableTransformer`` + per-decoder-layer class and box heads.

    ``num_feature_levels=2`` works (backbone ``layer3-4``, ``models.deformable_config_from_args``;
    the official code fails: 3 backbone stages for 2 level embeddings). No TorchScript (neither
    officially): export with ``torch.export`` or to ONNX (``tools/export.py``)."""

    __prepare_scriptable__ = refuse_torchscript  # torch.jit.script: a clear error

    def __init__(
        self,
        backbone: nn.Module,
        transformer: nn.Module,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        two_stage: bool = False,
        dn: DenoisingSettings | None = None,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_feature_levels = num_feature_levels
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)
        self.input_proj = build_input_proj(list(backbone.feature_channels), hidden_dim, num_feature_levels)
        self.backbone = backbone
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage

        prior_prob = 0.01
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        with torch.no_grad():
            self.class_embed.bias.fill_(bias_value)
        nn.init.constant_(self.bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(self.bbox_embed.layers[-1].bias, 0)

        # Two-stage adds one prediction head for the encoder proposals.
        num_pred = transformer.decoder.num_layers + 1 if two_stage else transformer.decoder.num_layers
        if with_box_refine:
            self.class_embed = get_clones(self.class_embed, num_pred)
            self.bbox_embed = get_clones(self.bbox_embed, num_pred)
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias.data[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed  # the decoder refines with these
        else:
            nn.init.constant_(self.bbox_embed.layers[-1].bias.data[2:], -2.0)
            self.class_embed = nn.ModuleList([self.class_embed for _ in range(num_pred)])  # shared
            self.bbox_embed = nn.ModuleList([self.bbox_embed for _ in range(num_pred)])
            self.transformer.decoder.bbox_embed = None
        if two_stage:
            self.transformer.decoder.class_embed = self.class_embed  # scores the encoder proposals
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias.data[2:], 0.0)
        self.num_classes = num_classes
        self.denoising = dn  # DenoisingSettings, or None without --dn
        self.dn_generator: torch.Generator | None = None  # None: torch's default, saved in checkpoints
        if dn is not None:  # the denoising queries' content (their class) and position (their box)
            self.label_enc = nn.Embedding(num_classes + 1, hidden_dim)
            self.dn_query_pos = MLP(2 * hidden_dim, hidden_dim, hidden_dim, 2)

    def forward(
        self,
        samples: NestedTensor | Tensor | list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        dn: DenoisingQueries | None = None,
    ) -> dict:
        """``samples``: images ``[B, 3, H, W]`` with padding mask ``[B, H, W]`` (a ``NestedTensor``; a
        ``[B, 3, H, W]`` tensor or a list of ``[3, H, W]`` images is accepted too); ``targets``: with
        denoising settings (``--dn``), in training, the boxes the denoising queries are made from; ``dn``: given
        denoising queries instead.

        Returns ``pred_logits [B, Q, num_classes]`` (sigmoid logits), ``pred_boxes [B, Q, 4]``
        (normalised cxcywh), with ``aux_loss`` the ``aux_outputs`` of the earlier decoder layers,
        in two-stage ``enc_outputs`` (``pred_logits [B, S, num_classes]``, ``pred_boxes [B, S, 4]``),
        and with denoising queries ``dn_outputs`` (the same for the ``P`` of them, with ``num_groups``)."""
        srcs, masks, pos = multiscale_features(self.backbone, self.input_proj, to_nested_tensor(samples))

        settings = self.denoising
        if dn is None and settings is not None and self.training and targets is not None and settings.number > 0:
            dn = make_cdn_queries(
                targets, settings.number, settings.label_noise_ratio, settings.box_noise_scale, self.num_classes,
                self.num_queries, self.dn_generator,
            )  # fmt: skip
        dn_inputs = None
        if dn is not None:
            valid = dn.valid.unsqueeze(-1)
            boxes_unact = torch.where(valid, inverse_sigmoid(dn.boxes), 0.0)
            dn_inputs = (
                torch.where(valid, self.label_enc(dn.labels.clamp(min=0)), 0.0),
                self.dn_query_pos(self.transformer.get_proposal_pos_embed(boxes_unact)),
                boxes_unact.sigmoid(),
                dn.attn_mask,
            )
        query_embeds = None if self.two_stage else self.query_embed.weight
        hs, init_reference, inter_references, enc_outputs_class, enc_outputs_coord_unact = self.transformer(
            srcs, masks, pos, query_embeds, dn_inputs
        )
        if self.denoising is not None:  # the denoising weights in the graph without denoising (DDP)
            hs = hs + (self.label_enc.weight[0, 0] + self.dn_query_pos.layers[0].weight[0, 0]) * 0.0

        outputs_classes = []
        outputs_coords = []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
            outputs_class = self.class_embed[lvl](hs[lvl])
            tmp = self.bbox_embed[lvl](hs[lvl])
            if reference.shape[-1] == 4:
                tmp = tmp + reference
            else:
                tmp = torch.cat([tmp[..., :2] + reference, tmp[..., 2:]], -1)
            outputs_classes.append(outputs_class)
            outputs_coords.append(tmp.sigmoid())
        outputs_class = torch.stack(outputs_classes)
        outputs_coord = torch.stack(outputs_coords)

        out: dict = {}
        if dn is not None:
            p = dn.pad_size
            out["dn_outputs"] = {"pred_logits": outputs_class[-1, :, :p], "pred_boxes": outputs_coord[-1, :, :p]}
            if self.aux_loss:
                out["dn_outputs"]["aux_outputs"] = self._set_aux_loss(outputs_class[:, :, :p], outputs_coord[:, :, :p])
            out["dn_outputs"]["num_groups"] = dn.num_groups
            outputs_class, outputs_coord = outputs_class[:, :, p:], outputs_coord[:, :, p:]
        out.update({"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]})
        if self.aux_loss:
            out["aux_outputs"] = self._set_aux_loss(outputs_class, outputs_coord)
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_outputs_class, "pred_boxes": enc_outputs_coord_unact.sigmoid()}
        return out

    def _set_aux_loss(self, outputs_class: Tensor, outputs_coord: Tensor) -> list[dict[str, Tensor]]:
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]


class PostProcess(nn.Module):
    """COCO-API format: the top-100 (query, class) pairs by sigmoid score over the whole image,
    boxes in absolute xyxy pixels; ``min(100, Q * num_classes)`` with fewer candidates (the
    official top-100 fails there)."""

    def __init__(self, num_select: int = 100) -> None:
        super().__init__()
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """``target_sizes [B, 2]`` (h, w) -> per image ``scores [K]``, ``labels [K]``, ``boxes [K, 4]``
        with ``K = min(100, Q * num_classes)``, best first."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        if len(out_logits) != len(target_sizes) or target_sizes.shape[1] != 2:
            raise ValueError(f"target_sizes must be [batch={len(out_logits)}, 2], got {tuple(target_sizes.shape)}")
        prob = out_logits.sigmoid()
        k = min(self.num_select, prob[0].numel())
        topk_values, topk_indexes = torch.topk(prob.view(out_logits.shape[0], -1), k, dim=1)
        scores = topk_values
        topk_boxes = torch.div(topk_indexes, out_logits.shape[2], rounding_mode="floor")
        labels = topk_indexes % out_logits.shape[2]
        boxes = box_ops.box_cxcywh_to_xyxy(out_bbox)
        boxes = torch.gather(boxes, 1, topk_boxes.unsqueeze(-1).repeat(1, 1, 4))
        img_h, img_w = target_sizes.unbind(1)
        scale_fct = torch.stack([img_w, img_h, img_w, img_h], dim=1)
        boxes = boxes * scale_fct[:, None, :]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]


@dataclass
class DenoisingSettings:
    """DINO's contrastive denoising queries added to training (``--dn``): ``number`` (``--dn_number``;
    0: none), ``label_noise_ratio`` and ``box_noise_scale`` (DINO's defaults), ``models.denoising``."""

    number: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 0.4


@dataclass
class DeformableDETRConfig:
    """Everything ``build`` needs. ``num_classes`` is the number of sigmoid logits (max category
    id + 1; no no-object class; the official code guesses 20 or 91 from the data set's name).
    ``num_queries``, ``num_feature_levels`` and ``two_stage`` are the transformer's
    (``transformer.num_queries``, ...), set and validated there once, readable here."""

    num_classes: int = 91
    aux_loss: bool = True
    with_box_refine: bool = False
    masks: bool = False
    dn: DenoisingSettings | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    transformer: DeformableTransformerConfig = field(default_factory=DeformableTransformerConfig)
    matcher: MatcherConfig = field(default_factory=lambda: MatcherConfig(2, 5, 2))
    loss: LossConfig = field(default_factory=lambda: LossConfig(cls_loss_coef=2, focal_alpha=0.25))

    @property
    def num_queries(self) -> int:
        return self.transformer.num_queries

    @property
    def num_feature_levels(self) -> int:
        return self.transformer.num_feature_levels

    @property
    def two_stage(self) -> bool:
        return self.transformer.two_stage


def build(cfg: DeformableDETRConfig) -> tuple[nn.Module, SetCriterion, dict[str, nn.Module]]:
    """Returns ``(model, criterion, postprocessors)`` as the official ``build(args)``. The criterion
    is the shared ``SetCriterion`` with ``focal_alpha``; its ``_enc`` weights exist only with
    ``two_stage`` (officially always, unused without). The matcher's focal cost keeps the official
    alpha of 0.25 whatever the loss's ``focal_alpha`` (``models.matcher``). ``masks`` is refused, as
    the official segmentation variant is unfinished."""
    if cfg.masks:
        raise NotImplementedError(
            "--masks is not supported with --model deformable_detr (the official Deformable DETR has no "
            "working segmentation head either); use --model detr --masks for segmentation"
        )
    if cfg.num_classes < 1:
        raise ValueError(f"--num_classes must be >= 1, got {cfg.num_classes}")
    if cfg.loss.focal_alpha is None:
        raise ValueError("Deformable DETR's classification loss is the sigmoid focal loss: set LossConfig.focal_alpha")
    cfg.transformer.validate()  # before the backbone is built (and its weights downloaded)
    if cfg.transformer.hidden_dim % 32:
        raise ValueError(
            f"--hidden_dim ({cfg.transformer.hidden_dim}) must be divisible by 32 (GroupNorm(32) input projections)"
        )
    backbone = build_backbone(cfg.backbone)
    if len(backbone.feature_channels) > cfg.num_feature_levels:
        raise ValueError(
            f"--num_feature_levels {cfg.num_feature_levels} is fewer than the backbone's "
            f"{len(backbone.feature_channels)} returned stages {cfg.backbone.return_layers}"
        )
    transformer = build_deformable_transformer(cfg.transformer)
    model = DeformableDETR(
        backbone,
        transformer,
        num_classes=cfg.num_classes,
        num_queries=cfg.num_queries,
        num_feature_levels=cfg.num_feature_levels,
        aux_loss=cfg.aux_loss,
        with_box_refine=cfg.with_box_refine,
        two_stage=cfg.two_stage,
        dn=cfg.dn,
    )
    num_aux = cfg.transformer.dec_layers - 1 if cfg.aux_loss else 0
    matcher = build_matcher(cfg.matcher, focal=True)
    criterion = build_criterion(cfg.loss, cfg.num_classes, matcher, num_aux, two_stage=cfg.two_stage)
    if cfg.dn is not None:  # DINO's criterion (its _dn terms) with Deformable DETR's weights
        dn_criterion = build_dino_criterion(cfg.loss, cfg.num_classes, matcher, num_aux, cfg.dn.number > 0)
        dn_criterion.weight_dict = {
            **criterion.weight_dict,
            **{k: v for k, v in dn_criterion.weight_dict.items() if "_dn" in k},
        }
        criterion = dn_criterion
    return model, criterion, {"bbox": PostProcess()}
