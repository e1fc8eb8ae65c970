"""Data sets for DETR: the builder registry and access to the pycocotools ground truth.

Mirrors the official DETR ``datasets/__init__.py`` (``build_dataset``, ``get_coco_api_from_dataset``).
Differences: builders are looked up in the ``DATASET_BUILDERS`` dict (adding a data set is one
entry: ``"coco"`` and ``"coco_panoptic"`` today), and an unknown ``dataset_file`` raises
``ValueError`` listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.utils.data
from pycocotools.coco import COCO

from datasets import coco, coco_panoptic

# dataset_file -> builder(image_set, args)
DATASET_BUILDERS: dict[str, Callable[[str, Any], torch.utils.data.Dataset]] = {
    "coco": coco.build,
    "coco_panoptic": coco_panoptic.build,
}


def build_dataset(image_set: str, args: Any) -> torch.utils.data.Dataset:
    """Build split ``image_set`` (``"train"`` / ``"val"``) of the data set named by ``args.dataset_file``."""
    name = getattr(args, "dataset_file", "coco")
    if name not in DATASET_BUILDERS:
        raise ValueError(f"unknown dataset_file {name!r}; known: {sorted(DATASET_BUILDERS)}")
    return DATASET_BUILDERS[name](image_set, args)


def get_coco_api_from_dataset(dataset: torch.utils.data.Dataset) -> COCO | None:
    """The ``pycocotools`` ``COCO`` object behind ``dataset`` (through any ``Subset`` wrappers), else None."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return getattr(dataset, "coco", None)


__all__ = ["DATASET_BUILDERS", "build_dataset", "get_coco_api_from_dataset"]
