"""torch.hub entry points: ``torch.hub.load("<repo or local clone>", "detr_resnet50", pretrained=True)``.

The official DETR entry points, names, signatures and download URLs (``check_hash=True``).
Differences: with ``pretrained=False`` nothing is downloaded (the official code still fetched the
ImageNet backbone), so ``source="local"`` works offline; offline with ``pretrained=True`` raises
one clear error; ``pretrained=True`` with another ``num_classes`` keeps every pretrained weight but
the class head, for fine-tuning.
"""

from __future__ import annotations

from torch import nn

from models.backbone import BackboneConfig
from models.detr import DETR, PostProcess
from models.detr import DETRConfig as _DETRConfig
from models.detr import build as _build_detr
from models.position_encoding import PositionEncodingConfig
from models.transformer import TransformerConfig
from util.checkpoint import load_checkpoint, load_model_state, model_state_from_checkpoint

dependencies = ["torch", "torchvision", "scipy"]

PRETRAINED = _URLS = {
    "detr_resnet50": "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
    "detr_resnet50_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth",
    "detr_resnet101": "https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth",
    "detr_resnet101_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r101-dc5-a2e86def.pth",
    "detr_resnet50_panoptic": "https://dl.fbaipublicfiles.com/detr/detr-r50-panoptic-00ce5173.pth",
    "detr_resnet50_dc5_panoptic": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-panoptic-da08f1b1.pth",
    "detr_resnet101_panoptic": "https://dl.fbaipublicfiles.com/detr/detr-r101-panoptic-40021d53.pth",
}


def pretrained_checkpoint(name: str) -> dict:
    """The checkpoint behind the hub entry ``name`` (``main.py --finetune detr_resnet50``):
    downloaded once into the torch hub cache, hash-checked, clear error when offline."""
    if name not in PRETRAINED:
        raise KeyError(f"no pretrained weights for hub entry '{name}'; known: {sorted(PRETRAINED)}")
    return load_checkpoint(PRETRAINED[name])


def _make_detr(backbone_name: str, dilation: bool = False, num_classes: int = 91, mask: bool = False) -> nn.Module:
    """The published configuration: hidden 256, 6+6 layers, 100 queries, no auxiliary outputs."""
    cfg = _DETRConfig(
        num_classes=num_classes,
        num_queries=100,
        aux_loss=False,
        masks=mask,
        backbone=BackboneConfig(
            name=backbone_name,
            return_layers=("layer1", "layer2", "layer3", "layer4") if mask else ("layer4",),
            dilation=dilation,
            weights=None,
            position=PositionEncodingConfig(kind="sine", hidden_dim=256),
        ),
        transformer=TransformerConfig(hidden_dim=256),
    )
    model, _, _ = _build_detr(cfg)
    return model


def _load_pretrained(model: nn.Module, url: str, num_classes: int, default_classes: int) -> None:
    state = model_state_from_checkpoint(load_checkpoint(url), url)
    if num_classes != default_classes:  # fine-tuning: keep all but the class head
        head = "detr.class_embed." if any(k.startswith("detr.") for k in state) else "class_embed."
        own = model.state_dict()
        state = {k: (own[k] if k.startswith(head) else v) for k, v in state.items()}
        print(f"pretrained weights loaded without the {num_classes}-class head ({default_classes} in the checkpoint)")
    load_model_state(model, state, url)


def _detr(name: str, backbone: str, dilation: bool, pretrained: bool, num_classes: int, return_postprocessor: bool):
    model = _make_detr(backbone, dilation=dilation, num_classes=num_classes)
    if pretrained:
        _load_pretrained(model, _URLS[name], num_classes, 91)
    return (model, PostProcess()) if return_postprocessor else model


def detr_resnet50(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR R50 (42.0 AP on COCO val5k)."""
    return _detr("detr_resnet50", "resnet50", False, pretrained, num_classes, return_postprocessor)


def detr_resnet50_dc5(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR-DC5 R50 (43.3 AP): dilated last stage, stride 16."""
    return _detr("detr_resnet50_dc5", "resnet50", True, pretrained, num_classes, return_postprocessor)


def detr_resnet101(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR R101 (43.5 AP)."""
    return _detr("detr_resnet101", "resnet101", False, pretrained, num_classes, return_postprocessor)


def detr_resnet101_dc5(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR-DC5 R101 (44.9 AP)."""
    return _detr("detr_resnet101_dc5", "resnet101", True, pretrained, num_classes, return_postprocessor)


def _detr_panoptic(
    name: str, backbone: str, dilation: bool, pretrained: bool, num_classes: int, threshold: float,
    return_postprocessor: bool,
):  # fmt: skip
    """Panoptic DETR (``DETRsegm``); the post-processor's thing map is the official COCO one
    (ids <= 90 are things), as the checkpoints were trained on COCO panoptic."""
    from models.segmentation import PostProcessPanoptic

    model = _make_detr(backbone, dilation=dilation, num_classes=num_classes, mask=True)
    if pretrained:
        _load_pretrained(model, _URLS[name], num_classes, 250)
    if return_postprocessor:
        is_thing_map = {i: i <= 90 for i in range(250)}
        return model, PostProcessPanoptic(is_thing_map, threshold=threshold)
    return model


def detr_resnet50_panoptic(
    pretrained: bool = False, num_classes: int = 250, threshold: float = 0.85, return_postprocessor: bool = False
):
    """Panoptic DETR R50 (43.4 PQ on COCO panoptic val5k)."""
    return _detr_panoptic(
        "detr_resnet50_panoptic", "resnet50", False, pretrained, num_classes, threshold, return_postprocessor
    )


def detr_resnet50_dc5_panoptic(
    pretrained: bool = False, num_classes: int = 250, threshold: float = 0.85, return_postprocessor: bool = False
):
    """Panoptic DETR-DC5 R50 (44.6 PQ)."""
    return _detr_panoptic(
        "detr_resnet50_dc5_panoptic", "resnet50", True, pretrained, num_classes, threshold, return_postprocessor
    )


def detr_resnet101_panoptic(
    pretrained: bool = False, num_classes: int = 250, threshold: float = 0.85, return_postprocessor: bool = False
):
    """Panoptic DETR R101 (45.1 PQ)."""
    return _detr_panoptic(
        "detr_resnet101_panoptic", "resnet101", False, pretrained, num_classes, threshold, return_postprocessor
    )


__all__ = [
    "DETR",
    "PRETRAINED",
    "pretrained_checkpoint",
    "detr_resnet50",
    "detr_resnet50_dc5",
    "detr_resnet50_dc5_panoptic",
    "detr_resnet50_panoptic",
    "detr_resnet101",
    "detr_resnet101_dc5",
    "detr_resnet101_panoptic",
]
