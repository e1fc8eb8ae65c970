"""Conversion between Hugging Face transformers checkpoints and this project's checkpoints.

Not in the official code. Both directions, for ``DetrForObjectDetection``, ``DetrForSegmentation``
and ``DeformableDetrForObjectDetection`` (multi-scale, single-scale, DC5, box refinement,
two-stage):

* ``checkpoint_from_hf(folder)``: a transformers folder (``config.json`` + ``model.safetensors``
  or ``pytorch_model.bin``, sharded or not) -> this project's checkpoint
  ``{"model": state_dict, "args": {main.py flag: value}, "id2label": {id: name}}``; ``args`` holds
  every architecture flag (``ARCH_FLAGS``), so ``main.py --resume`` rebuilds the model.
  ``config.json`` may come from transformers 4.x (``use_timm_backbone``, ``backbone``) or 5.x
  (``backbone_config``); parameter names may be those transformers writes (4.x and 5.x alike) or
  5.x's in-memory ones (``o_proj``, ``mlp.fc1``, ...). Backbones: timm ResNets (the hub's
  checkpoints), transformers' own ``ResNetBackbone``, and other timm models (``timm:<name>``).
* ``checkpoint_to_hf(checkpoint, folder)``: this project's or an official checkpoint -> a folder
  that ``from_pretrained`` of transformers 5 loads with no missing or unexpected key
  (``config.json``, ``model.safetensors`` or ``pytorch_model.bin`` without the ``safetensors``
  package, and ``preprocessor_config.json``). The backbone is written timm-style (as the hub's
  checkpoints) or, with ``backbone_format="transformers"``, as transformers' ``ResNetBackbone``
  (no timm needed to load it). Architecture flags are read off the weights where they can be
  (layers, sizes, levels, refinement, two-stage, masks) and checked against the checkpoint's args.
  Class ids are kept (``id2label`` covers ``0..num_classes-1``, ids without a name, such as the gaps
  of COCO's 1-based ids, named "N/A"); loss fields get the types transformers 5 validates;
  ``preprocessor_config.json`` resizes as the checkpoint's ``--val_size`` / ``--max_size``.

Attention ``in_proj`` weights are split into / joined from ``q_proj``, ``k_proj``, ``v_proj``;
parameters shared in this project's models (Deformable DETR's heads) may appear once or several
times in transformers' files. Everything is checked: a config whose sizes do not fit the weights
names the file, the parameters and the config fields; nothing partial is written (temporary file
or folder, then rename). What transformers cannot express is refused with the reason: pre-norm
DETR, two-stage Deformable DETR without box refinement, a one-layer Deformable DETR decoder
(transformers 5 cannot load it), mask heads whose GroupNorm grouping differs,
timm backbones with fused BatchNorm + activation layers (EfficientNet, MobileNet, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models import build_model
from util.checkpoint import (
    CheckpointError,
    key_list,
    load_checkpoint,
    load_model_state,
    model_state_from_checkpoint,
    save_checkpoint,
)
from util.config import ModelConfig

HF_ARCHITECTURES = ("DetrForObjectDetection", "DetrForSegmentation", "DeformableDetrForObjectDetection")
BACKBONE_FORMATS = ("timm", "transformers")
# The settings a converted checkpoint's "args" holds: the architecture (util.config) and the dropout.
ARCH_FLAGS = (*ModelConfig().architecture(), "dropout")
# torchvision ResNet -> (depths, transformers layer_type, stage widths); timm's ResNets of these names are
# the same networks with the same parameter names.
TORCHVISION_RESNETS = {
    "resnet18": ((2, 2, 2, 2), "basic", (64, 128, 256, 512)),
    "resnet34": ((3, 4, 6, 3), "basic", (64, 128, 256, 512)),
    "resnet50": ((3, 4, 6, 3), "bottleneck", (256, 512, 1024, 2048)),
    "resnet101": ((3, 4, 23, 3), "bottleneck", (256, 512, 1024, 2048)),
    "resnet152": ((3, 8, 36, 3), "bottleneck", (256, 512, 1024, 2048)),
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# Our training flags <-> transformers' config fields (carried over when present).
_LOSS_FIELDS = {
    "set_cost_class": "class_cost", "set_cost_bbox": "bbox_cost", "set_cost_giou": "giou_cost",
    "bbox_loss_coef": "bbox_loss_coefficient", "giou_loss_coef": "giou_loss_coefficient",
    "mask_loss_coef": "mask_loss_coefficient", "dice_loss_coef": "dice_loss_coefficient",
    "eos_coef": "eos_coefficient", "focal_alpha": "focal_alpha",
}  # fmt: skip
# The loss and matcher fields that transformers 5's configs annotate as int (the others are float).
_LOSS_FIELD_TYPES = {
    "class_cost": int, "bbox_cost": int, "giou_cost": int, "mask_loss_coefficient": int,
    "dice_loss_coefficient": int, "bbox_loss_coefficient": int, "giou_loss_coefficient": int,
}  # fmt: skip


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file and the field or key."""


