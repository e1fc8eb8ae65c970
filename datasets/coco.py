"""COCO detection data: annotation-file checks and fixes, DETR targets, transforms, the data set class.

``build(image_set, cfg)`` builds one checked split of a COCO-format set (the ``--coco_path`` layout,
or ``--{split}_images`` / ``--{split}_annotations`` anywhere on disk); ``build_detection`` is the
pipeline the COCO, VOC and YOLO builders share. ``CocoDetection``, ``ConvertCocoPolysToMask`` and
``make_coco_transforms`` are the official classes and augmentation, with the official targets.
Unlike the official code, every problem of a file is reported at once, what pycocotools needs is
filled in at load (``normalize_coco_dict``) and unreadable images are skipped.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
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
from datasets.config import (
    OFFICIAL_MAX_SIZE,
    OFFICIAL_TRAIN_SCALES,
    OFFICIAL_VAL_SIZE,
    DataConfig,
    data_config_from_args,
)
from datasets.images import ImageCache, ImageInfo, ImageSource, decode_image
from datasets.problems import DatasetError, Problem, raise_if_problems
from datasets.split_check import (
    check_split_contents,
    finish_split,
    image_problems,
    probe_images,
    report_split,
    unreadable_indices,
)
from datasets.values import (
    bbox_problem,
    flag_problem,
    name_problem,
    number_problem,
    segmentation_area,
    segmentation_problem,
    side_problem,
)

# The official crop branch (resize to 400/500/600, crop 384..600) is defined for a largest scale of 800.
_OFFICIAL_CROP_RESIZES = (400, 500, 600)
_OFFICIAL_CROP_RANGE = (384, 600)


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
    data: Any, path: str | os.PathLike[str], num_classes: int | None = None
) -> tuple[list[Problem], dict[str, Any]]:
    """Every problem of a parsed COCO detection dict (see ``validate_coco_file``) and its stats."""
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
        values = [
            bbox_problem(ann["bbox"], width, height),
            flag_problem(ann.get("iscrowd", 0), "iscrowd"),
            number_problem(ann["area"], "area", low=0) if ann.get("area") is not None else None,
            segmentation_problem(ann["segmentation"], width, height) if ann.get("segmentation") is not None else None,
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


def check_coco_dict(data: Any, path: str | os.PathLike[str], num_classes: int | None = None) -> dict[str, Any]:
    """Validate an already-parsed COCO detection dict; see ``validate_coco_file``."""
    problems, stats = collect_coco_problems(data, path, num_classes)
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
    of this process: with DataLoader workers each worker has its own copy). An image without
    annotations gets empty targets, as officially; keypoints are not converted (DETR does not use them).
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
            out["masks"] = convert_coco_poly_to_mask([obj.get("segmentation") or [] for obj in anno], h, w)[keep]
        out["image_id"] = torch.tensor([int(target["image_id"])])
        out["area"] = torch.as_tensor([float(obj.get("area", 0.0)) for obj in anno], dtype=torch.float32)[keep]
        out["iscrowd"] = torch.zeros(len(anno), dtype=torch.int64)[keep]
        out["orig_size"] = torch.as_tensor([int(h), int(w)])
        out["size"] = torch.as_tensor([int(h), int(w)])
        return image, out


# --------------------------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------------------------


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` index over an in-memory dict (no file is read; index messages muted)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def category_names(data: dict[str, Any]) -> dict[int, str]:
    """``{category id: name}`` of a COCO dict's ``categories`` (the id as text where a name is missing)."""
    return {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}


