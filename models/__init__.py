"""Model construction: ``build_model(args)`` returns ``(model, criterion, postprocessors)``.

``args`` is ``main.get_args_parser()``'s namespace (the official call) or a ``util.config.ModelConfig``;
``MODEL_BUILDERS`` (a plain dict) maps ``--model`` to the builder, and ``detr_config`` /
``deformable_config`` map the settings to each builder's typed arguments. ``num_classes`` must be
set (``main.py`` takes it from the flag, the checkpoint or the data set).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from torch import nn

from models.backbone import BackboneConfig
from models.criterion import LossConfig, SetCriterion
from models.deformable_detr import DeformableDETR, DeformableDETRConfig, DenoisingSettings
from models.deformable_detr import build as build_deformable
from models.deformable_transformer import DeformableTransformerConfig
from models.detr import DETRConfig
from models.detr import build as build_detr
from models.dino import DINO, DINOConfig
from models.dino import build as build_dino
from models.dino_transformer import DINOTransformerConfig
from models.matcher import MatcherConfig
from models.position_encoding import PositionEncodingConfig
from models.transformer import TransformerConfig
from util.config import ModelConfig

BuildResult = tuple[nn.Module, SetCriterion, dict[str, nn.Module]]

DETR_RETURN_LAYERS_MASKS = ("layer1", "layer2", "layer3", "layer4")


def backbone_config(
    cfg: ModelConfig, return_layers: tuple[str, ...], offset: float = 0.0, temperature: int = 10000
) -> BackboneConfig:
    """The backbone's arguments. No ImageNet weights when a checkpoint will replace them all."""
    weights = cfg.backbone_weights if cfg.load_backbone_weights and cfg.backbone_weights != "none" else None
    return BackboneConfig(
        name=cfg.backbone,
        train_backbone=cfg.train_backbone,
        return_layers=return_layers,
        dilation=cfg.dilation,
        train_all_layers=cfg.train_backbone_all,
        weights=weights or None,
        per_image=cfg.backbone_per_image,
        position=PositionEncodingConfig(
            kind=cfg.position_embedding,
            hidden_dim=cfg.hidden_dim,
            scale=cfg.position_embedding_scale,
            offset=offset,
            temperature=temperature,
        ),
    )


def _matcher_config(cfg: ModelConfig) -> MatcherConfig:
    return MatcherConfig(
        set_cost_class=cfg.set_cost_class, set_cost_bbox=cfg.set_cost_bbox, set_cost_giou=cfg.set_cost_giou
    )


def _check_num_classes(cfg: ModelConfig) -> int:
    if cfg.num_classes is None:
        raise ValueError("num_classes is not set: pass --num_classes (max category id + 1)")
    return cfg.num_classes


def detr_config(cfg: ModelConfig) -> DETRConfig:
    """DETR's (and panoptic DETR's) arguments."""
    return DETRConfig(
        num_classes=_check_num_classes(cfg),
        num_queries=cfg.num_queries,
        aux_loss=cfg.aux_loss,
        masks=cfg.masks,
        freeze_detr=cfg.frozen_weights is not None,
        panoptic_is_thing_map=cfg.panoptic_is_thing_map,
        backbone=backbone_config(cfg, DETR_RETURN_LAYERS_MASKS if cfg.masks else ("layer4",)),
        transformer=TransformerConfig(
            hidden_dim=cfg.hidden_dim,
            nheads=cfg.nheads,
            enc_layers=cfg.enc_layers,
            dec_layers=cfg.dec_layers,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
            pre_norm=cfg.pre_norm,
        ),
        matcher=_matcher_config(cfg),
        loss=LossConfig(  # loss_ce weighs 1, as officially (--cls_loss_coef is Deformable DETR's)
            bbox_loss_coef=cfg.bbox_loss_coef,
            giou_loss_coef=cfg.giou_loss_coef,
            mask_loss_coef=cfg.mask_loss_coef,
            dice_loss_coef=cfg.dice_loss_coef,
            eos_coef=cfg.eos_coef,
        ),
    )


def _deformable_transformer_settings(cfg: ModelConfig) -> dict:
    """The settings Deformable DETR's and DINO's transformer configs share."""
    names = ("hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward", "dropout", "num_feature_levels",
             "dec_n_points", "enc_n_points", "num_queries", "attn_impl")  # fmt: skip
    return {name: getattr(cfg, name) for name in names}