# ----------------------------------------------------------------------------------------------
# Parameter names: this project's (the official ones) -> transformers' (as save_pretrained writes them)


@dataclass(frozen=True)
class _Rule:
    """``ours`` prefix -> ``hf`` prefix; ``#`` stands for a layer index, copied across."""

    ours: str
    hf: str

    def to_hf(self, key: str) -> str | None:
        m = _prefix_regex(self.ours).match(key)
        if m is None:
            return None
        out = self.hf
        for index in m.groups():
            out = out.replace("#", index, 1)
        return out + key[m.end() :]


@cache
def _prefix_regex(template: str) -> re.Pattern[str]:
    return re.compile(r"(\d+)".join(re.escape(part) for part in template.split("#")))


def _layer_rules(ours: str, hf: str, names: Mapping[str, str]) -> list[_Rule]:
    return [_Rule(f"{ours}.#.{a}.", f"{hf}.#.{b}.") for a, b in names.items()]


_DETR_ENCODER = {"self_attn": "self_attn", "linear1": "fc1", "linear2": "fc2", "norm1": "self_attn_layer_norm",
                 "norm2": "final_layer_norm"}  # fmt: skip
_DETR_DECODER = {"self_attn": "self_attn", "multihead_attn": "encoder_attn", "linear1": "fc1", "linear2": "fc2",
                 "norm1": "self_attn_layer_norm", "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm"}  # fmt: skip
_DEFORMABLE_DECODER = {"self_attn": "self_attn", "cross_attn": "encoder_attn", "linear1": "fc1", "linear2": "fc2",
                       "norm1": "encoder_attn_layer_norm", "norm2": "self_attn_layer_norm", "norm3": "final_layer_norm"}  # fmt: skip
_BACKBONE = ("backbone.0.body.", "model.backbone.conv_encoder.model.")


def _rules(arch: Mapping[str, Any]) -> list[_Rule]:
    common = [
        _Rule(*_BACKBONE),
        _Rule("backbone.1.row_embed.", "model.position_embedding.row_embeddings."),
        _Rule("backbone.1.col_embed.", "model.position_embedding.column_embeddings."),
        _Rule("query_embed.", "model.query_position_embeddings."),
        *_layer_rules("transformer.encoder.layers", "model.encoder.layers", _DETR_ENCODER),
    ]
    if arch["model"] == "deformable_detr":
        return [
            *common,
            _Rule("input_proj.", "model.input_proj."),
            *[_Rule(f"transformer.{n}", f"model.{n}") for n in ("level_embed", "reference_points.", "enc_output.",
                                                                 "enc_output_norm.", "pos_trans.", "pos_trans_norm.")],
            *_layer_rules("transformer.decoder.layers", "model.decoder.layers", _DEFORMABLE_DECODER),
            _Rule("transformer.decoder.bbox_embed.", "model.decoder.bbox_embed."),
            _Rule("transformer.decoder.class_embed.", "model.decoder.class_embed."),
            _Rule("class_embed.", "class_embed."),
            _Rule("bbox_embed.", "bbox_embed."),
        ]  # fmt: skip
    rules = [
        *common,
        _Rule("input_proj.", "model.input_projection."),
        *_layer_rules("transformer.decoder.layers", "model.decoder.layers", _DETR_DECODER),
        _Rule("transformer.decoder.norm.", "model.decoder.layernorm."),
        _Rule("class_embed.", "class_labels_classifier."),
        _Rule("bbox_embed.", "bbox_predictor."),
    ]
    if not arch["masks"]:
        return rules
    detr = [_Rule("detr." + r.ours, "detr." + r.hf) for r in rules]
    return [*detr, _Rule("bbox_attention.", "bbox_attention."), _Rule("mask_head.", "mask_head.")]


# torchvision ResNet names -> transformers' ResNetBackbone names (inside the backbone prefix).
_RESNET_TO_HF: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"conv1\.", lambda m: "embedder.embedder.convolution."),
    (r"bn1\.", lambda m: "embedder.embedder.normalization."),
    (r"layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution."),
    (r"layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization."),
    (r"layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution."),
    (r"layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization."),
]  # fmt: skip

