"""COCO detection data set: annotation-file validation, target conversion and the DETR transforms.

Implements the official DETR ``datasets/coco.py`` (``CocoDetection``, ``ConvertCocoPolysToMask``,
``make_coco_transforms``, ``build``) with the same targets: crowd annotations are removed,
``bbox`` goes from ``(x, y, w, h)`` to clamped ``(x0, y0, x1, y1)``, boxes with ``x1 <= x0`` or
``y1 <= y0`` are removed, polygons / RLEs become ``[N, H, W]`` uint8 masks with ``--masks``, and
images without annotations are kept (with empty targets). Differences from the official code:

* ``validate_coco_file`` checks an annotation file up front (exists, is JSON, has the COCO
  structure, every annotation has ``bbox``/``image_id``/``category_id`` and points to a known image,
  category ids are below ``num_classes``) and raises ``DatasetError`` naming the file and the
  offending annotation / category id, instead of failing later inside pycocotools or the loss.
  The file is parsed once: ``CocoDetection`` builds its ``COCO`` index from the validated dict.
* Degenerate boxes (zero or negative width/height before or after clamping to the image) are
  counted: at construction (``CocoDetection.num_degenerate_boxes``, ``degenerate_ann_ids``,
  ``count_degenerate_annotations()``) and while loading (``ConvertCocoPolysToMask.num_dropped_boxes``).
* Compressed RLE segmentations (string ``counts``) are decoded as well as polygons and
  uncompressed RLEs; keypoints are not converted (DETR does not use them).
* ``make_coco_transforms`` takes ``scales`` / ``max_size`` / ``val_size`` so small demo images can
  be trained at ~100 px; the defaults are the official 480..800 / 1333 / 800.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import torchvision
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from torch import Tensor

import datasets.transforms as T

OFFICIAL_TRAIN_SCALES: tuple[int, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
OFFICIAL_MAX_SIZE = 1333
OFFICIAL_VAL_SIZE = 800
# The official crop branch (resize to 400/500/600, crop 384..600) is defined for a largest scale of 800.
_OFFICIAL_CROP_RESIZES = (400, 500, 600)
_OFFICIAL_CROP_RANGE = (384, 600)


class DatasetError(ValueError):
    """A data set file is missing or malformed; the message names the file and the culprit."""


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _is_degenerate(bbox: Sequence[float], width: float, height: float) -> bool:
    """True if the COCO ``(x, y, w, h)`` box has no area once converted to xyxy and clamped to the image."""
    x, y, w, h = (float(v) for v in bbox)
    x0, x1 = min(max(x, 0.0), width), min(max(x + w, 0.0), width)
    y0, y1 = min(max(y, 0.0), height), min(max(y + h, 0.0), height)
    return not (x1 > x0 and y1 > y0)


def degenerate_annotation_ids(coco_dict: dict[str, Any]) -> list[int]:
    """Ids of the non-crowd annotations whose box is degenerate (they are dropped at load time).

    Images without ``width``/``height`` are only clamped at 0. Annotations without an ``id`` are
    reported by their index in ``annotations`` (negated minus one, i.e. index 3 -> -4).
    """
    sizes = {
        img["id"]: (float(img.get("width", math.inf)), float(img.get("height", math.inf)))
        for img in coco_dict.get("images", [])
    }
    out = []
    for index, ann in enumerate(coco_dict.get("annotations", [])):
        if ann.get("iscrowd", 0):
            continue
        width, height = sizes.get(ann["image_id"], (math.inf, math.inf))
        if _is_degenerate(ann["bbox"], width, height):
            out.append(int(ann.get("id", -index - 1)))
    return out


def _ann_name(ann: Any, index: int) -> str:
    if isinstance(ann, dict) and "id" in ann:
        return f"annotation id {ann['id']}"
    return f"annotation #{index} (no id)"


def check_coco_dict(data: Any, path: str | os.PathLike[str], num_classes: int | None = None) -> dict[str, Any]:
    """Validate an already-parsed COCO detection dict; see ``validate_coco_file``."""
    path = str(path)
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: not a COCO annotation file (top level is {type(data).__name__}, expected an object)"
        )
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetError(f"{path}: not a COCO annotation file, missing key(s) {missing}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: not a COCO annotation file, '{key}' is {type(data[key]).__name__}, not a list")

    image_ids: set[int] = set()
    for index, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DatasetError(f"{path}: image #{index} lacks 'id' or 'file_name': {str(img)[:200]}")
        if img["id"] in image_ids:
            raise DatasetError(f"{path}: duplicate image id {img['id']}")
        image_ids.add(img["id"])

    category_ids: set[int] = set()
    for index, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise DatasetError(f"{path}: category #{index} lacks an integer 'id': {str(cat)[:200]}")
        category_ids.add(cat["id"])

    ann_ids: set[Any] = set()
    annotated_images: set[int] = set()
    num_crowd = 0
    max_ann_category = -1
    for index, ann in enumerate(data["annotations"]):
        name = _ann_name(ann, index)
        if not isinstance(ann, dict):
            raise DatasetError(f"{path}: {name} is not an object")
        absent = [k for k in ("bbox", "image_id", "category_id") if k not in ann]
        if absent:
            raise DatasetError(f"{path}: {name} lacks {absent}")
        if "id" in ann:
            if ann["id"] in ann_ids:
                raise DatasetError(f"{path}: duplicate annotation id {ann['id']}")
            ann_ids.add(ann["id"])
        bbox = ann["bbox"]
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        ):
            raise DatasetError(f"{path}: {name} has an invalid bbox {bbox!r} (expected 4 finite numbers x, y, w, h)")
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{path}: {name} refers to image_id {ann['image_id']!r}, which is not in 'images'")
        cid = ann["category_id"]
        if not isinstance(cid, int) or cid < 0:
            raise DatasetError(f"{path}: {name} has category_id {cid!r}, expected a non-negative integer")
        if num_classes is not None and cid >= num_classes:
            raise DatasetError(
                f"{path}: {name} has category_id {cid} >= num_classes={num_classes} "
                f"(num_classes must be at least the max category id + 1)"
            )
        if cid not in category_ids:
            raise DatasetError(f"{path}: {name} has category_id {cid}, which is not listed in 'categories'")
        max_ann_category = max(max_ann_category, cid)
        annotated_images.add(ann["image_id"])
        num_crowd += int(bool(ann.get("iscrowd", 0)))

    degenerate = degenerate_annotation_ids(data)
    return {
        "file": path,
        "num_images": len(image_ids),
        "num_annotations": len(data["annotations"]),
        "num_crowd": num_crowd,
        "num_categories": len(category_ids),
        "max_category_id": max(max(category_ids, default=-1), max_ann_category),
        "num_degenerate_boxes": len(degenerate),
        "degenerate_ann_ids": degenerate,
        "num_images_without_annotations": len(image_ids - annotated_images),
    }


def load_coco_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a missing file or bad JSON into ``DatasetError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a valid JSON file ({e})") from e


def validate_coco_file(path: str | os.PathLike[str], num_classes: int | None = None) -> dict[str, Any]:
    """Check a COCO detection annotation file before training; raise ``DatasetError`` on problems.

    Errors (each message names ``path``): missing file; not JSON; not COCO (no ``images`` /
    ``annotations`` / ``categories`` lists, image without ``id``/``file_name``, duplicate ids,
    annotation without ``bbox``/``image_id``/``category_id``, non-numeric bbox, ``image_id`` not in
    ``images``, ``category_id`` not in ``categories``); ``category_id >= num_classes`` when given.

    Returns stats: ``file``, ``num_images``, ``num_annotations``, ``num_crowd``, ``num_categories``,
    ``max_category_id``, ``num_degenerate_boxes`` (non-crowd boxes that will be dropped),
    ``degenerate_ann_ids``, ``num_images_without_annotations``.
    """
    return check_coco_dict(load_coco_json(path), path, num_classes)


# --------------------------------------------------------------------------------------------
# Target conversion
# --------------------------------------------------------------------------------------------


def convert_coco_poly_to_mask(segmentations: Iterable[Any], height: int, width: int) -> Tensor:
    """COCO segmentations (polygon lists, uncompressed or compressed RLE) -> ``[N, H, W]`` uint8 masks."""
    masks = []
    for seg in segmentations:
        if isinstance(seg, list) and len(seg) == 0:
            masks.append(torch.zeros((height, width), dtype=torch.uint8))
            continue
        if isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
            counts = seg["counts"].encode("utf-8") if isinstance(seg["counts"], str) else seg["counts"]
            rles: Any = {"size": seg["size"], "counts": counts}
        else:
            rles = coco_mask.frPyObjects(seg, height, width)
        mask = coco_mask.decode(rles)
        if mask.ndim < 3:
            mask = mask[..., None]
        mask_t = torch.as_tensor(mask, dtype=torch.uint8).any(dim=2).to(torch.uint8)
        if mask_t.shape != (height, width):  # RLE stored for another image size
            mask_t = torch.nn.functional.interpolate(mask_t[None, None].float(), (height, width), mode="nearest")
            mask_t = mask_t[0, 0].to(torch.uint8)
        masks.append(mask_t)
    if masks:
        return torch.stack(masks, dim=0)
    return torch.zeros((0, height, width), dtype=torch.uint8)


class ConvertCocoPolysToMask:
    """``(PIL image, {"image_id", "annotations"})`` -> ``(image, DETR target dict)``.

    Target: ``boxes [N, 4]`` float32 absolute xyxy, ``labels [N]`` int64 (the COCO category ids),
    ``masks [N, H, W]`` uint8 (only with ``return_masks``), ``image_id [1]``, ``area [N]`` float32,
    ``iscrowd [N]`` int64, ``orig_size`` and ``size`` ``[2] = (h, w)``. Crowd annotations are removed;
    boxes without area after clamping are removed and added to ``num_dropped_boxes`` (a counter
    of this process: with DataLoader workers each worker has its own copy).
    """

    def __init__(self, return_masks: bool = False) -> None:
        self.return_masks = return_masks
        self.num_dropped_boxes = 0

    def __call__(self, image: PIL.Image.Image, target: dict[str, Any]) -> tuple[PIL.Image.Image, dict[str, Any]]:
        w, h = image.size
        anno = [obj for obj in target["annotations"] if not obj.get("iscrowd", 0)]

        boxes = torch.as_tensor([obj["bbox"] for obj in anno], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        self.num_dropped_boxes += int((~keep).sum())

        out: dict[str, Any] = {
            "boxes": boxes[keep],
            "labels": torch.as_tensor([obj["category_id"] for obj in anno], dtype=torch.int64)[keep],
        }
        if self.return_masks:
            out["masks"] = convert_coco_poly_to_mask([obj.get("segmentation", []) for obj in anno], h, w)[keep]
        out["image_id"] = torch.tensor([int(target["image_id"])])
        out["area"] = torch.as_tensor([float(obj.get("area", 0.0)) for obj in anno], dtype=torch.float32)[keep]
        out["iscrowd"] = torch.zeros(len(anno), dtype=torch.int64)[keep]
        out["orig_size"] = torch.as_tensor([int(h), int(w)])
        out["size"] = torch.as_tensor([int(h), int(w)])
        return image, out


# --------------------------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------------------------


def _coco_from_dict(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


class CocoDetection(torchvision.datasets.CocoDetection):
    """COCO images with DETR targets (see ``ConvertCocoPolysToMask``), then ``transforms``.

    The annotation file is validated first (``validate_coco_file``; ``DatasetError`` on problems)
    and its stats are kept in ``self.stats``. ``num_degenerate_boxes`` / ``degenerate_ann_ids``
    say how many boxes will be dropped as degenerate; ``num_dropped_boxes`` counts the drops
    actually made by ``__getitem__`` in this process.
    """

    def __init__(
        self,
        img_folder: str | os.PathLike[str],
        ann_file: str | os.PathLike[str],
        transforms: Any | None,
        return_masks: bool,
        num_classes: int | None = None,
    ) -> None:
        data = load_coco_json(ann_file)
        self.stats = check_coco_dict(data, ann_file, num_classes)
        if not Path(img_folder).is_dir():
            raise DatasetError(f"image folder not found: {img_folder} (for annotation file {ann_file})")
        # Same state as torchvision.datasets.CocoDetection.__init__, with the COCO index built from the
        # dict parsed above instead of re-reading the file.
        torchvision.datasets.VisionDataset.__init__(self, str(img_folder))
        self.coco = _coco_from_dict(data)
        self.ids = sorted(self.coco.imgs.keys())
        self.ann_file = str(ann_file)
        self.img_folder = str(img_folder)
        self._transforms = transforms
        self.prepare = ConvertCocoPolysToMask(return_masks)
        self.degenerate_ann_ids: list[int] = list(self.stats["degenerate_ann_ids"])

    @property
    def num_degenerate_boxes(self) -> int:
        """Non-crowd annotations whose box is dropped as degenerate (scan made at construction)."""
        return len(self.degenerate_ann_ids)

    @property
    def num_dropped_boxes(self) -> int:
        """Boxes dropped by ``__getitem__`` calls so far in this process (grows with every epoch)."""
        return self.prepare.num_dropped_boxes

    def count_degenerate_annotations(self) -> int:
        """Rescan ``self.coco`` for degenerate non-crowd boxes; updates and returns ``num_degenerate_boxes``."""
        self.degenerate_ann_ids = degenerate_annotation_ids(self.coco.dataset)
        return self.num_degenerate_boxes

    def _load_image(self, id: int) -> PIL.Image.Image:  # noqa: A002 (torchvision's signature)
        path = os.path.join(self.root, self.coco.loadImgs(id)[0]["file_name"])
        try:
            return PIL.Image.open(path).convert("RGB")
        except FileNotFoundError as e:
            raise DatasetError(f"image file not found: {path} (image id {id} in {self.ann_file})") from e

    def __getitem__(self, idx: int) -> tuple[Any, dict[str, Any]]:
        img, anns = super().__getitem__(idx)
        img, target = self.prepare(img, {"image_id": self.ids[idx], "annotations": anns})
        if self._transforms is not None:
            img, target = self._transforms(img, target)
        return img, target


# --------------------------------------------------------------------------------------------
# Transforms and builder
# --------------------------------------------------------------------------------------------


def make_coco_transforms(
    image_set: str,
    max_size: int = OFFICIAL_MAX_SIZE,
    scales: Sequence[int] | None = None,
    val_size: int = OFFICIAL_VAL_SIZE,
) -> T.Compose:
    """The official DETR augmentation for ``"train"`` / resize for ``"val"``, then ToTensor + Normalize.

    train: random flip, then either a random resize (shorter side in ``scales``, longer side at
    most ``max_size``) or resize to 400/500/600 + random crop of 384..600 + random resize. With
    custom ``scales`` the crop branch sizes are scaled by ``max(scales) / 800``.
    val: resize the shorter side to ``val_size`` (longer side at most ``max_size``).
    """
    normalize = T.Compose([T.ToTensor(), T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    if image_set == "train":
        scales = list(OFFICIAL_TRAIN_SCALES if scales is None else scales)
        if not scales or any(int(s) <= 0 for s in scales):
            raise ValueError(f"train scales must be positive ints, got {scales}")
        factor = max(scales) / OFFICIAL_TRAIN_SCALES[-1]
        crop_resizes = [max(1, round(s * factor)) for s in _OFFICIAL_CROP_RESIZES]
        crop_min, crop_max = (max(1, round(s * factor)) for s in _OFFICIAL_CROP_RANGE)
        return T.Compose(
            [
                T.RandomHorizontalFlip(),
                T.RandomSelect(
                    T.RandomResize(scales, max_size=max_size),
                    T.Compose(
                        [
                            T.RandomResize(crop_resizes),
                            T.RandomSizeCrop(crop_min, crop_max),
                            T.RandomResize(scales, max_size=max_size),
                        ]
                    ),
                ),
                normalize,
            ]
        )
    if image_set == "val":
        return T.Compose([T.RandomResize([val_size], max_size=max_size), normalize])
    raise ValueError(f"unknown image_set {image_set!r}, expected 'train' or 'val'")


def transforms_from_args(image_set: str, args: Any) -> T.Compose:
    """``make_coco_transforms`` with ``args.train_scales`` / ``max_size`` / ``val_size`` (official
    values where absent or None)."""

    def arg(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    return make_coco_transforms(
        image_set,
        max_size=int(arg("max_size", OFFICIAL_MAX_SIZE)),
        scales=[int(s) for s in arg("train_scales", OFFICIAL_TRAIN_SCALES)],
        val_size=int(arg("val_size", OFFICIAL_VAL_SIZE)),
    )


def coco_paths(root: str | os.PathLike[str]) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images dir, annotation file), "val": (...)}`` in the standard COCO 2017 layout."""
    root = Path(root)
    return {
        "train": (root / "train2017", root / "annotations" / "instances_train2017.json"),
        "val": (root / "val2017", root / "annotations" / "instances_val2017.json"),
    }


