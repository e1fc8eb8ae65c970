"""COCO annotation files as JSON: read (``load_coco_json``), normalised (``normalize_coco_dict``:
missing ``area`` / ``iscrowd`` / ids filled and counted) and checked (``collect_coco_problems``,
``check_coco_dict``, ``validate_coco_file``), each problem naming the file, the image or annotation
id and the field. Imports neither torch nor torchvision, so that ``python -m datasets.coco_eval``
starts fast. Not in the official code, which hands the file to pycocotools unchecked.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets.problems import DatasetError, Problem, raise_if_problems
from datasets.values import (
    bbox_problem,
    flag_problem,
    name_problem,
    number_problem,
    segmentation_area,
    segmentation_problem,
    side_problem,
)

# --------------------------------------------------------------------------------------------
# Normalisation and validation of a COCO dict
# --------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_bbox(bbox: Any) -> bool:
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    )


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
        img["id"]: (float(img.get("width") or math.inf), float(img.get("height") or math.inf))
        for img in coco_dict.get("images", [])
    }
    out = []
    for index, ann in enumerate(coco_dict.get("annotations", [])):
        if ann.get("iscrowd", 0) or not _valid_bbox(ann.get("bbox")):
            continue
        width, height = sizes.get(ann.get("image_id"), (math.inf, math.inf))
        if _is_degenerate(ann["bbox"], width, height):
            out.append(int(ann.get("id", -index - 1)))
    return out


def normalize_coco_dict(data: Any, path: str | os.PathLike[str]) -> list[str]:
    """Fix in place what pycocotools needs and annotation tools often leave out; returns one log
    note per kind of fix, with its count. Malformed entries are left for ``collect_coco_problems``.

    Image ids that are not all integers (e.g. strings) are numbered ``1..N`` in file order (the
    original kept as ``original_id``); annotations without ``id`` get new ids; a missing ``area`` is
    the segmentation's area (computed in numpy, ``datasets.values``), else the box's; a missing
    ``iscrowd`` is 0. (A missing image ``width``/``height`` is read from the image file later, by
    ``split_check.image_problems``.)
    """
    if not isinstance(data, dict):
        return []
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        return []
    notes = []
    entries = [img for img in images if isinstance(img, dict) and "id" in img]
    old_ids = [img["id"] for img in entries]
    hashable = all(isinstance(i, (int, float, str)) for i in old_ids)
    if hashable and len(set(old_ids)) == len(old_ids) and not all(_is_int(i) for i in old_ids):
        mapping = {old: new for new, old in enumerate(old_ids, start=1)}
        example = next(i for i in old_ids if not _is_int(i))
        for img in entries:
            img["original_id"], img["id"] = img["id"], mapping[img["id"]]
        for ann in annotations:
            if isinstance(ann, dict) and isinstance(ann.get("image_id"), (int, float, str)):
                ann["image_id"] = mapping.get(ann["image_id"], ann["image_id"])
        notes.append(
            f"{path}: image ids are not all integers (e.g. {example!r}): numbered 1..{len(old_ids)} in file "
            "order (the original id kept as 'original_id')"
        )

    used = [a["id"] for a in annotations if isinstance(a, dict) and _is_int(a.get("id"))]
    next_id = max(used, default=0) + 1
    first, no_id, no_area, no_crowd = next_id, 0, 0, 0
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in entries if isinstance(img["id"], int)}
    for ann in annotations:
        if not isinstance(ann, dict):
            continue
        if "id" not in ann:
            ann["id"], next_id, no_id = next_id, next_id + 1, no_id + 1
        if "iscrowd" not in ann:
            ann["iscrowd"], no_crowd = 0, no_crowd + 1
        if ann.get("area") is None and _valid_bbox(ann.get("bbox")):
            height, width = sizes.get(ann.get("image_id"), (None, None))
            area = segmentation_area(ann.get("segmentation"), width, height)
            ann["area"] = area if area is not None else float(ann["bbox"][2]) * float(ann["bbox"][3])
            no_area += 1
    if no_id:
        notes.append(f"{path}: {no_id} annotation(s) without 'id': given ids {first}..{next_id - 1}")
    if no_area:
        notes.append(f"{path}: {no_area} annotation(s) without 'area': computed from the segmentation or the box")
    if no_crowd:
        notes.append(f"{path}: {no_crowd} annotation(s) without 'iscrowd': set to 0")
    return notes


def _ann_name(ann: Any, index: int) -> str:
    if isinstance(ann, dict) and "id" in ann:
        return f"annotation id {ann['id']}"
    return f"annotation #{index} (no id)"


def collect_coco_problems(
    data: Any, path: str | os.PathLike[str], num_classes: int | None = None, masks: bool = True
) -> tuple[list[Problem], dict[str, Any]]:
    """Every problem of a parsed COCO detection dict (see ``validate_coco_file``) and its stats.
    ``masks=False`` (a box-only run, as the official code reads COCO without ``--masks``): a
    malformed ``segmentation`` is not a problem but one counted warning, since nothing reads it."""
    path = str(path)
    if not isinstance(data, dict):
        what = f"is not a COCO annotation file (top level is {type(data).__name__}, expected an object)"
        return [Problem(path, what)], {}
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        return [Problem(path, f"is not a COCO annotation file, missing key(s) {missing}")], {}
    warnings: list[str] = []
    problems = [
        Problem(path, f"is not a COCO annotation file, '{key}' is {type(data[key]).__name__}, not a list")
        for key in ("images", "annotations", "categories")
        if not isinstance(data[key], list)
    ]
    if problems:
        return problems, {}

    image_ids: set[Any] = set()
    sizes: dict[int, tuple[Any, Any]] = {}
    file_names: dict[str, int] = {}
    for index, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            problems.append(Problem(path, f"lacks 'id' or 'file_name': {str(img)[:200]}", f"image #{index}"))
            continue
        if not _is_int(img["id"]):
            what = f"has id {img['id']!r}: image ids must be integers, or unique strings (which are renumbered)"
            problems.append(Problem(path, what, f"image #{index}"))
            continue
        where = f"image id {img['id']}"
        if img["id"] in image_ids:
            problems.append(Problem(path, f"duplicate image id {img['id']}"))
            continue
        image_ids.add(img["id"])
        bad_name = name_problem(img["file_name"], "file_name")
        if bad_name:
            problems.append(Problem(path, bad_name, where))
        elif img["file_name"] in file_names:
            first = file_names[img["file_name"]]
            warnings.append(f"{path}: {where} lists the same file as image id {first} ({img['file_name']})")
        else:
            file_names[img["file_name"]] = img["id"]
        for key in ("width", "height"):
            if img.get(key):  # missing or 0: read from the image file
                what = side_problem(img[key], key)
                problems += [Problem(path, what, where)] if what else []
        sizes[img["id"]] = (img.get("width"), img.get("height"))

    category_ids: set[int] = set()
    for index, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            problems.append(Problem(path, f"lacks an integer 'id': {str(cat)[:200]}", f"category #{index}"))
        elif cat["id"] in category_ids:
            problems.append(Problem(path, f"duplicate category id {cat['id']}"))
        else:
            category_ids.add(cat["id"])

    ann_ids: set[Any] = set()
    annotated_images: set[Any] = set()
    objects: Counter[Any] = Counter()
    num_crowd = num_without_segmentation = 0
    unused_bad_segmentations: list[str] = []  # masks=False: "annotation ...: problem"
    max_ann_category = -1
    for index, ann in enumerate(data["annotations"]):
        name = _ann_name(ann, index)
        if not isinstance(ann, dict):
            problems.append(Problem(path, "is not an object", name))
            continue
        absent = [k for k in ("bbox", "image_id", "category_id") if k not in ann]
        if absent:
            problems.append(Problem(path, f"lacks {absent}", name))
            continue
        if "id" in ann:
            if ann["id"] in ann_ids:
                problems.append(Problem(path, f"duplicate annotation id {ann['id']}"))
            ann_ids.add(ann["id"])
        width, height = sizes.get(ann["image_id"], (None, None))
        seg = segmentation_problem(ann["segmentation"], width, height) if ann.get("segmentation") is not None else None
        if seg is not None and not masks:
            unused_bad_segmentations.append(f"{name} {seg}")
            seg = None
        values = [
            bbox_problem(ann["bbox"], width, height),
            flag_problem(ann.get("iscrowd", 0), "iscrowd"),
            number_problem(ann["area"], "area", low=0) if ann.get("area") is not None else None,
            seg,
        ]
        problems += [Problem(path, what, name) for what in values if what is not None]
        num_without_segmentation += int(not ann.get("segmentation"))
        if ann["image_id"] not in image_ids:
            problems.append(Problem(path, f"refers to image_id {ann['image_id']!r}, which is not in 'images'", name))
        cid = ann["category_id"]
        if not _is_int(cid) or cid < 0:
            problems.append(Problem(path, f"has category_id {cid!r}, expected a non-negative integer", name))
            continue
        if num_classes is not None and cid >= num_classes:
            what = (
                f"has category_id {cid} >= num_classes={num_classes} "
                f"(num_classes must be at least the max category id + 1)"
            )
            problems.append(Problem(path, what, name))
        if cid not in category_ids:
            problems.append(Problem(path, f"has category_id {cid}, which is not listed in 'categories'", name))
        max_ann_category = max(max_ann_category, cid)
        annotated_images.add(ann["image_id"])
        if not ann.get("iscrowd", 0):
            objects[ann["image_id"]] += 1
        num_crowd += int(bool(ann.get("iscrowd", 0)))

    if unused_bad_segmentations:
        warnings.append(
            f"{path}: {len(unused_bad_segmentations)} annotation(s) with a malformed 'segmentation', unused "
            f"without --masks (first: {unused_bad_segmentations[0]})"
        )
    stats = {
        "file": path,
        "num_images": len(image_ids),
        "num_annotations": len(data["annotations"]),
        "num_crowd": num_crowd,
        "num_categories": len(category_ids),
        "max_category_id": max(max(category_ids, default=-1), max_ann_category),
        "num_images_without_annotations": len(image_ids - annotated_images),
        "max_objects_per_image": max(objects.values(), default=0),
        "num_without_segmentation": num_without_segmentation,
        "warnings": warnings,
    }
    if not problems:
        degenerate = degenerate_annotation_ids(data)
        stats.update(num_degenerate_boxes=len(degenerate), degenerate_ann_ids=degenerate)
    return problems, stats


def check_coco_dict(
    data: Any, path: str | os.PathLike[str], num_classes: int | None = None, masks: bool = True
) -> dict[str, Any]:
    """Validate an already-parsed COCO detection dict; see ``validate_coco_file`` and, for ``masks``,
    ``collect_coco_problems``."""
    problems, stats = collect_coco_problems(data, path, num_classes, masks)
    raise_if_problems(problems, str(path))
    return stats


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
    """Check a COCO detection annotation file before training; raise one ``DatasetError`` listing
    every problem.

    Problems (each names ``path`` and the image / annotation): missing file; not JSON; not COCO (no
    ``images`` / ``annotations`` / ``categories`` lists, image without ``id``/``file_name``,
    duplicate ids, annotation without ``bbox``/``image_id``/``category_id``, ``image_id`` not in
    ``images``, ``category_id`` not in ``categories``); a value that ``datasets.values`` refuses
    (image ``file_name`` / ``width`` / ``height``, annotation ``bbox``, ``iscrowd``, ``area``,
    ``segmentation``); ``category_id >= num_classes`` when given. The file is normalised first
    (``normalize_coco_dict``).

    Returns stats: ``file``, ``num_images``, ``num_annotations``, ``num_crowd``, ``num_categories``,
    ``max_category_id``, ``num_degenerate_boxes`` (non-crowd boxes that will be dropped),
    ``degenerate_ann_ids``, ``num_images_without_annotations``, ``max_objects_per_image``,
    ``num_without_segmentation`` and ``warnings`` (an image file listed twice).
    """
    data = load_coco_json(path)
    normalize_coco_dict(data, path)
    return check_coco_dict(data, path, num_classes)