# Other spellings of transformers' names (5.x in memory, 4.x learned position embedding) -> the written ones.
_HF_ALIASES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"^((?:detr\.)?model\.backbone\.)model\.", r"\1conv_encoder.model."),
    (r"^((?:detr\.)?model\.)backbone\.position_embedding\.", r"\1position_embedding."),
    (r"\.o_proj\.", ".out_proj."),
    (r"(\.layers\.\d+\.)mlp\.(fc[12]\.)", r"\1\2"),
    (r"^bbox_attention\.([qk])_proj\.", r"bbox_attention.\1_linear."),
    (r"^mask_head\.conv([12])\.conv\.", r"mask_head.lay\1."),
    (r"^mask_head\.conv([12])\.norm\.", r"mask_head.gn\1."),
    (r"^mask_head\.fpn_stages\.(\d)\.fpn_adapter\.", lambda m: f"mask_head.adapter{int(m[1]) + 1}."),
    (r"^mask_head\.fpn_stages\.(\d)\.refine\.conv\.", lambda m: f"mask_head.lay{int(m[1]) + 3}."),
    (r"^mask_head\.fpn_stages\.(\d)\.refine\.norm\.", lambda m: f"mask_head.gn{int(m[1]) + 3}."),
    (r"^mask_head\.output_conv\.", "mask_head.out_lay."),
]


def normalize_hf_key(key: str) -> str:
    """A transformers parameter name in any spelling -> the spelling ``save_pretrained`` writes."""
    for pattern, repl in _HF_ALIASES:
        key = re.sub(pattern, repl, key)
    return key


def _to_hf_key(key: str, rules: list[_Rule], backbone_format: str) -> str:
    for rule in rules:
        hf = rule.to_hf(key)
        if hf is None:
            continue
        inner = hf.split(_BACKBONE[1], 1)
        if backbone_format == "transformers" and len(inner) == 2:
            for pattern, repl in _RESNET_TO_HF:
                m = re.match(pattern, inner[1])
                if m:
                    return inner[0] + _BACKBONE[1] + repl(m) + inner[1][m.end() :]
            raise ConversionError(f"backbone parameter {key} has no transformers ResNet equivalent")
        return hf
    raise ConversionError(f"parameter {key} has no transformers equivalent")


def _hf_sources(hf_key: str) -> list[str]:
    """The transformers parameters one of ours is made of (attention in_proj = q, k, v)."""
    for kind in ("weight", "bias"):
        if hf_key.endswith(f".in_proj_{kind}"):
            base = hf_key[: -len(f"in_proj_{kind}")]
            return [f"{base}{p}_proj.{kind}" for p in "qkv"]
    return [hf_key]


# ----------------------------------------------------------------------------------------------
# Architecture flags <-> transformers config


def _field_error(source: str, field: str, message: str) -> ConversionError:
    return ConversionError(f"{source}: field '{field}': {message}")


def _backbone_from_hf(config: Mapping[str, Any], source: str) -> tuple[str, bool, str]:
    """``(--backbone, --dilation, backbone format)`` from a transformers config (4.x or 5.x)."""
    dilation = bool(config.get("dilation", False))
    backbone_config = config.get("backbone_config")
    if isinstance(backbone_config, Mapping):
        kind = backbone_config.get("model_type")
        if kind == "timm_backbone":
            name = backbone_config.get("backbone")
            if not name:
                raise _field_error(source, "backbone_config.backbone", "no timm model name")
            dilation = dilation or backbone_config.get("output_stride") == 16
            return _timm_name_to_ours(name, dilation), dilation, "timm"
        if kind == "resnet":
            if dilation:
                raise _field_error(source, "dilation", "transformers' ResNetBackbone has no dilated (DC5) variant")
            return _resnet_from_hf_config(backbone_config, source), False, "transformers"
        raise _field_error(source, "backbone_config.model_type", f"'{kind}' is not supported (timm_backbone, resnet)")
    if config.get("use_timm_backbone", True):
        return _timm_name_to_ours(config.get("backbone") or "resnet50", dilation), dilation, "timm"
    name = str(config.get("backbone") or "")
    m = re.fullmatch(r"(?:microsoft/)?resnet-(18|34|50|101|152)", name)
    if m is None:
        raise _field_error(source, "backbone", f"'{name}' is not a backbone this converter knows (microsoft/resnet-N)")
    return f"resnet{m[1]}", False, "transformers"


def _timm_name_to_ours(name: str, dilation: bool) -> str:
    """timm's ResNets are torchvision's (same layers and names); other models stay ``timm:<name>``,
    and so do ResNet-18/34 with dilation, which only timm builds."""
    base = name.split(".")[0]
    if base in TORCHVISION_RESNETS and not (dilation and TORCHVISION_RESNETS[base][1] == "basic"):
        return base
    return f"timm:{name}"


