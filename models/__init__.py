"""Model construction. ``build_model(args)`` is the official entry point and the one place where
command-line flags become the typed configs the builders take.

``args.model`` picks the detector through ``MODEL_BUILDERS`` (a plain dict). ``args.num_classes``
must be resolved before (``main.py`` does it from the flag, the checkpoint or the data set).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from torch import nn

from models.backbone import BackboneConfig
from models.criterion import LossConfig, SetCriterion
from models.deformable_detr import DeformableDETRConfig
from models.deformable_detr import build as build_deformable
from models.deformable_transformer import DeformableTransformerConfig
from models.detr import DETRConfig
from models.detr import build as build_detr
from models.matcher import MatcherConfig
from models.position_encoding import PositionEncodingConfig
from models.transformer import TransformerConfig

BuildResult = tuple[nn.Module, SetCriterion, dict[str, nn.Module]]

DETR_RETURN_LAYERS_MASKS = ("layer1", "layer2", "layer3", "layer4")


def _backbone_weights(args: argparse.Namespace) -> str | None:
    """ImageNet weights to start from; none when a checkpoint will overwrite every weight anyway
    (``--resume``, ``--frozen_weights``), so that evaluating a checkpoint needs no download."""
    weights = getattr(args, "backbone_weights", "torchvision")
    if weights in (None, "none", "") or getattr(args, "resume", "") or getattr(args, "frozen_weights", None):
        return None
    return weights


def backbone_config_from_args(
    args: argparse.Namespace, return_layers: tuple[str, ...], offset: float = 0.0
) -> BackboneConfig:
    return BackboneConfig(
        name=args.backbone,
        train_backbone=args.lr_backbone > 0,
        return_layers=return_layers,
        dilation=args.dilation,
        train_all_layers=getattr(args, "train_backbone_all", False),
        weights=_backbone_weights(args),
        per_image=getattr(args, "backbone_per_image", False),
        position=PositionEncodingConfig(
            kind=args.position_embedding,
            hidden_dim=args.hidden_dim,
            scale=getattr(args, "position_embedding_scale", 6.283185307179586),
            offset=offset,
        ),
    )


def detr_config_from_args(args: argparse.Namespace) -> DETRConfig:
    if getattr(args, "num_classes", None) is None:
        raise ValueError("args.num_classes is not set: pass --num_classes (max category id + 1)")
    return DETRConfig(
        num_classes=args.num_classes,
        num_queries=args.num_queries,
        aux_loss=args.aux_loss,
        masks=args.masks,
        freeze_detr=args.frozen_weights is not None,
        panoptic_is_thing_map=getattr(args, "panoptic_is_thing_map", None),
        backbone=backbone_config_from_args(args, DETR_RETURN_LAYERS_MASKS if args.masks else ("layer4",)),
        transformer=TransformerConfig(
            hidden_dim=args.hidden_dim,
            nheads=args.nheads,
            enc_layers=args.enc_layers,
            dec_layers=args.dec_layers,
            dim_feedforward=args.dim_feedforward,
            dropout=args.dropout,
            pre_norm=args.pre_norm,
        ),
        matcher=MatcherConfig(
            set_cost_class=args.set_cost_class, set_cost_bbox=args.set_cost_bbox, set_cost_giou=args.set_cost_giou
        ),
        loss=LossConfig(  # loss_ce weighs 1, as officially (--cls_loss_coef is Deformable DETR's)
            bbox_loss_coef=args.bbox_loss_coef,
            giou_loss_coef=args.giou_loss_coef,
            mask_loss_coef=args.mask_loss_coef,
            dice_loss_coef=args.dice_loss_coef,
            eos_coef=args.eos_coef,
        ),
    )


def _build_detr_from_args(args: argparse.Namespace) -> BuildResult:
    return build_detr(detr_config_from_args(args))


def deformable_config_from_args(args: argparse.Namespace) -> DeformableDETRConfig:
    """Deformable DETR's typed config from the official flags (``--attn_impl`` included)."""
    if getattr(args, "num_classes", None) is None:
        raise ValueError("args.num_classes is not set: pass --num_classes (max category id + 1)")
    levels = args.num_feature_levels
    return DeformableDETRConfig(
        num_classes=args.num_classes,
        aux_loss=args.aux_loss,
        with_box_refine=args.with_box_refine,
        masks=args.masks,
        # The last min(levels, 3) of layer2-4 (official for 1 and >= 3 levels; the official code
        # fails with 2 levels, which here use layer3-4).
        backbone=backbone_config_from_args(args, ("layer2", "layer3", "layer4")[-min(levels, 3) :], offset=-0.5),
        transformer=DeformableTransformerConfig(
            hidden_dim=args.hidden_dim,
            nheads=args.nheads,
            enc_layers=args.enc_layers,
            dec_layers=args.dec_layers,
            dim_feedforward=args.dim_feedforward,
            dropout=args.dropout,
            num_feature_levels=levels,
            dec_n_points=args.dec_n_points,
            enc_n_points=args.enc_n_points,
            two_stage=args.two_stage,
            num_queries=args.num_queries,
            attn_impl=getattr(args, "attn_impl", "auto"),
        ),
        matcher=MatcherConfig(
            set_cost_class=args.set_cost_class, set_cost_bbox=args.set_cost_bbox, set_cost_giou=args.set_cost_giou
        ),
        loss=LossConfig(
            cls_loss_coef=args.cls_loss_coef,
            bbox_loss_coef=args.bbox_loss_coef,
            giou_loss_coef=args.giou_loss_coef,
            focal_alpha=args.focal_alpha,
        ),
    )


def _build_deformable_from_args(args: argparse.Namespace) -> BuildResult:
    return build_deformable(deformable_config_from_args(args))


MODEL_BUILDERS: dict[str, Callable[[argparse.Namespace], BuildResult]] = {
    "detr": _build_detr_from_args,
    "deformable_detr": _build_deformable_from_args,
}


def build_model(args: argparse.Namespace) -> BuildResult:
    """Returns ``(model, criterion, postprocessors)`` for ``args.model`` (default ``detr``)."""
    name = getattr(args, "model", "detr")
    if name not in MODEL_BUILDERS:
        raise ValueError(f"--model: unknown '{name}', choose from {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](args)


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


def architecture_from_state_dict(state: dict) -> dict:
    """The command-line architecture flags that a model state dict determines by its keys and shapes.

    Lets ``main.py --eval --resume`` (and the tools) rebuild a checkpoint's model when the checkpoint
    stores no flags (bare state dicts, some official files). Returns only what the weights tell:
    ``model``, ``num_classes``, ``num_queries``, ``hidden_dim``, ``enc_layers``, ``dec_layers``,
    ``dim_feedforward``, ``pre_norm`` (DETR), ``masks``, ``position_embedding`` (learned or not),
    ``backbone`` (torchvision ResNets), ``train_backbone_all`` (learning BatchNorm), and for
    Deformable DETR ``num_feature_levels``, ``with_box_refine``, ``two_stage``. Not determined by
    shapes: ``nheads``, ``dilation``, the number of sampling points per head.
    """
    masks = any(k.startswith("detr.") for k in state)
    p = "detr." if masks else ""
    deformable = f"{p}transformer.level_embed" in state
    out: dict = {"model": "deformable_detr" if deformable else "detr", "masks": masks}
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
    if deformable:
        out["num_feature_levels"] = int(state[f"{p}transformer.level_embed"].shape[0])
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
