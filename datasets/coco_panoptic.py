"""COCO panoptic data set for DETR's panoptic segmentation (official ``datasets/coco_panoptic.py``).

Each image's target comes from its panoptic PNG (segment id = ``R + 256 G + 256^2 B``, 0 = void)
and its ``segments_info``: ``masks [N, H, W]`` uint8 (one per segment, things and stuff),
``labels [N]`` (category ids), ``boxes [N, 4]`` (tight boxes around the masks, xyxy until
``Normalize``), ``iscrowd [N]``, ``area [N]``, ``image_id``, ``orig_size``, ``size``; then the
DETR transforms of ``datasets.coco.make_coco_transforms`` (masks are cropped/flipped/resized with
the boxes). Crowd segments stay in the target, as officially. Paths are the official ones:
``coco_path/{train,val}2017`` (images), ``coco_panoptic_path/annotations/panoptic_{split}2017.json``
and ``coco_panoptic_path/panoptic_{split}2017/`` (PNGs).

Differences from the official code:

* Images are looked up by ``image_id`` in the json's ``images`` (official: the PNG's name with
  ``.jpg``, assuming ``images`` and ``annotations`` align once sorted), so PNG images work too.
* Bad input raises ``ValueError`` naming the file and the segment: a PNG that is missing, a segment
  of ``segments_info`` absent from the PNG, a non-void id of the PNG absent from ``segments_info``,
  a segment whose category is not listed, a category without ``isthing``, an image without an
  entry in ``annotations``. Images without segments (all void) and with only stuff work.
* ``is_thing_map()`` gives ``{category_id: bool}`` from the categories' ``isthing``; ``main.py``
  builds the panoptic post-processor from it (the official code hard-codes
  ``{i: i <= 90 for i in range(201)}``, true only for COCO).
* ``coco`` (the pycocotools ground truth for the box/mask AP of ``CocoEvaluator`` and for the
  ``num_classes`` check): as officially, the detection-format file
  ``coco_path/annotations/instances_{split}2017.json`` when it exists (the official code builds
  it in ``main.py``); its category list is extended with the panoptic categories, so that
  ``num_classes`` covers the stuff ids (COCOeval ignores categories without ground truth). When
  that file does not exist, the detection-format ground truth is derived from the panoptic
  annotations themselves (every segment, things and stuff, RLE masks read from the PNGs) at
  first access of ``coco``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from datasets.coco import transforms_from_args
from util.box_ops import masks_to_boxes


def rgb2id(color: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[H, W]`` int64 segment ids ``R + 256 G + 256^2 B``."""
    c = np.asarray(color).astype(np.int64)
    if c.ndim == 3:
        return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]
    return c


