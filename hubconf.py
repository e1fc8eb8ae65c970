"""torch.hub entry points: ``torch.hub.load("<repo or local clone>", "detr_resnet50", pretrained=True)``.

The official DETR entry points, names, signatures and download URLs (``check_hash=True``).
Differences: with ``pretrained=False`` nothing is downloaded (the official code still fetched the
ImageNet backbone), so ``source="local"`` works offline; offline with ``pretrained=True`` raises
one clear error; ``pretrained=True`` with another ``num_classes`` keeps every pretrained weight but
the class head, for fine-tuning.

Deformable DETR entries (not in the official code, whose weights are on Google Drive only): the five
official variants with the DETR entries' signature. ``pretrained=True`` downloads the Hugging Face
hub weights (``SenseTime/deformable-detr`` and its variants: ``config.json`` and the weights), converts
them with ``models.hf_convert`` and caches the converted checkpoint in torch.hub's cache folder.
DINO entries (``dino_4scale``, ``dino_5scale``): the official architectures; their weights are in a
Google Drive folder that allows no download, so ``pretrained=True`` says where to fetch them.
"""

from __future__ import annotations

from torch import nn

from models import build_model
from models.detr import DETR, PostProcess
from models.pretrained import _DEFORMABLE, PRETRAINED, _hf_hub_checkpoint, pretrained_checkpoint, pretrained_names
from util.checkpoint import CheckpointError as _CheckpointError
from util.checkpoint import load_checkpoint, load_finetune_weights, load_model_state, model_state_from_checkpoint
from util.config import ModelConfig

dependencies = ["torch", "torchvision", "scipy"]


def _make_detr(backbone_name: str, dilation: bool = False, num_classes: int = 91, mask: bool = False) -> nn.Module:
    """The published configuration (the ``detr`` preset), without auxiliary outputs."""
    cfg = ModelConfig.preset("detr", num_classes=num_classes, backbone=backbone_name, dilation=dilation, masks=mask,
                             aux_loss=False, load_backbone_weights=False)  # fmt: skip
    return build_model(cfg)[0]


def _load_pretrained(model: nn.Module, ckpt: dict, source: str, num_classes: int, default_classes: int) -> None:
    """Load a pretrained checkpoint strictly; with another ``num_classes``, every weight but the class
    heads (which keep their fresh initialisation), as ``main.py --finetune`` does."""
    state = model_state_from_checkpoint(ckpt, source)
    if num_classes == default_classes:
        load_model_state(model, state, source)
    else:
        notes = load_finetune_weights(model, state, source)
        print(f"pretrained weights loaded without the {num_classes}-class heads ({default_classes} in {source}); "
              + notes[-1])  # fmt: skip


def _detr(name: str, backbone: str, dilation: bool, pretrained: bool, num_classes: int, return_postprocessor: bool):
    model = _make_detr(backbone, dilation=dilation, num_classes=num_classes)
    if pretrained:
        _load_pretrained(model, load_checkpoint(PRETRAINED[name]), PRETRAINED[name], num_classes, 91)
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
        _load_pretrained(model, load_checkpoint(PRETRAINED[name]), PRETRAINED[name], num_classes, 250)
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


def _deformable_config(name: str, num_classes: int) -> ModelConfig:
    """The official recipe of entry ``name`` (the ``deformable_detr`` preset and its variant's changes)."""
    return ModelConfig.preset("deformable_detr", num_classes=num_classes, aux_loss=False,
                              load_backbone_weights=False, **_DEFORMABLE[name][1])  # fmt: skip


def _deformable(name: str, pretrained: bool, num_classes: int, return_postprocessor: bool):
    from models.deformable_detr import PostProcess as DeformablePostProcess

    model = build_model(_deformable_config(name, num_classes))[0]
    if pretrained:
        path = _hf_hub_checkpoint(_DEFORMABLE[name][0])
        ckpt = load_checkpoint(path)
        expected = _deformable_config(name, ckpt["args"]["num_classes"]).architecture()
        if any(ckpt["args"].get(k, v) != v for k, v in expected.items()):
            raise _CheckpointError(f"{path} is not the {name} architecture: {ckpt['args']}")
        _load_pretrained(model, ckpt, str(path), num_classes, expected["num_classes"])
    return (model, DeformablePostProcess()) if return_postprocessor else model


def deformable_detr(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """Deformable DETR R50, 4 feature levels (44.5 AP on COCO val5k, officially)."""
    return _deformable("deformable_detr", pretrained, num_classes, return_postprocessor)


def deformable_detr_single_scale(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """Deformable DETR R50, single scale (39.4 AP)."""
    return _deformable("deformable_detr_single_scale", pretrained, num_classes, return_postprocessor)


def deformable_detr_single_scale_dc5(
    pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False
):
    """Deformable DETR R50, single scale, dilated last stage (41.5 AP)."""
    return _deformable("deformable_detr_single_scale_dc5", pretrained, num_classes, return_postprocessor)


def deformable_detr_refine(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """Deformable DETR R50 + iterative bounding-box refinement (46.2 AP)."""
    return _deformable("deformable_detr_refine", pretrained, num_classes, return_postprocessor)


def deformable_detr_two_stage(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """Deformable DETR R50 + iterative bounding-box refinement + two-stage (46.9 AP)."""
    return _deformable("deformable_detr_two_stage", pretrained, num_classes, return_postprocessor)


# The official DINO weights (IDEA-Research/DINO's README): a Google Drive folder, no direct download.
DINO_WEIGHTS = {"dino_4scale": "checkpoint0011_4scale.pth", "dino_5scale": "the DINO-5scale 12-epoch checkpoint"}
DINO_DRIVE = "https://drive.google.com/drive/folders/1qD5m1NmK0kjE5hh-G17XUX751WsEG-h_"


def _dino(name: str, pretrained: bool, num_classes: int, return_postprocessor: bool):
    if pretrained:
        raise _CheckpointError(
            f"{name}: the official weights ({DINO_WEIGHTS[name]}) are published in a Google Drive folder only "
            f"({DINO_DRIVE}), which allows no direct download: fetch the file there and give its path to "
            "main.py --finetune / --resume or the tools' --checkpoint"
        )
    levels = 5 if name == "dino_5scale" else 4
    cfg = ModelConfig.preset("dino", num_classes=num_classes, num_feature_levels=levels, load_backbone_weights=False)
    model, _, postprocessors = build_model(cfg)
    return (model, postprocessors["bbox"]) if return_postprocessor else model


def dino_4scale(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DINO-4scale R50 (49.0 AP on COCO val2017 in 12 epochs, officially); random weights (see DINO_WEIGHTS)."""
    return _dino("dino_4scale", pretrained, num_classes, return_postprocessor)


def dino_5scale(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DINO-5scale R50 (49.4 AP in 12 epochs, officially); random weights (see DINO_WEIGHTS)."""
    return _dino("dino_5scale", pretrained, num_classes, return_postprocessor)


__all__ = [
    "DETR",
    "PRETRAINED",
    "pretrained_checkpoint",
    "pretrained_names",
    "detr_resnet50",
    "detr_resnet50_dc5",
    "detr_resnet50_dc5_panoptic",
    "detr_resnet50_panoptic",
    "detr_resnet101",
    "detr_resnet101_dc5",
    "detr_resnet101_panoptic",
    "deformable_detr",
    "deformable_detr_refine",
    "deformable_detr_single_scale",
    "deformable_detr_single_scale_dc5",
    "deformable_detr_two_stage",
    "dino_4scale",
    "dino_5scale",
]