def _resnet_from_hf_config(config: Mapping[str, Any], source: str) -> str:
    depths = tuple(config.get("depths", (3, 4, 6, 3)))
    layer_type = config.get("layer_type", "bottleneck")
    widths = tuple(config.get("hidden_sizes", (256, 512, 1024, 2048)))
    names = [n for n, spec in TORCHVISION_RESNETS.items() if spec == (depths, layer_type, widths)]
    if not names:
        raise _field_error(source, "backbone_config", f"ResNet depths={list(depths)}, layer_type={layer_type}, "
                           f"hidden_sizes={list(widths)} is not a torchvision ResNet-18/34/50/101/152")  # fmt: skip
    for field, expected in (("embedding_size", 64), ("downsample_in_bottleneck", False),
                            ("downsample_in_first_stage", False), ("hidden_act", "relu")):  # fmt: skip
        if config.get(field, expected) != expected:
            raise _field_error(source, f"backbone_config.{field}", f"{config[field]!r} (torchvision has {expected!r})")
    return names[0]


def _same(config: Mapping[str, Any], source: str, a: str, b: str, default: Any) -> Any:
    va, vb = config.get(a, default), config.get(b, default)
    if va != vb:
        raise _field_error(source, b, f"{vb} differs from {a}={va}; this project uses one value for both")
    return va


def args_from_hf_config(
    config: Mapping[str, Any], source: str = "config.json"
) -> tuple[dict[str, Any], dict[int, str]]:
    """main.py architecture flags and ``id2label`` from a transformers ``config.json`` (as a dict)."""
    architectures = config.get("architectures") or []
    arch_name = architectures[0] if architectures else None
    if arch_name not in HF_ARCHITECTURES:
        raise _field_error(source, "architectures", f"{architectures} is not supported; choose from {HF_ARCHITECTURES}")
    deformable = arch_name == "DeformableDetrForObjectDetection"
    if config.get("num_channels", 3) != 3:
        raise _field_error(source, "num_channels", f"{config['num_channels']} (only RGB input is supported)")
    if config.get("activation_function", "relu") != "relu":
        raise _field_error(source, "activation_function", f"'{config['activation_function']}' (only relu)")
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    num_classes = int(config.get("num_labels", len(id2label) or 91))
    if id2label and len(id2label) != num_classes:
        raise _field_error(source, "id2label", f"{len(id2label)} labels but num_labels={num_classes}")
    backbone, dilation, _ = _backbone_from_hf(config, source)
    position = config.get("position_embedding_type", "sine")
    if position not in ("sine", "learned"):
        raise _field_error(source, "position_embedding_type", f"'{position}' (sine or learned)")
    args = {
        "model": "deformable_detr" if deformable else "detr",
        "backbone": backbone,
        "dilation": dilation,
        "position_embedding": position,
        "hidden_dim": int(config.get("d_model", 256)),
        "nheads": int(_same(config, source, "encoder_attention_heads", "decoder_attention_heads", 8)),
        "enc_layers": int(config.get("encoder_layers", 6)),
        "dec_layers": int(config.get("decoder_layers", 6)),
        "dim_feedforward": int(
            _same(config, source, "encoder_ffn_dim", "decoder_ffn_dim", 1024 if deformable else 2048)
        ),
        "dropout": float(config.get("dropout", 0.1)),
        "num_queries": int(config.get("num_queries", 300 if deformable else 100)),
        "num_classes": num_classes,
        "masks": arch_name == "DetrForSegmentation",
        "pre_norm": False,
        "num_feature_levels": int(config.get("num_feature_levels", 4)) if deformable else 4,
        "dec_n_points": int(config.get("decoder_n_points", 4)),
        "enc_n_points": int(config.get("encoder_n_points", 4)),
        "with_box_refine": bool(config.get("with_box_refine", False)) if deformable else False,
        "two_stage": bool(config.get("two_stage", False)) if deformable else False,
    }
    if args["two_stage"]:  # the decoder's queries are the top proposals (num_queries is unused there)
        args["num_queries"] = int(config.get("two_stage_num_proposals", 300))
    # Loss and matcher fields are not carried over: transformers' defaults differ from the official
    # recipes (Deformable DETR's class cost is 1 there, 2 officially), and main.py has its own.
    return args, id2label or {i: f"LABEL_{i}" for i in range(num_classes)}


