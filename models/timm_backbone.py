"""timm backbones (``--backbone timm:<name>``): ``TimmBackbone`` is ``timm.create_model(name,
features_only=True, out_indices=...)`` with the interface of ``models.backbone.BackboneBase``
(``num_channels``, ``feature_channels``, ``strides``, padded ``NestedTensor`` features), so DETR,
the mask head and Deformable DETR use it unchanged. timm is optional (``requirements-extra.txt``):
imported when such a backbone is built (``import_timm``), its absence one clear error.

Not in the official code, which only has torchvision ResNets; the official training semantics carry over.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.per_image import features_per_image
from util.misc import NestedTensor

TIMM_PREFIX = "timm:"
_STAGE_TO_INDEX = {"layer1": -4, "layer2": -3, "layer3": -2, "layer4": -1}


def import_timm() -> Any:
    """``timm``, or one clear error when it is not installed."""
    try:
        import timm
    except ImportError as e:
        raise ImportError("--backbone timm:<name> needs the 'timm' package: pip install timm") from e
    return timm


def timm_model_name(backbone: str) -> str:
    """``"timm:convnext_tiny"`` -> ``"convnext_tiny"``."""
    name = backbone[len(TIMM_PREFIX) :] if backbone.startswith(TIMM_PREFIX) else backbone
    if not name:
        raise ValueError(f"--backbone {backbone}: give a timm model name after 'timm:', e.g. timm:resnet50")
    return name


def _frozen_prefixes(model: nn.Module, boundary: str) -> list[str]:
    """Parameter-name prefixes of every module that runs before ``boundary`` (a dotted module
    path from timm's feature info, e.g. ``layer2`` or ``blocks.2``; ``FeatureListNet`` flattens
    ``stages.1`` into ``stages_1``). timm registers modules in forward order."""
    parts = boundary.split(".")
    if len(parts) > 1 and "_".join(parts) in dict(model.named_children()):
        parts = ["_".join(parts)]
    prefixes: list[str] = []
    module, prefix = model, ""
    for part in parts:
        names = [n for n, _ in module.named_children()]
        if part not in names:
            raise ValueError(f"timm backbone: cannot find stage '{boundary}' among modules {names}")
        prefixes += [f"{prefix}{n}." for n in names[: names.index(part)]]
        module, prefix = getattr(module, part), f"{prefix}{part}."
    return prefixes


def _checkpoint_backbone_state(path: Path) -> dict[str, torch.Tensor] | None:
    """The backbone body of a DETR-family checkpoint (``model`` with ``backbone.0.body.`` keys), or
    None when ``path`` holds something else (then it is given to timm as a model state dict)."""
    from util.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    if not isinstance(state.get("model"), dict):
        return None
    for prefix in ("backbone.0.body.", "detr.backbone.0.body."):
        body = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
        if body:
            return body
    raise ValueError(f"--backbone_weights {path}: a checkpoint without backbone.0.body.* weights")


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model returning ``{str(i): NestedTensor}`` for each requested stage.

    Attributes as ``BackboneBase``: ``num_channels`` (channels of the last returned level),
    ``feature_channels`` and ``strides`` (one entry per returned level); ``model_name`` and
    ``out_indices`` (negative, from the last level) say what was built.

    * ``return_layers``: the ResNet stage names the models ask for map to timm's last four feature
      levels: ``layer4`` the last (DETR), ``layer2-4`` the last three (Deformable DETR, which adds
      its extra strided level on top as officially), ``layer1-4`` the last four (mask head). With
      timm's ResNets these are exactly ``layer1-4``, with torchvision's parameter names, so
      ``timm:resnet50`` and ``resnet50`` checkpoints are interchangeable.
    * As officially, BatchNorm is frozen (timm's ``freeze_batch_norm_2d``, which also handles timm's
      fused BatchNorm + activation layers) and so are the stem and the first stride-4 stage;
      ``train_backbone=False`` (``--lr_backbone 0``) freezes everything; ``train_all_layers``
      (``--train_backbone_all``) trains every parameter with learning BatchNorm.
    * ``weights``: ``"timm"`` (or the flag's default ``"torchvision"``) loads timm's pretrained
      weights (a download from the Hugging Face hub), a path a local file (a timm state dict, or a
      DETR-family checkpoint whose backbone is taken), ``None`` nothing (random weights).
    * ``dilation`` (DC5) is timm's ``output_stride=16``.
    """

    def __init__(
        self,
        name: str,
        train_backbone: bool,
        return_layers: Sequence[str] = ("layer4",),
        dilation: bool = False,
        train_all_layers: bool = False,
        weights: str | None = None,
        per_image: bool = False,
    ) -> None:
        super().__init__()
        self.per_image = per_image  # models.per_image.features_per_image
        timm = import_timm()
        unknown = [s for s in return_layers if s not in _STAGE_TO_INDEX]
        if unknown:
            raise ValueError(f"return_layers: unknown stage(s) {unknown}, choose from {sorted(_STAGE_TO_INDEX)}")
        self.model_name = timm_model_name(name)
        self.out_indices = tuple(_STAGE_TO_INDEX[s] for s in return_layers)
        kwargs: dict[str, Any] = {"features_only": True, "out_indices": self.out_indices}
        if dilation:
            kwargs["output_stride"] = 16
        body_state = None
        if weights in ("timm", "torchvision"):  # the flag's default means "the usual pretrained weights"
            kwargs["pretrained"] = True
        elif weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"--backbone_weights: no such file {path}")
            body_state = _checkpoint_backbone_state(path)
            if body_state is None:
                kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        try:
            body = timm.create_model(self.model_name, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ValueError(f"--backbone {name}: timm has no model '{self.model_name}' ({e})") from e
            raise
        except OSError as e:  # no network, no such file on the hub (huggingface_hub's errors are OSErrors)
            raise RuntimeError(
                f"could not fetch timm weights for {self.model_name} ({type(e).__name__}: {e}). Offline? Pass "
                "--backbone_weights PATH to a local file, or --backbone_weights none --train_backbone_all."
            ) from e
        if not train_all_layers:
            body = timm.layers.freeze_batch_norm_2d(body)
        if body_state is not None:
            missing, unexpected = body.load_state_dict(body_state, strict=False)
            unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
            if missing or unexpected:
                raise RuntimeError(
                    f"--backbone_weights {weights}: does not fit timm {self.model_name}: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}"
                )
        info = body.feature_info
        if not train_backbone:
            body.requires_grad_(False)
        elif not train_all_layers:  # as officially: the stem and the first (stride-4) stage stay frozen
            boundary = next((f["module"] for f in info.info if f["reduction"] > 4), None)
            prefixes = _frozen_prefixes(body, boundary) if boundary is not None else []
            for pname, parameter in body.named_parameters():
                if pname.startswith(tuple(prefixes)):
                    parameter.requires_grad_(False)
        self.body = body
        self.feature_channels = list(info.channels())
        self.strides = list(info.reduction())
        self.num_channels = self.feature_channels[-1]

    def forward(self, tensor_list: NestedTensor) -> dict[str, NestedTensor]:
        """``tensors [B, 3, H, W]``, ``mask [B, H, W]`` -> per level ``[B, C_i, H/s_i, W/s_i]`` + mask."""
        m = tensor_list.mask
        if m is None:
            raise ValueError("Backbone needs a padding mask (use util.misc.nested_tensor_from_tensor_list)")
        if self.per_image:
            return features_per_image(lambda x: {str(i): f for i, f in enumerate(self.body(x))}, tensor_list.tensors, m)
        out: dict[str, NestedTensor] = OrderedDict()
        for i, x in enumerate(self.body(tensor_list.tensors)):
            mask = F.interpolate(m[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[str(i)] = NestedTensor(x, mask)
        return out
