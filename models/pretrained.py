"""Where the published weights are: the official DETR files and SenseTime's Deformable DETR
weights on the Hugging Face hub, by hub entry name; downloaded once into torch.hub's cache.

``pretrained_checkpoint(name)`` returns a checkpoint for ``hubconf``, ``main.py --finetune NAME`` and
the tools. Differs from the official code: the Deformable DETR weights are converted from Hugging Face.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
from pathlib import Path as _Path

import torch

from util.checkpoint import CheckpointError as _CheckpointError
from util.checkpoint import load_checkpoint

PRETRAINED = {
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