def _backbone_config_to_hf(arch: Mapping[str, Any], backbone_format: str, source: str) -> dict[str, Any]:
    """transformers 5's ``backbone_config`` for our backbone and returned stages."""
    if arch["model"] == "deformable_detr":
        levels = min(arch["num_feature_levels"], 3)
    else:
        levels = 4  # transformers' DETR takes layer1-4 and uses the last (and the others for masks)
    name = arch["backbone"]
    if backbone_format == "transformers":
        if name not in TORCHVISION_RESNETS:
            raise ConversionError(f"{source}: --backbone {name}: backbone_format 'transformers' needs a ResNet")
        if arch["dilation"]:
            raise ConversionError(f"{source}: --dilation: transformers' ResNetBackbone has no DC5 variant; "
                                  "use backbone_format 'timm'")  # fmt: skip
        depths, layer_type, widths = TORCHVISION_RESNETS[name]
        return {
            "model_type": "resnet", "num_channels": 3, "embedding_size": 64, "hidden_sizes": list(widths),
            "depths": list(depths), "layer_type": layer_type, "hidden_act": "relu", "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False, "out_features": [f"stage{i}" for i in range(5 - levels, 5)],
        }  # fmt: skip
    timm_name = name[len("timm:") :] if name.startswith("timm:") else name
    # timm's ResNets have 5 feature levels (stem, layer1-4): positive indices, as transformers writes them.
    resnet = timm_name.split(".")[0] in TORCHVISION_RESNETS
    out_indices = list(range(5 - levels, 5)) if resnet else list(range(-levels, 0))
    config = {"model_type": "timm_backbone", "backbone": timm_name, "num_channels": 3, "features_only": True,
              "use_pretrained_backbone": False, "out_indices": out_indices}  # fmt: skip
    if arch["dilation"]:
        config["output_stride"] = 16
    return config


def hf_config_from_args(
    arch: Mapping[str, Any], id2label: Mapping[int, str] | None = None, backbone_format: str = "timm",
    source: str = "checkpoint",
) -> dict[str, Any]:  # fmt: skip
    """A transformers 5 ``config.json`` (as a dict) for architecture flags ``arch`` (``ARCH_FLAGS``,
    plus the loss flags of ``_LOSS_FIELDS`` when present)."""
    if backbone_format not in BACKBONE_FORMATS:
        raise ValueError(f"backbone_format: '{backbone_format}', choose from {BACKBONE_FORMATS}")
    deformable = arch["model"] == "deformable_detr"
    if arch["pre_norm"]:
        raise ConversionError(f"{source}: --pre_norm: transformers' DETR has no pre-norm variant")
    if deformable and arch["two_stage"] and not arch["with_box_refine"]:
        raise ConversionError(f"{source}: --two_stage without --with_box_refine: transformers' "
                              "DeformableDetrConfig requires box refinement for two-stage")  # fmt: skip
    if deformable and arch["dec_layers"] < 2 and not arch["two_stage"]:
        raise ConversionError(f"{source}: --dec_layers {arch['dec_layers']}: transformers 5's "
                              "DeformableDetrForObjectDetection cannot load a one-layer decoder (it ties the "
                              "prediction heads of layer 0 to the others'); train with two layers or more")  # fmt: skip
    if arch["masks"]:
        hidden, heads = arch["hidden_dim"], arch["nheads"]
        widths = [hidden + heads, hidden // 2, hidden // 4, hidden // 8, hidden // 16]
        if (hidden + heads) % 8 or any(min(8, w) != math.gcd(8, w) for w in widths):
            raise ConversionError(f"{source}: --hidden_dim {hidden} --nheads {heads}: transformers' mask head groups "
                                  f"its GroupNorms differently for these widths {widths}")  # fmt: skip
    id2label = hf_id2label(id2label, arch["num_classes"], source)
    if deformable:
        architecture = "DeformableDetrForObjectDetection"
    else:
        architecture = "DetrForSegmentation" if arch["masks"] else "DetrForObjectDetection"
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": "deformable_detr" if deformable else "detr",
        "id2label": {str(i): id2label[i] for i in sorted(id2label)},
        "label2id": {name: i for i, name in sorted(id2label.items())},
        "num_channels": 3,
        "backbone_config": _backbone_config_to_hf(arch, backbone_format, source),
        "dilation": bool(arch["dilation"]),
        "position_embedding_type": "learned" if arch["position_embedding"] in ("learned", "v3") else "sine",
        "d_model": arch["hidden_dim"],
        "encoder_layers": arch["enc_layers"],
        "decoder_layers": arch["dec_layers"],
        "encoder_attention_heads": arch["nheads"],
        "decoder_attention_heads": arch["nheads"],
        "encoder_ffn_dim": arch["dim_feedforward"],
        "decoder_ffn_dim": arch["dim_feedforward"],
        "num_queries": arch["num_queries"],
        "dropout": arch["dropout"],
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "activation_function": "relu",
        "auxiliary_loss": False,
        "is_encoder_decoder": True,
    }
    if deformable:
        config.update({
            "num_feature_levels": arch["num_feature_levels"], "encoder_n_points": arch["enc_n_points"],
            "decoder_n_points": arch["dec_n_points"], "with_box_refine": arch["with_box_refine"],
            "two_stage": arch["two_stage"], "two_stage_num_proposals": arch["num_queries"],
        })  # fmt: skip
    for ours, theirs in _LOSS_FIELDS.items():
        value = arch.get(ours)
        if value is None or (theirs == "focal_alpha" and not deformable):
            continue
        kind = _LOSS_FIELD_TYPES.get(theirs, float)  # transformers 5 validates the annotated type
        if kind is int and float(value) != int(value):
            continue  # not expressible there; matching and loss weights only matter for training
        config[theirs] = kind(value)
    return config