class CocoDetection(torchvision.datasets.CocoDetection):
    """COCO-format images with DETR targets (see ``ConvertCocoPolysToMask``), then ``transforms``.

    Built from ``ann_file`` (read, normalised and validated: ``DatasetError`` on problems), or from
    ``data``, a dict already normalised and checked by ``build_detection`` (``ann_file`` then only
    names the source in messages). Image ``i`` is ``img_folder / file_name`` of the ``i``-th image id
    in increasing order. ``cache``: an ``ImageCache`` over those paths; ``bad``: ``{index: reason}``
    of images the start-up check found unreadable (replaced by the next readable image);
    ``max_bad_images``: the fraction of unreadable images tolerated at load time.

    ``stats`` holds the validation stats, ``id2label`` the class names, ``max_category_id`` the
    largest category id of the categories and annotations. ``num_degenerate_boxes`` /
    ``degenerate_ann_ids`` say how many boxes will be dropped as degenerate; ``num_dropped_boxes``
    counts the drops actually made by ``__getitem__`` in this process. ``voc_use_07_metric`` is set
    by ``datasets.voc`` (``None`` otherwise): the data set is then also scored by ``datasets.voc_eval``.
    """

    voc_use_07_metric: bool | None = None

    def __init__(
        self,
        img_folder: str | os.PathLike[str],
        ann_file: str | os.PathLike[str],
        transforms: Any | None,
        return_masks: bool,
        num_classes: int | None = None,
        *,
        data: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
        cache: ImageCache | None = None,
        bad: dict[int, str] | None = None,
        max_bad_images: float = DataConfig.max_bad_images,
    ) -> None:
        if data is None:
            data = load_coco_json(ann_file)
            normalize_coco_dict(data, ann_file)
            stats = check_coco_dict(data, ann_file, num_classes)
        if not Path(img_folder).is_dir():
            raise DatasetError(f"image folder not found: {img_folder} (for annotation file {ann_file})")
        # Same state as torchvision.datasets.CocoDetection.__init__, with the COCO index built from the
        # dict parsed above instead of re-reading the file.
        torchvision.datasets.VisionDataset.__init__(self, str(img_folder))
        self.coco = coco_from_dict(data)
        self.ids = sorted(self.coco.imgs.keys())
        self.stats = stats if stats is not None else collect_coco_problems(data, ann_file)[1]
        self.ann_file = str(ann_file)
        self.img_folder = str(img_folder)
        self._transforms = transforms
        self.prepare = ConvertCocoPolysToMask(return_masks)
        self.degenerate_ann_ids: list[int] = list(self.stats.get("degenerate_ann_ids", []))
        self.id2label = category_names(data)
        paths = [os.path.join(self.root, self.coco.imgs[i]["file_name"]) for i in self.ids]

        def describe(i: int) -> str:
            return f"{paths[i]} (image id {self.ids[i]} in {self.ann_file})"

        self.image_source = ImageSource(paths, cache, max_bad_images, describe, bad)

    @property
    def max_category_id(self) -> int:
        """The largest category id of the categories and annotations (-1 when there is none)."""
        return int(self.stats.get("max_category_id", -1))

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
        """Image ``id`` decoded with the ``datasets.images`` policy (``DatasetError`` if unreadable)."""
        return decode_image(os.path.join(self.root, self.coco.loadImgs(id)[0]["file_name"]))

    def __getitem__(self, idx: int) -> tuple[Any, dict[str, Any]]:
        used, img = self.image_source.load(idx)
        image_id = self.ids[used]
        anns = self._load_target(image_id)
        img, target = self.prepare(img, {"image_id": image_id, "annotations": anns})
        if self._transforms is not None:
            img, target = self._transforms(img, target)
        return img, target


def build_detection(
    data: Any,
    img_folder: str | os.PathLike[str],
    ann_file: str | os.PathLike[str],
    image_set: str,
    cfg: DataConfig,
    *,
    problems: Iterable[Problem] = (),
    notes: Iterable[str] = (),
    infos: dict[str, ImageInfo | None] | None = None,
    cache: ImageCache | None = None,
) -> CocoDetection:
    """The checked data set of one split of any box format (the pipeline of the COCO, VOC and YOLO builders).

    ``data``: the COCO dict (parsed from ``ann_file`` or converted from another format; normalised
    and completed in place); ``problems`` / ``notes``: what the format's reader already found;
    ``infos`` (image path -> probe) / ``cache``: when the reader already probed / cached the images. Runs
    the annotation check, the image check (``cfg.check_images``) and raises one ``DatasetError``
    listing every fatal problem (or too many unreadable images).
    """
    ann_file = str(ann_file)
    problems = list(problems)
    notes = list(notes) + normalize_coco_dict(data, ann_file)
    if not Path(img_folder).is_dir():
        problems.append(Problem(str(img_folder), f"image folder not found (for {ann_file})"))
    images_ok = isinstance(data, dict) and isinstance(data.get("images"), list) and Path(img_folder).is_dir()
    by_id = {}
    if images_ok:
        by_id = {img["id"]: img for img in data["images"] if isinstance(img, dict) and _is_int(img.get("id"))}
        by_id = {i: img for i, img in by_id.items() if "file_name" in img}
    ids = sorted(by_id)
    paths = [os.path.join(str(img_folder), str(by_id[i]["file_name"])) for i in ids]
    if infos is None:
        if cfg.cache_mode and paths:
            cache = ImageCache(paths, cfg.rank, cfg.world_size)
            notes.append(cache.describe())
        probes = probe_images(paths, cfg, cache, label=f"data: {image_set}: ")
    else:
        probes = [infos.get(p) for p in paths]
    img_problems, img_notes = image_problems([by_id[i] for i in ids], paths, probes, ann_file)
    # After the image sizes are known (read from the files where missing): coordinates are checked against them.
    ann_problems, stats = collect_coco_problems(data, ann_file, cfg.num_classes)
    problems += ann_problems + img_problems
    notes += img_notes
    bad_problems = finish_split(image_set, ann_file, problems, notes, len(ids), cfg)
    warnings = list(stats.get("warnings", []))
    if cfg.masks and stats.get("num_without_segmentation"):
        warnings.append(
            f"{ann_file}: {stats['num_without_segmentation']} annotation(s) without 'segmentation': "
            "their mask targets are empty (--masks)"
        )
    num_objects = stats.get("num_annotations", 0) - stats.get("num_crowd", 0)
    check_split_contents(image_set, ann_file, len(ids), num_objects, warnings)
    report_split(image_set, ann_file, len(ids), len(bad_problems), stats)
    degenerate = degenerate_annotation_ids(data)  # sizes may have been read from the images
    stats.update(num_degenerate_boxes=len(degenerate), degenerate_ann_ids=degenerate)
    bad = unreadable_indices(paths, bad_problems)
    return CocoDetection(
        img_folder,
        ann_file,
        transforms=transforms_from_config(image_set, cfg),
        return_masks=cfg.masks,
        data=data,
        stats=stats,
        cache=cache,
        bad=bad,
        max_bad_images=cfg.max_bad_images,
    )


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
    val: resize the shorter side to ``val_size`` (longer side at most ``max_size``). The defaults
    are the official 480..800 / 1333 / 800; smaller sizes let small images train at ~100 px.
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