def build(image_set: str, args: Any) -> CocoDetection:
    """Build the ``"train"`` or ``"val"`` COCO 2017 split under ``args.coco_path``.

    Reads ``args.coco_path`` (required), ``args.masks`` (default False) and the optional
    ``args.num_classes`` (validation of category ids), ``args.train_scales``, ``args.max_size``,
    ``args.val_size`` (official defaults when absent or None).
    """
    coco_path = getattr(args, "coco_path", None)
    if not coco_path:
        raise DatasetError("--coco_path is required for dataset_file 'coco'")
    root = Path(coco_path)
    if not root.exists():
        raise DatasetError(f"provided COCO path {root} does not exist")
    paths = coco_paths(root)
    if image_set not in paths:
        raise ValueError(f"unknown image_set {image_set!r}, expected one of {sorted(paths)}")
    img_folder, ann_file = paths[image_set]
    return CocoDetection(
        img_folder,
        ann_file,
        transforms=transforms_from_args(image_set, args),
        return_masks=bool(getattr(args, "masks", False)),
        num_classes=getattr(args, "num_classes", None),
    )


__all__ = [
    "CocoDetection",
    "ConvertCocoPolysToMask",
    "DatasetError",
    "build",
    "check_coco_dict",
    "coco_paths",
    "transforms_from_args",
    "convert_coco_poly_to_mask",
    "degenerate_annotation_ids",
    "load_coco_json",
    "make_coco_transforms",
    "validate_coco_file",
]
