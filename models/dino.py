"""DINO (Zhang et al., 2023, "DETR with Improved DeNoising Anchor Boxes"): ``DINO`` (multi-scale
backbone features, ``DINOTransformer``, one class head and one box head shared by every decoder
layer (the encoder proposals have their own), contrastive denoising queries in training), ``build`` returning
``(model, criterion, postprocessors)`` from a ``DINOConfig``.

The official modules, parameter names and numbers of the DINO-4scale / 5scale configs (official
checkpoints load with ``strict=True``); the denoising queries come from a generator passed in and
can be given to ``forward`` (``models.denoising``); no registry, no config files.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.backbone import BackboneConfig, build_backbone
from models.criterion import LossConfig
from models.deformable_detr import PostProcess, build_input_proj, multiscale_features
from models.deformable_transformer import inverse_sigmoid
from models.denoising import DenoisingQueries, make_cdn_queries
from models.detr import MLP
from models.dino_criterion import DINOCriterion, build_dino_criterion
from models.dino_transformer import DINO_EPS, DINOTransformer, DINOTransformerConfig, build_dino_transformer
from models.matcher import MatcherConfig, build_matcher
from util.misc import NestedTensor, refuse_torchscript, to_nested_tensor


class DINO(nn.Module):
    """Backbone (``Joiner``) + ``DINOTransformer`` + the shared class and box heads.

    ``forward(samples, targets)`` in training adds the denoising queries of ``targets`` (or the
    ``dn`` given); their predictions are returned apart under ``dn_outputs``, so ``pred_logits`` /
    ``pred_boxes`` are always those of the ``num_queries`` matching queries. No TorchScript."""

    __prepare_scriptable__ = refuse_torchscript

    def __init__(
        self,
        backbone: nn.Module,
        transformer: DINOTransformer,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
        aux_loss: bool = True,
        dn_number: int = 100,
        dn_label_noise_ratio: float = 0.5,
        dn_box_noise_scale: float = 0.4,
        dn_labelbook_size: int | None = None,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.transformer = transformer
        self.num_classes = num_classes
        hidden_dim = transformer.d_model
        self.num_feature_levels = num_feature_levels
        self.label_enc = nn.Embedding((dn_labelbook_size or num_classes) + 1, hidden_dim)
        self.dn_number = dn_number
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_box_noise_scale = dn_box_noise_scale
        self.dn_generator: torch.Generator | None = None  # None: torch's default, saved in checkpoints
        self.input_proj = build_input_proj(list(backbone.feature_channels), hidden_dim, num_feature_levels)
        self.backbone = backbone
        self.aux_loss = aux_loss

        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        with torch.no_grad():
            class_embed.bias.fill_(-math.log((1 - 0.01) / 0.01))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        num_layers = transformer.num_decoder_layers
        self.bbox_embed = nn.ModuleList([bbox_embed for _ in range(num_layers)])  # shared by every layer
        self.class_embed = nn.ModuleList([class_embed for _ in range(num_layers)])
        transformer.decoder.bbox_embed = self.bbox_embed
        transformer.decoder.class_embed = self.class_embed
        transformer.enc_out_bbox_embed = copy.deepcopy(bbox_embed)  # the proposals' own heads, as officially
        transformer.enc_out_class_embed = copy.deepcopy(class_embed)

    def forward(
        self,
        samples: NestedTensor | Tensor | list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        dn: DenoisingQueries | None = None,
    ) -> dict:
        """``samples``: images ``[B, 3, H, W]`` with padding mask ``[B, H, W]`` (or a tensor, or a list
        of ``[3, H, W]``); ``targets``: in training, the boxes the denoising queries are made from;
        ``dn``: given denoising queries instead (a recorded set).

        Returns ``pred_logits [B, Q, K]`` (sigmoid logits), ``pred_boxes [B, Q, 4]``, ``aux_outputs``
        (earlier layers), ``interm_outputs`` (the selected encoder proposals) and with denoising
        ``dn_outputs`` (the same for the ``P`` denoising queries, with ``num_groups``)."""
        samples = to_nested_tensor(samples)
        srcs, masks, poss = multiscale_features(self.backbone, self.input_proj, samples)
        if dn is None and self.training and targets is not None and self.dn_number > 0:
            dn = make_cdn_queries(
                targets, self.dn_number, self.dn_label_noise_ratio, self.dn_box_noise_scale, self.num_classes,
                self.num_queries, self.dn_generator,
            )  # fmt: skip
        dn_tgt = dn_ref = attn_mask = None
        if dn is not None:
            valid = dn.valid.unsqueeze(-1)
            dn_tgt = torch.where(valid, self.label_enc(dn.labels.clamp(min=0)), 0.0)
            dn_ref = torch.where(valid, inverse_sigmoid(dn.boxes, DINO_EPS), 0.0)
            attn_mask = dn.attn_mask
        hs, reference, hs_enc, ref_enc, _ = self.transformer(srcs, masks, poss, dn_tgt, dn_ref, attn_mask)
        hs = hs + self.label_enc.weight[0, 0] * 0.0  # label_enc in the graph without denoising (DDP)

        coords = []
        for layer_ref, layer_bbox_embed, layer_hs in zip(reference[:-1], self.bbox_embed, hs):
            coords.append((layer_bbox_embed(layer_hs) + inverse_sigmoid(layer_ref, DINO_EPS)).sigmoid())
        outputs_coord = torch.stack(coords)
        outputs_class = torch.stack([embed(layer_hs) for embed, layer_hs in zip(self.class_embed, hs)])

        out: dict = {}
        if dn is not None:
            p = dn.pad_size
            out["dn_outputs"] = self._heads(outputs_class[:, :, :p], outputs_coord[:, :, :p])
            out["dn_outputs"]["num_groups"] = dn.num_groups
            outputs_class, outputs_coord = outputs_class[:, :, p:], outputs_coord[:, :, p:]
        out.update(self._heads(outputs_class, outputs_coord))
        out["interm_outputs"] = {"pred_logits": self.transformer.enc_out_class_embed(hs_enc), "pred_boxes": ref_enc}
        return out

    def _heads(self, outputs_class: Tensor, outputs_coord: Tensor) -> dict:
        out: dict = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
        return out


@dataclass
class DINOConfig:
    """Everything ``build`` needs. ``num_classes``: sigmoid logits (max category id + 1);
    ``dn_labelbook_size``: rows of the denoising label embedding minus one (official 91 for COCO;
    None: ``num_classes``); ``num_select``: detections kept per image by the post-processing."""

    num_classes: int = 91
    aux_loss: bool = True
    dn_number: int = 100
    dn_label_noise_ratio: float = 0.5
    dn_box_noise_scale: float = 0.4
    dn_labelbook_size: int | None = None
    num_select: int = 300
    interm_loss_coef: float = 1.0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    transformer: DINOTransformerConfig = field(default_factory=DINOTransformerConfig)
    matcher: MatcherConfig = field(default_factory=lambda: MatcherConfig(2, 5, 2))
    loss: LossConfig = field(default_factory=lambda: LossConfig(cls_loss_coef=1, focal_alpha=0.25))

    def validate(self) -> None:
        """``ValueError`` naming the flag."""
        if self.num_classes < 1:
            raise ValueError(f"--num_classes must be >= 1, got {self.num_classes}")
        if self.dn_number < 0:
            raise ValueError(f"--dn_number must be >= 0, got {self.dn_number}")
        for name in ("dn_label_noise_ratio", "dn_box_noise_scale"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
        if self.dn_labelbook_size is not None and self.dn_labelbook_size < self.num_classes:
            raise ValueError(
                f"--dn_labelbook_size ({self.dn_labelbook_size}) must be >= --num_classes ({self.num_classes})"
            )
        if self.transformer.num_feature_levels < 2:
            raise ValueError("DINO needs --num_feature_levels >= 2 (its two-stage query selection is multi-scale)")
        if self.transformer.hidden_dim % 32:
            raise ValueError(f"--hidden_dim ({self.transformer.hidden_dim}) must be divisible by 32 (GroupNorm(32))")
        self.transformer.validate()


def build(cfg: DINOConfig) -> tuple[nn.Module, DINOCriterion, dict[str, nn.Module]]:
    """Returns ``(model, criterion, postprocessors)`` as the official ``build_dino(args)``."""
    cfg.validate()
    backbone = build_backbone(cfg.backbone)
    if len(backbone.feature_channels) > cfg.transformer.num_feature_levels:
        raise ValueError(
            f"--num_feature_levels {cfg.transformer.num_feature_levels} is fewer than the backbone's "
            f"{len(backbone.feature_channels)} returned stages {cfg.backbone.return_layers}"
        )
    model = DINO(
        backbone,
        build_dino_transformer(cfg.transformer),
        num_classes=cfg.num_classes,
        num_queries=cfg.transformer.num_queries,
        num_feature_levels=cfg.transformer.num_feature_levels,
        aux_loss=cfg.aux_loss,
        dn_number=cfg.dn_number,
        dn_label_noise_ratio=cfg.dn_label_noise_ratio,
        dn_box_noise_scale=cfg.dn_box_noise_scale,
        dn_labelbook_size=cfg.dn_labelbook_size,
    )
    num_aux = cfg.transformer.dec_layers - 1 if cfg.aux_loss else 0
    criterion = build_dino_criterion(
        cfg.loss, cfg.num_classes, build_matcher(cfg.matcher, focal=True), num_aux, cfg.dn_number > 0,
        cfg.interm_loss_coef,
    )  # fmt: skip
    return model, criterion, {"bbox": PostProcess(cfg.num_select)}