def _focal_loss_config(cfg: ModelConfig) -> LossConfig:
    return LossConfig(
        cls_loss_coef=cfg.cls_loss_coef,
        bbox_loss_coef=cfg.bbox_loss_coef,
        giou_loss_coef=cfg.giou_loss_coef,
        focal_alpha=cfg.focal_alpha,
    )


def deformable_config(cfg: ModelConfig) -> DeformableDETRConfig:
    """Deformable DETR's arguments."""
    levels = cfg.num_feature_levels
    return DeformableDETRConfig(
        num_classes=_check_num_classes(cfg),
        aux_loss=cfg.aux_loss,
        with_box_refine=cfg.with_box_refine,
        masks=cfg.masks,
        dn=DenoisingSettings(cfg.dn_number, cfg.dn_label_noise_ratio, cfg.dn_box_noise_scale) if cfg.dn else None,
        # The last min(levels, 3) of layer2-4 (official for 1 and >= 3 levels; the official code
        # fails with 2 levels, which here use layer3-4).
        backbone=backbone_config(cfg, ("layer2", "layer3", "layer4")[-min(levels, 3) :], offset=-0.5),
        transformer=DeformableTransformerConfig(**_deformable_transformer_settings(cfg), two_stage=cfg.two_stage),
        matcher=_matcher_config(cfg),
        loss=_focal_loss_config(cfg),
    )


def dino_config(cfg: ModelConfig) -> DINOConfig:
    """DINO's arguments: the backbone's layer2-4 (4 scales) or layer1-4 (5 scales, as the official
    DINO-5scale), the sine position encoding with temperature 20, as officially."""
    levels = cfg.num_feature_levels
    stages = (
        ("layer1", "layer2", "layer3", "layer4") if levels >= 5 else ("layer2", "layer3", "layer4")[-min(levels, 3) :]
    )
    return DINOConfig(
        num_classes=_check_num_classes(cfg),
        aux_loss=cfg.aux_loss,
        dn_number=cfg.dn_number,
        dn_label_noise_ratio=cfg.dn_label_noise_ratio,
        dn_box_noise_scale=cfg.dn_box_noise_scale,
        num_select=cfg.num_select,
        backbone=backbone_config(cfg, stages, temperature=20),
        transformer=DINOTransformerConfig(**_deformable_transformer_settings(cfg)),
        matcher=_matcher_config(cfg),
        loss=_focal_loss_config(cfg),
    )


MODEL_BUILDERS: dict[str, Callable[[ModelConfig], BuildResult]] = {
    "detr": lambda cfg: build_detr(detr_config(cfg)),
    "deformable_detr": lambda cfg: build_deformable(deformable_config(cfg)),
    "dino": lambda cfg: build_dino(dino_config(cfg)),
}


