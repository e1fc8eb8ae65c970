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
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
from pathlib import Path as _Path

import torch
from torch import nn

from models.backbone import BackboneConfig
from models.detr import DETR, PostProcess
from models.detr import DETRConfig as _DETRConfig
from models.detr import build as _build_detr
from models.position_encoding import PositionEncodingConfig
from models.transformer import TransformerConfig
from util.checkpoint import CheckpointError as _CheckpointError
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
    """The checkpoint behind the hub entry ``name`` (``main.py --finetune detr_resnet50`` or
    ``--finetune deformable_detr``): downloaded once into the torch hub cache (the official DETR
    files hash-checked; SenseTime's Deformable DETR weights converted from Hugging Face), clear
    error when offline."""
    if name in PRETRAINED:
        return load_checkpoint(PRETRAINED[name])
    if name in _DEFORMABLE:
        return load_checkpoint(_hf_hub_checkpoint(_DEFORMABLE[name][0]))
    raise KeyError(f"no pretrained weights for hub entry '{name}'; known: {sorted(pretrained_names())}")


def pretrained_names() -> list[str]:
    """Hub entries with pretrained weights (the names ``--finetune`` accepts)."""
    return sorted([*PRETRAINED, *_DEFORMABLE])


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


# Deformable DETR: entry -> (Hugging Face hub repository, architecture flags that differ from the multi-scale one)
_HF_HUB = "https://huggingface.co"
_DEFORMABLE = {
    "deformable_detr": ("SenseTime/deformable-detr", {}),
    "deformable_detr_single_scale": ("SenseTime/deformable-detr-single-scale", {"num_feature_levels": 1}),
    "deformable_detr_single_scale_dc5": ("SenseTime/deformable-detr-single-scale-dc5",
                                         {"num_feature_levels": 1, "dilation": True}),
    "deformable_detr_refine": ("SenseTime/deformable-detr-with-box-refine", {"with_box_refine": True}),
    "deformable_detr_two_stage": ("SenseTime/deformable-detr-with-box-refine-two-stage",
                                  {"with_box_refine": True, "two_stage": True}),
}  # fmt: skip


def _deformable_arch(name: str, num_classes: int) -> dict:
    """The official recipe's architecture flags (ResNet-50, hidden 256, 6+6 layers, 300 queries)."""
    from models.hf_convert import ARCH_FLAGS

    arch = {
        "model": "deformable_detr", "backbone": "resnet50", "dilation": False, "position_embedding": "sine",
        "hidden_dim": 256, "nheads": 8, "enc_layers": 6, "dec_layers": 6, "dim_feedforward": 1024, "dropout": 0.1,
        "num_queries": 300, "num_classes": num_classes, "masks": False, "pre_norm": False, "num_feature_levels": 4,
        "dec_n_points": 4, "enc_n_points": 4, "with_box_refine": False, "two_stage": False, **_DEFORMABLE[name][1],
    }  # fmt: skip
    assert set(arch) == set(ARCH_FLAGS)
    return arch


def _download(url: str, dst: _Path, missing_ok: bool = False) -> bool:
    """Download ``url`` to ``dst``; False when it does not exist and ``missing_ok``."""
    try:
        torch.hub.download_url_to_file(url, str(dst), progress=True)
    except urllib.error.HTTPError as e:
        if missing_ok and e.code == 404:
            return False
        raise _CheckpointError(f"could not download {url} ({e})") from e
    except (urllib.error.URLError, OSError) as e:
        raise _CheckpointError(
            f"could not download {url} ({e}). Offline? Download the repository's config.json and weights elsewhere "
            "and convert them: python tools/convert_hf.py --from-hf DIR --output FILE, then load FILE."
        ) from e
    return True


def _hf_hub_checkpoint(repo: str, cache_dir: str | os.PathLike[str] | None = None) -> _Path:
    """This project's checkpoint of Hugging Face hub repository ``repo``: downloaded (``config.json``
    and ``model.safetensors``, or ``pytorch_model.bin`` without the ``safetensors`` package or
    when the repository has none), converted, and cached as ``<torch.hub dir>/checkpoints/<repo>.pth``
    (used directly the next time)."""
    from models.hf_convert import convert_from_hf

    folder = _Path(cache_dir) if cache_dir is not None else _Path(torch.hub.get_dir()) / "checkpoints"
    converted = folder / (repo.replace("/", "--") + ".pth")
    if converted.is_file():
        return converted
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import safetensors  # noqa: F401

        weights = ["model.safetensors", "pytorch_model.bin"]
    except ImportError:
        weights = ["pytorch_model.bin"]
    tmp = _Path(tempfile.mkdtemp(prefix=".hf-download-", dir=folder))
    try:
        _download(f"{_HF_HUB}/{repo}/resolve/main/config.json", tmp / "config.json")
        for i, name in enumerate(weights):
            if _download(f"{_HF_HUB}/{repo}/resolve/main/{name}", tmp / name, missing_ok=i < len(weights) - 1):
                break
        convert_from_hf(tmp, converted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return converted


def _deformable(name: str, pretrained: bool, num_classes: int, return_postprocessor: bool):
    from models.deformable_detr import PostProcess as DeformablePostProcess
    from models.hf_convert import build_model_from_args

    arch = _deformable_arch(name, num_classes)
    model = build_model_from_args(arch)
    if pretrained:
        path = _hf_hub_checkpoint(_DEFORMABLE[name][0])
        ckpt = load_checkpoint(path)
        expected = _deformable_arch(name, ckpt["args"]["num_classes"])
        if any(ckpt["args"].get(k) != v for k, v in expected.items() if k != "dropout"):
            raise _CheckpointError(f"{path} is not the {name} architecture: {ckpt['args']}")
        state = model_state_from_checkpoint(ckpt, str(path))
        if num_classes != expected["num_classes"]:  # fine-tuning: keep all but the class heads
            own = model.state_dict()
            heads = ("class_embed.", "transformer.decoder.class_embed.")
            state = {k: (own[k] if k.startswith(heads) else v) for k, v in state.items()}
            print(
                f"pretrained weights loaded without the {num_classes}-class heads ({expected['num_classes']} in {path})"
            )
        load_model_state(model, state, str(path))
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
]
