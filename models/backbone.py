"""Backbones returning padded feature maps, joined with a position encoding.

``build_backbone(BackboneConfig)`` returns a ``Joiner`` of the backbone and the position
encoding; the backbone is a ``Backbone`` (a torchvision ResNet with ``FrozenBatchNorm2d``, the stem
and ``layer1`` frozen, optional DC5 dilation) or, for ``timm:<name>``, a ``models.timm_backbone``
one, chosen through ``BACKBONE_FAMILIES``.

Unlike the official backbone: explicit returned stages, optional learning BatchNorm, local or no
ImageNet weights, an opt-in per-image mode (``models.per_image``) and no TorchScript.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from models.per_image import features_per_image
from models.position_encoding import PositionEncodingConfig, build_position_encoding
from util.misc import NestedTensor, refuse_torchscript


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, not parameters).

    ``num_batches_tracked`` is dropped when loading, so torchvision checkpoints load as they are.
    """

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))
        self.eps = eps

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:  # type: ignore[no-untyped-def]
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """The layer as ``x * scale + shift``: ``(scale [C], shift [C])``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        scale, shift = self.scale_and_shift()
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


_STAGES = ("layer1", "layer2", "layer3", "layer4")
_RESNET_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "resnet152": (256, 512, 1024, 2048),
}


class BackboneBase(nn.Module):
    """Wraps a ResNet body; returns ``{str(i): NestedTensor}`` for each stage in ``return_layers``
    (named explicitly, so one class serves DETR: ``layer4``, or ``layer1-4`` for the mask head, and
    Deformable DETR: ``layer2-4``; officially a flag chose between two fixed sets).

    Trainable stages are ``layer2-4`` (all of them with ``train_all_layers``), none when
    ``train_backbone`` is False. Attributes: ``num_channels`` (channels of the last returned stage,
    as officially), ``feature_channels`` and ``strides`` (one entry per returned stage).
    """

    __prepare_scriptable__ = refuse_torchscript  # torch.jit.script: a clear error (officially scriptable)

    def __init__(
        self,
        backbone: nn.Module,
        train_backbone: bool,
        num_channels: int | Sequence[int],
        return_interm_layers: bool,
        return_layers: Sequence[str] | None = None,
        train_all_layers: bool = False,
        stage_channels: Sequence[int] = (256, 512, 1024, 2048),
        stage_strides: Sequence[int] = (4, 8, 16, 32),
        per_image: bool = False,
    ) -> None:
        super().__init__()
        self.per_image = per_image  # see features_per_image
        for name, parameter in backbone.named_parameters():
            trainable_stage = train_all_layers or any(s in name for s in ("layer2", "layer3", "layer4"))
            if not train_backbone or not trainable_stage:
                parameter.requires_grad_(False)
        if return_layers is None:
            return_layers = _STAGES if return_interm_layers else ("layer4",)
        unknown = [s for s in return_layers if s not in _STAGES]
        if unknown:
            raise ValueError(f"return_layers: unknown stage(s) {unknown}, choose from {_STAGES}")
        self.body = IntermediateLayerGetter(backbone, return_layers={s: str(i) for i, s in enumerate(return_layers)})
        self.feature_channels = [stage_channels[_STAGES.index(s)] for s in return_layers]
        self.strides = [stage_strides[_STAGES.index(s)] for s in return_layers]
        self.num_channels = num_channels if isinstance(num_channels, int) else list(num_channels)

    def forward(self, tensor_list: NestedTensor) -> dict[str, NestedTensor]:
        """``tensors [B, 3, H, W]``, ``mask [B, H, W]`` -> per stage ``[B, C_i, H/s_i, W/s_i]`` + mask."""
        m = tensor_list.mask
        if m is None:
            raise ValueError("Backbone needs a padding mask (use util.misc.nested_tensor_from_tensor_list)")
        if self.per_image:
            return features_per_image(self.body, tensor_list.tensors, m)
        xs = self.body(tensor_list.tensors)
        out: dict[str, NestedTensor] = OrderedDict()
        for name, x in xs.items():
            mask = F.interpolate(m[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[name] = NestedTensor(x, mask)
        return out


def _load_weights(model: nn.Module, name: str, weights: str) -> None:
    """Load ImageNet weights: ``"torchvision"`` downloads them (officially always; here a clear
    error when offline instead of urllib's traceback), anything else is a local file."""
    if weights == "torchvision":
        enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1  # the weights DETR was trained from
        try:
            state = enum.get_state_dict(progress=False, check_hash=True)
        except OSError as e:  # URLError is an OSError
            raise RuntimeError(
                f"could not download ImageNet weights for {name} from {enum.url} ({e}). Offline? Pass "
                "--backbone_weights PATH to a local .pth file, or --backbone_weights none --train_backbone_all "
                "to train the backbone from scratch."
            ) from e
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"--backbone_weights: no such file {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "model" in state:  # a DETR checkpoint: take its backbone body
            prefix = "backbone.0.body."
            state = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    unexpected = [k for k in unexpected if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(
            f"--backbone_weights {weights}: does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _torchvision_resnet(name: str, dilation: bool, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
    return getattr(torchvision.models, name)(
        weights=None, replace_stride_with_dilation=[False, False, dilation], norm_layer=norm_layer
    )


BACKBONES: dict[str, Callable[[str, bool, Callable[[int], nn.Module]], nn.Module]] = dict.fromkeys(
    _RESNET_CHANNELS, _torchvision_resnet
)


class Backbone(BackboneBase):
    """ResNet backbone with frozen BatchNorm (the official one), or with ordinary, learning
    ``BatchNorm2d`` in every stage (``train_all_layers``): the official recipe assumes ImageNet
    weights, which cannot be had offline, and from scratch a frozen stem and frozen normalisation
    cannot learn."""

    def __init__(
        self,
        name: str,
        train_backbone: bool,
        return_interm_layers: bool,
        dilation: bool,
        return_layers: Sequence[str] | None = None,
        train_all_layers: bool = False,
        weights: str | None = None,
        per_image: bool = False,
    ) -> None:
        check_backbone_name(name)
        if dilation and name in ("resnet18", "resnet34"):
            raise ValueError(f"--dilation needs a bottleneck ResNet (resnet50/101/152), not {name}")
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d if train_all_layers else FrozenBatchNorm2d
        body = BACKBONES[name](name, dilation, norm_layer)
        if weights is not None:
            _load_weights(body, name, weights)
        channels = _RESNET_CHANNELS[name]
        strides = (4, 8, 16, 16) if dilation else (4, 8, 16, 32)
        super().__init__(
            body,
            train_backbone,
            channels[-1],
            return_interm_layers,
            return_layers=return_layers,
            train_all_layers=train_all_layers,
            stage_channels=channels,
            stage_strides=strides,
            per_image=per_image,
        )


class Joiner(nn.Sequential):
    """``Sequential(backbone, position_encoding)``: features and their position encodings."""

    __prepare_scriptable__ = refuse_torchscript  # torch.jit.script: a clear error (officially scriptable)

    def __init__(self, backbone: BackboneBase, position_embedding: nn.Module) -> None:
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.feature_channels = backbone.feature_channels
        self.strides = backbone.strides

    def forward(self, tensor_list: NestedTensor) -> tuple[list[NestedTensor], list[Tensor]]:
        """Returns the features (low to high stride) and ``[B, hidden_dim, H_i, W_i]`` encodings."""
        xs = self[0](tensor_list)
        out: list[NestedTensor] = []
        pos: list[Tensor] = []
        for x in xs.values():
            out.append(x)
            pos.append(self[1](x).to(x.tensors.dtype))
        return out, pos


@dataclass
class BackboneConfig:
    """What ``build_backbone`` needs; ``main.py`` fills it from the command line."""

    name: str = "resnet50"
    train_backbone: bool = True  # False when --lr_backbone <= 0
    return_layers: tuple[str, ...] = ("layer4",)
    dilation: bool = False
    train_all_layers: bool = False
    weights: str | None = None  # "torchvision", "timm" (timm backbones), a path, or None (random init)
    position: PositionEncodingConfig = field(default_factory=PositionEncodingConfig)
    per_image: bool = False  # each image at its own size (models.per_image), not the padded batch as officially

    def __post_init__(self) -> None:
        if self.per_image and self.train_all_layers:
            raise ValueError(
                "--backbone_per_image needs the frozen BatchNorm backbone: with --train_backbone_all BatchNorm "
                "learns from the statistics of the batch, which one image at a time would change"
            )


def _build_torchvision(cfg: BackboneConfig) -> nn.Module:
    if cfg.weights == "timm":
        raise ValueError(f"--backbone_weights timm needs a timm backbone (--backbone timm:<name>), not {cfg.name}")
    return Backbone(
        cfg.name,
        cfg.train_backbone,
        return_interm_layers=len(cfg.return_layers) > 1,
        dilation=cfg.dilation,
        return_layers=cfg.return_layers,
        train_all_layers=cfg.train_all_layers,
        weights=cfg.weights,
        per_image=cfg.per_image,
    )


def _build_timm(cfg: BackboneConfig) -> nn.Module:
    from models.timm_backbone import TimmBackbone

    return TimmBackbone(
        cfg.name,
        cfg.train_backbone,
        return_layers=cfg.return_layers,
        dilation=cfg.dilation,
        train_all_layers=cfg.train_all_layers,
        weights=cfg.weights,
        per_image=cfg.per_image,
    )


# Backbone family (the part of --backbone before ":", "torchvision" without one) -> builder.
BACKBONE_FAMILIES: dict[str, Callable[[BackboneConfig], nn.Module]] = {
    "torchvision": _build_torchvision,
    "timm": _build_timm,
}


def backbone_family(name: str) -> str:
    """``"timm:convnext_tiny"`` -> ``"timm"``; ``"resnet50"`` -> ``"torchvision"``."""
    family = name.split(":", 1)[0] if ":" in name else "torchvision"
    if family not in BACKBONE_FAMILIES:
        raise ValueError(f"--backbone {name}: unknown family '{family}', choose from {sorted(BACKBONE_FAMILIES)}")
    return family


def check_backbone_name(name: str) -> None:
    """``ValueError`` for a ``--backbone`` of no known family, or no torchvision ResNet; builds
    nothing, so that ``main.py`` checks it before reading the data."""
    if backbone_family(name) == "torchvision" and name not in BACKBONES:
        raise ValueError(f"--backbone: unknown '{name}', choose from {sorted(BACKBONES)}")


def build_backbone(cfg: BackboneConfig) -> Joiner:
    backbone = BACKBONE_FAMILIES[backbone_family(cfg.name)](cfg)
    return Joiner(backbone, build_position_encoding(cfg.position))