def _coco_from_dict(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


class CocoPanoptic:
    """COCO panoptic images and targets (see the module docstring). ``img_folder``: images;
    ``ann_folder``: panoptic PNGs; ``ann_file``: panoptic json; ``detection_file``: optional
    detection-format json for ``coco``."""

    def __init__(
        self,
        img_folder: str | os.PathLike[str],
        ann_folder: str | os.PathLike[str],
        ann_file: str | os.PathLike[str],
        transforms: Any | None = None,
        return_masks: bool = True,
        detection_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.img_folder = Path(img_folder)
        self.ann_folder = Path(ann_folder)
        self.ann_file = Path(ann_file)
        self.detection_file = Path(detection_file) if detection_file is not None else None
        self._transforms = transforms
        self.return_masks = return_masks
        if not self.ann_file.is_file():
            raise ValueError(f"panoptic annotation file not found: {self.ann_file}")
        try:
            with open(self.ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.ann_file}: not a valid JSON file ({e})") from e
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{self.ann_file}: not a COCO panoptic file, '{key}' missing or not a list")
        if not self.img_folder.is_dir():
            raise ValueError(f"image folder not found: {self.img_folder} (for {self.ann_file})")
        if not self.ann_folder.is_dir():
            raise ValueError(f"panoptic PNG folder not found: {self.ann_folder} (for {self.ann_file})")
        self.dataset = data
        self.categories = {int(c["id"]): c for c in data["categories"]}
        for cid, cat in self.categories.items():
            if "isthing" not in cat:
                raise ValueError(f"{self.ann_file}: category {cid} ({cat.get('name', '?')}) has no 'isthing'")
        self.images = sorted(data["images"], key=lambda im: im["id"])
        self.ids = [im["id"] for im in self.images]
        ann_by_image = {a["image_id"]: a for a in data["annotations"]}
        self.annotations = []
        for im in self.images:
            ann = ann_by_image.get(im["id"])
            if ann is None:
                raise ValueError(f"{self.ann_file}: image {im['id']} ({im['file_name']}) has no panoptic annotation")
            for seg in ann.get("segments_info", []):
                if seg.get("category_id") not in self.categories:
                    raise ValueError(
                        f"{self.ann_file}: {ann['file_name']}: segment id {seg.get('id')} has category_id "
                        f"{seg.get('category_id')}, which is not in 'categories'"
                    )
            self.annotations.append(ann)
        self._coco: COCO | None = None

    def __len__(self) -> int:
        return len(self.images)

    def is_thing_map(self) -> dict[int, bool]:
        """``{category_id: isthing}`` for every category of the panoptic json."""
        return {cid: bool(cat["isthing"]) for cid, cat in self.categories.items()}

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        img = self.images[idx]
        return int(img["height"]), int(img["width"])

    def load_segments(self, idx: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The ``[H, W]`` segment-id map of image ``idx`` and its ``segments_info``, checked."""
        ann = self.annotations[idx]
        path = self.ann_folder / ann["file_name"]
        if not path.is_file():
            raise ValueError(f"panoptic PNG not found: {path} (image {ann['image_id']} in {self.ann_file})")
        with PIL.Image.open(path) as png:
            id_map = rgb2id(np.asarray(png.convert("RGB")))
        segments = list(ann.get("segments_info", []))
        present = set(np.unique(id_map).tolist())
        listed = {int(s["id"]) for s in segments}
        for seg in segments:
            if int(seg["id"]) not in present:
                raise ValueError(f"{path}: segment id {seg['id']} of segments_info does not occur in the PNG")
        extra = sorted(present - listed - {0})
        if extra:
            raise ValueError(f"{path}: segment id {extra[0]} occurs in the PNG but not in segments_info")
        return id_map, segments

    def __getitem__(self, idx: int) -> tuple[Any, dict[str, Any]]:
        img_info = self.images[idx]
        img_path = self.img_folder / img_info["file_name"]
        if not img_path.is_file():
            raise ValueError(f"image file not found: {img_path} (image {img_info['id']} in {self.ann_file})")
        img = PIL.Image.open(img_path).convert("RGB")
        w, h = img.size
        id_map, segments = self.load_segments(idx)
        if id_map.shape != (h, w):
            raise ValueError(
                f"{self.ann_folder / self.annotations[idx]['file_name']}: PNG is {id_map.shape[1]}x{id_map.shape[0]}, "
                f"image {img_path} is {w}x{h}"
            )
        ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
        masks = torch.as_tensor(id_map[None] == ids[:, None, None], dtype=torch.uint8).reshape(len(ids), h, w)
        target: dict[str, Any] = {"image_id": torch.tensor([int(img_info["id"])])}
        if self.return_masks:
            target["masks"] = masks
        target["labels"] = torch.tensor([int(s["category_id"]) for s in segments], dtype=torch.int64)
        target["boxes"] = masks_to_boxes(masks).float().reshape(-1, 4)
        target["size"] = torch.as_tensor([int(h), int(w)])
        target["orig_size"] = torch.as_tensor([int(h), int(w)])
        target["iscrowd"] = torch.tensor([int(s.get("iscrowd", 0)) for s in segments], dtype=torch.int64)
        target["area"] = torch.tensor(
            [float(s["area"]) if "area" in s else float(m.sum()) for s, m in zip(segments, masks)],
            dtype=torch.float32,
        )
        if self._transforms is not None:
            img, target = self._transforms(img, target)
        return img, target

    # ------------------------------------------------------------------ detection-format ground truth

    @property
    def coco(self) -> COCO:
        """pycocotools ground truth in detection format (see the module docstring)."""
        if self._coco is None:
            if self.detection_file is not None and self.detection_file.is_file():
                with open(self.detection_file, encoding="utf-8") as f:
                    data = json.load(f)
                known = {c["id"] for c in data.get("categories", [])}
                data["categories"] = list(data.get("categories", [])) + [
                    {k: v for k, v in c.items() if k in ("id", "name", "supercategory", "isthing")}
                    for c in self.dataset["categories"]
                    if c["id"] not in known
                ]
            else:
                data = self.detection_dict()
            self._coco = _coco_from_dict(data)
        return self._coco

    def detection_dict(self) -> dict[str, Any]:
        """Every segment as a COCO detection annotation (RLE mask, bbox, area, iscrowd)."""
        annotations = []
        for idx in range(len(self)):
            id_map, segments = self.load_segments(idx)
            for seg in segments:
                rle = coco_mask.encode(np.asfortranarray((id_map == int(seg["id"])).astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": self.annotations[idx]["image_id"],
                        "category_id": int(seg["category_id"]),
                        "segmentation": rle,
                        "area": float(coco_mask.area(rle)),
                        "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                        "iscrowd": int(seg.get("iscrowd", 0)),
                    }
                )
        return {
            "images": [dict(im) for im in self.images],
            "annotations": annotations,
            "categories": [dict(c) for c in self.dataset["categories"]],
        }


def panoptic_paths(coco_path: str | os.PathLike[str], coco_panoptic_path: str | os.PathLike[str]) -> dict:
    """``{split: (image folder, PNG folder, panoptic json, detection json)}`` in the official layout."""
    img_root, pan_root = Path(coco_path), Path(coco_panoptic_path)
    return {
        split: (
            img_root / f"{split}2017",
            pan_root / f"panoptic_{split}2017",
            pan_root / "annotations" / f"panoptic_{split}2017.json",
            img_root / "annotations" / f"instances_{split}2017.json",
        )
        for split in ("train", "val")
    }


def build(image_set: str, args: Any) -> CocoPanoptic:
    """Split ``image_set`` of COCO panoptic under ``args.coco_path`` / ``args.coco_panoptic_path``
    (``--masks`` decides whether targets carry masks; ``--train_scales`` / ``--val_size`` /
    ``--max_size`` as for ``coco``)."""
    coco_path = getattr(args, "coco_path", None)
    pan_path = getattr(args, "coco_panoptic_path", None)
    if not coco_path or not pan_path:
        raise ValueError("dataset_file 'coco_panoptic' needs --coco_path (images) and --coco_panoptic_path")
    paths = panoptic_paths(coco_path, pan_path)
    if image_set not in paths:
        raise ValueError(f"unknown image_set {image_set!r}, expected one of {sorted(paths)}")
    img_folder, ann_folder, ann_file, det_file = paths[image_set]
    transforms = transforms_from_args(image_set, args)
    return CocoPanoptic(
        img_folder,
        ann_folder,
        ann_file,
        transforms=transforms,
        return_masks=bool(getattr(args, "masks", False)),
        detection_file=det_file,
    )


__all__ = ["CocoPanoptic", "build", "panoptic_paths", "rgb2id"]