def hf_id2label(id2label: Mapping[Any, str] | None, num_classes: int, source: str = "checkpoint") -> dict[int, str]:
    """Class names for transformers: every id in ``0..num_classes-1``, ours kept as they are (COCO
    ids are 1-based and have gaps), the others named "N/A" as the hub's COCO models name them."""
    names: dict[int, str] = {}
    for key, name in (id2label or {}).items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            raise ConversionError(f"{source}: id2label has the id {key!r}, not an integer") from None
        if not 0 <= i < num_classes:
            raise ConversionError(f"{source}: id2label has the id {i} ({name!r}) outside 0..{num_classes - 1} "
                                  f"(num_classes={num_classes})")  # fmt: skip
        names[i] = str(name)
    if not names:
        return {i: f"LABEL_{i}" for i in range(num_classes)}
    return {i: names.get(i, "N/A") for i in range(num_classes)}


def _preprocessor_config(arch: Mapping[str, Any], saved: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The image processor of the hub's DETR-family checkpoints (transformers' defaults), resizing as
    the checkpoint's ``--val_size`` / ``--max_size`` (``saved`` args) do, 800 / 1333 without them."""
    name = "DeformableDetrImageProcessor" if arch["model"] == "deformable_detr" else "DetrImageProcessor"
    saved = saved or {}
    size = {"shortest_edge": int(saved.get("val_size") or 800), "longest_edge": int(saved.get("max_size") or 1333)}
    return {
        "image_processor_type": name, "format": "coco_panoptic" if arch["masks"] else "coco_detection",
        "do_resize": True, "size": size, "resample": 2, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": _IMAGENET_MEAN, "image_std": _IMAGENET_STD,
        "do_convert_annotations": True, "do_pad": True,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Building our model from flags; reading flags off our weights


def build_model_from_args(arch: Mapping[str, Any]) -> nn.Module:
    """This project's model for the architecture settings of ``arch`` (``ARCH_FLAGS``; random
    weights, nothing downloaded); the others take their ``--model`` preset (the loss settings
    ``arch`` may carry do not shape the model)."""
    names = set(ARCH_FLAGS) - {"model"}
    values = {k: v for k, v in arch.items() if k in names and v is not None}
    cfg = ModelConfig.preset(arch["model"], **values, load_backbone_weights=False, train_backbone=False)
    return build_model(cfg)[0]


def _check_batchnorm_act(model: nn.Module, arch: Mapping[str, Any], source: str) -> None:
    """transformers swaps every ``BatchNorm2d`` of the backbone, timm's fused BatchNorm + activation
    layers included, for a plain frozen BatchNorm: the activation is lost, the numbers would differ."""
    fused = sorted({type(m).__name__ for m in model.modules() if "BatchNormAct" in type(m).__name__})
    if fused:
        raise ConversionError(f"{source}: --backbone {arch['backbone']} has {fused} layers, which transformers "
                              "replaces with BatchNorm without the activation: its model would compute differently")  # fmt: skip


def _saved_args(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    saved = ckpt.get("args") or {}
    return vars(saved) if isinstance(saved, argparse.Namespace) else dict(saved)


def arch_from_checkpoint(ckpt: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Every architecture setting (``ARCH_FLAGS``) of a checkpoint, this project's or an official
    one: what ``models.loading.checkpoint_settings`` reads off its weights and settings, the
    ``--model`` preset for the rest, and the loss settings it stores (``_LOSS_FIELDS``)."""
    from models.loading import checkpoint_settings

    try:
        settings, _ = checkpoint_settings(dict(ckpt), source)
    except CheckpointError as e:
        raise ConversionError(str(e)) from e
    if settings["masks"] and settings["model"] == "deformable_detr":
        raise ConversionError(f"{source}: a Deformable DETR with a mask head is not supported")
    preset = ModelConfig.preset(settings["model"])
    arch = {flag: getattr(preset, flag) if settings.get(flag) is None else settings[flag] for flag in ARCH_FLAGS}
    saved = _saved_args(ckpt)
    arch.update({flag: saved[flag] for flag in _LOSS_FIELDS if saved.get(flag) is not None})
    return arch


# ----------------------------------------------------------------------------------------------
# Reading and writing files


def _shard_in_folder(index: Path, name: Any) -> Path:
    """The path of a shard an index names: a file name or a relative path below the index's folder,
    never ``..`` or an absolute path, which could read any file. (Links are followed: the hub's cache
    links every file of a snapshot folder to its blobs folder.)"""
    folder = index.parent
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ConversionError(f"{index}: field 'weight_map' names the shard {name!r}, not a file inside {folder}")
    if name.endswith(".index.json"):  # an index naming an index (itself, say) would never end
        raise ConversionError(f"{index}: field 'weight_map' names the shard {name!r}, an index, not weights")
    return folder / name


def read_hf_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """``model.safetensors`` / ``pytorch_model.bin`` (or their ``.index.json`` for sharded weights)."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConversionError(f"{path} could not be read as JSON ({e})") from e
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{path}: field 'weight_map' is missing or empty")
        shards = sorted({_shard_in_folder(path, name) for name in weight_map.values()})
        return {k: v for shard in shards for k, v in read_hf_weights(shard).items()}
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise ImportError(f"reading {path} needs the 'safetensors' package: pip install safetensors") from e
            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise
    except Exception as e:
        raise ConversionError(f"{path} could not be read ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a flat state dict of tensors")
    return state


def read_hf_folder(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor], Path]:
    """``(config, weights, weights file)`` of a transformers checkpoint folder."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{folder}: no config.json (not a transformers checkpoint folder)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{config_path} is not JSON ({e})") from e
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return config, read_hf_weights(folder / name), folder / name
    raise ConversionError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")


def _config_fields_for(key: str) -> str:
    """The config fields that decide a parameter's presence or shape (for error messages)."""
    hints = [
        ("class", "id2label/num_labels, d_model"), ("query_position", "num_queries, d_model"),
        ("level_embed", "num_feature_levels, d_model"), ("sampling_offsets", "encoder/decoder_n_points, "
         "num_feature_levels, encoder/decoder_attention_heads"), ("attention_weights", "encoder/decoder_n_points, "
         "num_feature_levels, encoder/decoder_attention_heads"), ("input_proj", "d_model, backbone_config, "
         "num_feature_levels"), ("conv_encoder", "backbone_config/backbone"), ("fc1", "encoder/decoder_ffn_dim"),
        ("fc2", "encoder/decoder_ffn_dim"), ("encoder.layers", "encoder_layers, d_model"),
        ("decoder.layers", "decoder_layers, d_model"), ("embed", "with_box_refine, two_stage, decoder_layers"),
        ("enc_output", "two_stage"), ("pos_trans", "two_stage"), ("mask_head", "architectures, d_model"),
    ]  # fmt: skip
    return next((fields for part, fields in hints if part in key), "d_model")


def state_from_hf(
    hf_state: Mapping[str, Tensor], arch: Mapping[str, Any], backbone_format: str, source: str,
    config_source: str = "config.json",
) -> dict[str, Tensor]:  # fmt: skip
    """Our state dict for the model ``arch`` describes, from transformers' parameters. Every one of
    our parameters must be found with its shape and every transformers parameter used; otherwise a
    ``ConversionError`` lists the keys and the config fields that decide them."""
    hf_state = {normalize_hf_key(k): v for k, v in hf_state.items() if not k.endswith("num_batches_tracked")}
    model = build_model_from_args(arch)
    _check_batchnorm_act(model, arch, config_source)
    own = model.state_dict()
    rules = _rules(arch)
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}  # parameters shared in our model
    for key, value in own.items():
        groups.setdefault((value.data_ptr(), tuple(value.shape)), []).append(key)
    state: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    for keys in groups.values():
        value = None
        for key in keys:
            sources = _hf_sources(_to_hf_key(key, rules, backbone_format))
            if all(s in hf_state for s in sources):
                used.update(sources)
                if value is None:
                    value = torch.cat([hf_state[s] for s in sources]) if len(sources) > 1 else hf_state[sources[0]]
        if value is None:
            missing.append(" + ".join(_hf_sources(_to_hf_key(keys[0], rules, backbone_format))))
            continue
        expected = tuple(own[keys[0]].shape)
        if tuple(value.shape) != expected:
            hf_name = _to_hf_key(keys[0], rules, backbone_format)
            mismatched.append(
                f"{hf_name} {list(value.shape)} (config: {list(expected)}; {_config_fields_for(hf_name)})"
            )
            continue
        for key in keys:
            state[key] = value.to(own[key].dtype)
    unexpected = [k for k in hf_state if k not in used]
    if missing or mismatched or unexpected:
        parts = [f"{source} does not fit {config_source}"]
        if mismatched:
            parts.append(f"shape mismatches: {key_list(mismatched, 6, '; ')}")
        if missing:
            parts.append(f"missing in the weights: {key_list(missing, 6, '; ')} "
                         f"(config fields: {_config_fields_for(missing[0])})")  # fmt: skip
        if unexpected:
            parts.append(f"not in the model {config_source} describes: {key_list(unexpected, 6, '; ')} "
                         f"(config fields: {_config_fields_for(unexpected[0])})")  # fmt: skip
        raise ConversionError("; ".join(parts))
    return state


def checkpoint_from_hf(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """This project's checkpoint ``{"model", "args", "id2label"}`` from a transformers folder."""
    config, hf_state, weights_path = read_hf_folder(folder)
    config_path = Path(folder) / "config.json"
    args, id2label = args_from_hf_config(config, str(config_path))
    _, _, backbone_format = _backbone_from_hf(config, str(config_path))
    state = state_from_hf(hf_state, args, backbone_format, str(weights_path), str(config_path))
    return {"model": state, "args": args, "id2label": id2label}


def convert_from_hf(folder: str | os.PathLike[str], output: str | os.PathLike[str]) -> dict[str, Any]:
    """``checkpoint_from_hf`` written atomically to ``output``; returns the checkpoint."""
    ckpt = checkpoint_from_hf(folder)
    save_checkpoint(ckpt, output)
    return ckpt


def state_to_hf(
    state: Mapping[str, Tensor], arch: Mapping[str, Any], backbone_format: str = "timm"
) -> dict[str, Tensor]:
    """transformers' parameters (as ``save_pretrained`` names them) from our state dict."""
    rules = _rules(arch)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        sources = _hf_sources(_to_hf_key(key, rules, backbone_format))
        for name, part in zip(sources, value.chunk(len(sources)) if len(sources) > 1 else [value]):
            out[name] = part.detach().clone().contiguous()
    return out


def _write_hf_weights(state: Mapping[str, Tensor], folder: Path) -> str:
    try:
        from safetensors.torch import save_file
    except ImportError:  # transformers reads either
        torch.save(dict(state), folder / "pytorch_model.bin")
        return "pytorch_model.bin"
    save_file(dict(state), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return "model.safetensors"


def _replace_folder(tmp: Path, output: Path) -> None:
    """Move the complete ``tmp`` folder to ``output``; an existing ``output`` is replaced only
    after the new one is in place under its name's sibling, so there is never a partial one."""
    if output.exists() and not output.is_dir():
        raise ConversionError(f"{output} exists and is not a folder")
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
        old.rmdir()
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_to_hf(
    checkpoint: Mapping[str, Any] | str | os.PathLike[str], output: str | os.PathLike[str],
    backbone_format: str = "timm", id2label: Mapping[int, str] | None = None, source: str | None = None,
) -> Path:  # fmt: skip
    """Write a transformers folder for ``checkpoint`` (a loaded checkpoint or its path) to
    ``output``: ``config.json``, the weights and ``preprocessor_config.json``, all at once.
    ``id2label`` replaces the checkpoint's class names; ``source`` names a loaded one in errors."""
    source = source or ("checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint))
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    arch = arch_from_checkpoint(ckpt, source)
    state = model_state_from_checkpoint(dict(ckpt), source)
    labels = id2label or ckpt.get("id2label")
    config = hf_config_from_args(arch, labels, backbone_format, source)
    try:  # the flags must rebuild a model the weights fit
        model = build_model_from_args(arch)
        # BatchNorm's step counters: present with --train_backbone_all, never needed for inference
        counters = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
        own = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        load_model_state(model, {**counters, **own}, source)
    except CheckpointError as e:
        raise ConversionError(str(e)) from e
    _check_batchnorm_act(model, arch, source)
    hf_state = state_to_hf(state, arch, backbone_format)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        _write_hf_weights(hf_state, tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "preprocessor_config.json").write_text(
            json.dumps(_preprocessor_config(arch, _saved_args(ckpt)), indent=2) + "\n"
        )
        _replace_folder(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