def takes_targets(model: nn.Module) -> bool:
    """Whether ``model`` (or the one DDP wraps) takes the targets in training: DINO and Deformable
    DETR with ``--dn``, for their denoising queries."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return isinstance(model, DINO) or (isinstance(model, DeformableDETR) and model.denoising is not None)


def build_model(args: argparse.Namespace | ModelConfig) -> BuildResult:
    """``(model, criterion, postprocessors)`` for ``args.model``. ``args``: the namespace of
    ``main.get_args_parser()`` (``--model`` presets filled where ``None``) or a ``ModelConfig``."""
    cfg = args if isinstance(args, ModelConfig) else ModelConfig.from_args(args)
    return MODEL_BUILDERS[cfg.model](cfg)


def num_classes_from_state_dict(state: dict) -> int | None:
    """The ``num_classes`` a checkpoint was trained with, read off its class head (DETR, panoptic
    DETR or Deformable DETR); None when the state dict has no class head."""
    for prefix in ("", "detr."):
        if f"{prefix}class_embed.bias" in state:  # DETR: softmax with a no-object logit
            return int(state[f"{prefix}class_embed.bias"].numel()) - 1
        if f"{prefix}class_embed.0.bias" in state:  # Deformable DETR: sigmoid logits
            return int(state[f"{prefix}class_embed.0.bias"].numel())
    return None


_RESNET_LAYER3_BLOCKS = {("basic", 2): "resnet18", ("basic", 6): "resnet34", ("bottleneck", 6): "resnet50",
                         ("bottleneck", 23): "resnet101", ("bottleneck", 36): "resnet152"}  # fmt: skip


def _count_indices(state: dict, prefix: str) -> int:
    """Number of ``prefix{i}.`` sub-modules in ``state`` (e.g. encoder layers)."""
    found = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
    return len([i for i in found if i.isdigit()])


def architecture_from_state_dict(state: dict, nheads: int | None = None) -> dict:
    """The architecture settings that a model state dict determines by its keys and shapes.

    The one reading of architecture off weights: ``models.loading.checkpoint_settings`` (``main.py
    --resume`` / ``--eval``, the tools, ``hubconf``) and the Hugging Face converter use it. Returns
    only what the weights tell: ``model``, ``num_classes``, ``num_queries``, ``hidden_dim``,
    ``enc_layers``, ``dec_layers``, ``dim_feedforward``, ``pre_norm`` (DETR), ``masks``,
    ``position_embedding`` (learned or not), ``backbone`` (torchvision ResNets), ``train_backbone_all``
    (learning BatchNorm), and for Deformable DETR ``num_feature_levels``, ``with_box_refine``,
    ``two_stage``, ``dn`` (when its denoising label embedding is there) (DINO, told by its content
    queries: ``num_feature_levels``, ``num_queries``) and, given ``nheads`` (which shapes do not tell), ``enc_n_points`` / ``dec_n_points``.
    Not determined by shapes: ``nheads``, ``dilation``.
    """
    masks = any(k.startswith("detr.") for k in state)
    p = "detr." if masks else ""
    deformable = f"{p}transformer.level_embed" in state
    dino = f"{p}transformer.tgt_embed.weight" in state  # DINO's content queries
    out: dict = {"model": "dino" if dino else "deformable_detr" if deformable else "detr", "masks": masks}
    if deformable and not dino and f"{p}label_enc.weight" in state:
        out["dn"] = True  # Deformable DETR trained with --dn
    num_classes = num_classes_from_state_dict(state)
    if num_classes is not None:
        out["num_classes"] = num_classes
    out["enc_layers"] = _count_indices(state, f"{p}transformer.encoder.layers.")
    out["dec_layers"] = _count_indices(state, f"{p}transformer.decoder.layers.")
    ffn = state.get(f"{p}transformer.encoder.layers.0.linear1.weight")
    if ffn is None:
        ffn = state.get(f"{p}transformer.decoder.layers.0.linear1.weight")
    if ffn is not None:
        out["dim_feedforward"], out["hidden_dim"] = int(ffn.shape[0]), int(ffn.shape[1])
    elif f"{p}input_proj.weight" in state:  # DETR without transformer layers
        out["hidden_dim"] = int(state[f"{p}input_proj.weight"].shape[0])
    if deformable:
        out["num_feature_levels"], out["hidden_dim"] = map(int, state[f"{p}transformer.level_embed"].shape)
        if nheads:  # sampling_offsets: [heads * levels * points * 2, hidden_dim]
            for flag, key in (
                ("enc_n_points", "encoder.layers.0.self_attn"),
                ("dec_n_points", "decoder.layers.0.cross_attn"),
            ):
                offsets = state.get(f"{p}transformer.{key}.sampling_offsets.weight")
                if offsets is not None:
                    out[flag] = int(offsets.shape[0]) // (nheads * out["num_feature_levels"] * 2)
    if dino:
        out["num_queries"] = int(state[f"{p}transformer.tgt_embed.weight"].shape[0])
    elif deformable:
        out["two_stage"] = f"{p}transformer.enc_output.weight" in state
        out["with_box_refine"] = f"{p}transformer.decoder.bbox_embed.0.layers.0.weight" in state
        query = state.get(f"{p}query_embed.weight")
        if query is not None:
            out["num_queries"] = int(query.shape[0])
    else:
        query = state.get(f"{p}query_embed.weight")
        if query is not None:
            out["num_queries"] = int(query.shape[0])
        out["pre_norm"] = f"{p}transformer.encoder.norm.weight" in state
    out["position_embedding"] = "learned" if f"{p}backbone.1.row_embed.weight" in state else "sine"
    body = f"{p}backbone.0.body."
    block = "bottleneck" if f"{body}layer1.0.conv3.weight" in state else "basic"
    backbone = _RESNET_LAYER3_BLOCKS.get((block, _count_indices(state, f"{body}layer3.")))
    if backbone is not None:
        out["backbone"] = backbone
        out["train_backbone_all"] = f"{body}bn1.num_batches_tracked" in state
    return {k: v for k, v in out.items() if not (k.endswith("_layers") and v == 0)}