def transforms_from_config(image_set: str, cfg: DataConfig) -> T.Compose:
    """``make_coco_transforms`` with the sizes of ``cfg`` (``train_scales``, ``max_size``, ``val_size``)."""
    return make_coco_transforms(image_set, max_size=cfg.max_size, scales=cfg.train_scales, val_size=cfg.val_size)


def transforms_from_args(image_set: str, args: Any) -> T.Compose:
    """``make_coco_transforms`` with ``args.train_scales`` / ``max_size`` / ``val_size`` (official
    values where absent or None)."""
    return transforms_from_config(image_set, data_config_from_args(args))


def as_config(cfg: DataConfig | Any) -> DataConfig:
    """A ``DataConfig`` as is; anything else (the official ``args`` of ``build(image_set, args)``)
    through ``data_config_from_args``."""
    return cfg if isinstance(cfg, DataConfig) else data_config_from_args(cfg)


def coco_paths(root: str | os.PathLike[str]) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images dir, annotation file), "val": (...)}`` in the standard COCO 2017 layout."""
    root = Path(root)
    return {
        "train": (root / "train2017", root / "annotations" / "instances_train2017.json"),
        "val": (root / "val2017", root / "annotations" / "instances_val2017.json"),
    }


def coco_split_paths(image_set: str, cfg: DataConfig) -> tuple[Path, Path]:
    """``(images dir, annotation file)`` of a split: ``--{split}_images`` / ``--{split}_annotations``
    where given, else the ``--coco_path`` layout."""
    if image_set not in ("train", "val"):
        raise ValueError(f"unknown image_set {image_set!r}, expected one of ['train', 'val']")
    images = getattr(cfg, f"{image_set}_images")
    annotations = getattr(cfg, f"{image_set}_annotations")
    if images is None or annotations is None:
        if not cfg.coco_path:
            raise DatasetError(
                f"dataset_file 'coco' needs --coco_path (COCO layout) or --{image_set}_images and "
                f"--{image_set}_annotations"
            )
        root = Path(cfg.coco_path)
        if not root.exists():
            raise DatasetError(f"provided COCO path {root} does not exist")
        default_images, default_annotations = coco_paths(root)[image_set]
        images = images if images is not None else default_images
        annotations = annotations if annotations is not None else default_annotations
    return Path(images), Path(annotations)


def build(image_set: str, cfg: DataConfig | Any) -> CocoDetection:
    """Build the checked ``"train"`` or ``"val"`` split of a COCO-format data set (``cfg``: a
    ``DataConfig``, or the official ``args``): ``coco_split_paths`` says where it is."""
    cfg = as_config(cfg)
    img_folder, ann_file = coco_split_paths(image_set, cfg)
    return build_detection(load_coco_json(ann_file), img_folder, ann_file, image_set, cfg)


__all__ = [
    "CocoDetection",
    "ConvertCocoPolysToMask",
    "DatasetError",
    "OFFICIAL_MAX_SIZE",
    "OFFICIAL_TRAIN_SCALES",
    "OFFICIAL_VAL_SIZE",
    "as_config",
    "build",
    "build_detection",
    "category_names",
    "check_coco_dict",
    "coco_from_dict",
    "coco_paths",
    "coco_split_paths",
    "collect_coco_problems",
    "convert_coco_poly_to_mask",
    "degenerate_annotation_ids",
    "load_coco_json",
    "make_coco_transforms",
    "normalize_coco_dict",
    "transforms_from_args",
    "transforms_from_config",
    "validate_coco_file",
]
