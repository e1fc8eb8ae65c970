"""COCO panoptic data for DETR's panoptic segmentation (``--dataset_file coco_panoptic``): ``CocoPanoptic``, ``build``.

Paths are the official ones: ``coco_path/{train,val}2017`` (images),
``coco_panoptic_path/annotations/panoptic_{split}2017.json`` and ``coco_panoptic_path/panoptic_{split}2017/``
(PNGs). Each target holds one mask, label and box per segment, things and stuff; ``coco`` is the
detection-format ground truth of the box / mask AP, ``is_thing_map()`` what the post-processor needs.
Unlike the official code, images are found by ``image_id`` and every problem of the json and PNGs is listed at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from datasets.coco import (
    as_config,
    category_names,
    coco_from_dict,
    transforms_from_config,
)
from datasets.coco_json import collect_coco_problems, load_coco_json, normalize_coco_dict
from datasets.config import DataConfig
from datasets.images import ImageCache, ImageReadError, ImageSource, probe_image
from datasets.problems import DatasetError, Problem, raise_if_problems
from datasets.split_check import (
    check_split_contents,
    finish_split,
    image_problems,
    probe_images,
    report_split,
    unreadable_indices,
)
from datasets.values import bbox_problem, flag_problem, name_problem, number_problem, side_problem
from util.box_ops import masks_to_boxes
from util.panoptic import MAX_SEGMENT_ID, read_panoptic_png, rgb2id  # noqa: F401  (rgb2id re-exported)


class CocoPanoptic:
    """COCO panoptic images and targets. ``img_folder``: images; ``ann_folder``: panoptic PNGs;
    ``ann_file``: panoptic json; ``detection_file``: optional detection-format json for ``coco``;
    ``cache`` / ``bad`` / ``max_bad_images``: as for ``datasets.coco.CocoDetection``. Raises one
    ``DatasetError`` listing every problem of the json (a category without ``isthing``, a segment
    whose category is not listed, an image without an entry in ``annotations``, missing folders).

    Each image's target comes from its panoptic PNG (segment id = ``R + 256 G + 256^2 B``, 0 = void)
    and its ``segments_info``: ``masks [N, H, W]`` uint8 (one per segment, things and stuff),
    ``labels [N]`` (category ids), ``boxes [N, 4]`` (tight boxes around the masks, xyxy until
    ``Normalize``), ``iscrowd [N]``, ``area [N]``, ``image_id``, ``orig_size``, ``size``; then the
    transforms (masks are cropped / flipped / resized with the boxes). Crowd segments stay in the
    target, as officially; images without segments (all void) and with only stuff work. Images are
    looked up by ``image_id`` in the json's ``images`` (officially: the PNG's name with ``.jpg``,
    assuming ``images`` and ``annotations`` align once sorted), so PNG images work too. Images
    decode through ``datasets.images`` (``--cache_mode`` applies to them; PNGs are read from disk).
    ``id2label`` and ``max_category_id`` come from the panoptic categories and segments;
    ``is_thing_map()`` replaces the official ``{i: i <= 90 for i in range(201)}``, true only for COCO.
    """

    def __init__(
        self,
        img_folder: str | os.PathLike[str],
        ann_folder: str | os.PathLike[str],
        ann_file: str | os.PathLike[str],
        transforms: Any | None = None,
        return_masks: bool = True,
        detection_file: str | os.PathLike[str] | None = None,
        *,
        cache: ImageCache | None = None,
        bad: dict[int, str] | None = None,
        max_bad_images: float = DataConfig.max_bad_images,
    ) -> None:
        self.img_folder = Path(img_folder)
        self.ann_folder = Path(ann_folder)
        self.ann_file = Path(ann_file)
        self.detection_file = Path(detection_file) if detection_file is not None else None
        self._transforms = transforms
        self.return_masks = return_masks
        data = _load_panoptic_json(self.ann_file)
        problems = []
        if not self.img_folder.is_dir():
            problems.append(Problem(str(self.img_folder), f"image folder not found (for {self.ann_file})"))
        if not self.ann_folder.is_dir():
            problems.append(Problem(str(self.ann_folder), f"panoptic PNG folder not found (for {self.ann_file})"))
        problems += panoptic_json_problems(data, str(self.ann_file))
        raise_if_problems(problems, str(self.ann_file))
        self.dataset = data
        self.categories = {int(c["id"]): c for c in data["categories"]}
        for cid, cat in self.categories.items():
            if "isthing" not in cat:
                problems.append(
                    Problem(str(self.ann_file), "has no 'isthing'", f"category {cid} ({cat.get('name', '?')})")
                )
        self.images = sorted(data["images"], key=lambda im: im["id"])
        self.ids = [im["id"] for im in self.images]
        ann_by_image = {a["image_id"]: a for a in data["annotations"]}
        self.annotations = []
        for im in self.images:
            ann = ann_by_image.get(im["id"])
            if ann is None:
                where = f"image {im['id']} ({im['file_name']})"
                problems.append(Problem(str(self.ann_file), "has no panoptic annotation", where))
                continue
            for seg in ann.get("segments_info", []):
                if seg.get("category_id") not in self.categories:
                    what = f"has category_id {seg.get('category_id')}, which is not in 'categories'"
                    where = f"{ann['file_name']}: segment id {seg.get('id')}"
                    problems.append(Problem(str(self.ann_file), what, where))
            self.annotations.append(ann)
        raise_if_problems(problems, str(self.ann_file))
        self.id2label = category_names(data)
        segment_ids = [int(s["category_id"]) for a in self.annotations for s in a.get("segments_info", [])]
        self.max_category_id = max([*self.categories, *segment_ids], default=-1)
        paths = [str(self.img_folder / im["file_name"]) for im in self.images]

        def describe(i: int) -> str:
            return f"{paths[i]} (image {self.ids[i]} in {self.ann_file})"

        self.image_source = ImageSource(paths, cache, max_bad_images, describe, bad)
        self._coco: COCO | None = None
        self._detection_data: dict[str, Any] | None = None
        self.stats: dict[str, Any] = {}  # filled by ``build``

    def __len__(self) -> int:
        return len(self.images)

    def is_thing_map(self) -> dict[int, bool]:
        """``{category_id: isthing}`` for every category of the panoptic json."""
        return {cid: bool(cat["isthing"]) for cid, cat in self.categories.items()}

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        img = self.images[idx]
        return int(img["height"]), int(img["width"])

    def load_segments(self, idx: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The ``[H, W]`` segment-id map of image ``idx`` and its ``segments_info``, checked
        (``ImageReadError`` naming the PNG when it is missing, cannot be decoded or disagrees with
        ``segments_info``)."""
        ann = self.annotations[idx]
        path = self.ann_folder / ann["file_name"]
        if not path.is_file():
            raise ImageReadError(str(path), f"is not found (the panoptic PNG of image {ann['image_id']})")
        try:
            id_map = read_panoptic_png(path)
        except Exception as e:  # truncated or corrupt pixel data: found here when not checked at start-up
            raise ImageReadError(str(path), f"cannot be decoded ({type(e).__name__}: {e})") from e
        segments = list(ann.get("segments_info", []))
        problems = segment_problems(id_map, segments, str(path))
        if problems:
            raise ImageReadError(str(path), "; ".join(f"{p.where} {p.what}" for p in problems))
        return id_map, segments

    def _target(self, idx: int, img: Any) -> tuple[Any, dict[str, Any]]:
        """Image ``idx`` (decoded) with its target, before the transforms."""
        img_info = self.images[idx]
        w, h = img.size
        id_map, segments = self.load_segments(idx)
        if id_map.shape != (h, w):
            png = self.ann_folder / self.annotations[idx]["file_name"]
            what = f"is {id_map.shape[1]}x{id_map.shape[0]}, its image {img_info['file_name']} is {w}x{h}"
            raise ImageReadError(str(png), what)
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
        return img, target

    def __getitem__(self, idx: int) -> tuple[Any, dict[str, Any]]:
        # A PNG found broken here is skipped like an undecodable image (counted by ImageSource).
        _, (img, target) = self.image_source.load(idx, self._target)
        if self._transforms is not None:
            img, target = self._transforms(img, target)
        return img, target

    # ------------------------------------------------------------------ detection-format ground truth

    @property
    def coco(self) -> COCO:
        """pycocotools ground truth in detection format, for the box / mask AP of ``CocoEvaluator``
        and the ``num_classes`` check.

        As officially, the detection-format file ``coco_path/annotations/instances_{split}2017.json``
        when it exists (the official code builds it in ``main.py``); its category list is extended
        with the panoptic categories so that ``num_classes`` covers the stuff ids (COCOeval ignores
        categories without ground truth). Otherwise it is derived, at first access, from the
        panoptic annotations themselves (``detection_dict``: every segment, RLE masks read from the PNGs).
        """
        if self._coco is None:
            if self.detection_file is not None and self.detection_file.is_file():
                if self._detection_data is None:
                    raise_if_problems(self.detection_file_problems(), str(self.detection_file))
                data = self._detection_data
                known = {c["id"] for c in data.get("categories", [])}
                data["categories"] = list(data.get("categories", [])) + [
                    {k: v for k, v in c.items() if k in ("id", "name", "supercategory", "isthing")}
                    for c in self.dataset["categories"]
                    if c["id"] not in known
                ]
            else:
                data = self.detection_dict()
            self._coco = coco_from_dict(data)
        return self._coco

    def detection_file_problems(self) -> list[Problem]:
        """Read, normalise and check ``detection_file`` as a COCO detection file (its values reach
        pycocotools' evaluation); kept for ``coco`` when it has no problem."""
        path = str(self.detection_file)
        data = load_coco_json(path)
        normalize_coco_dict(data, path)
        problems = collect_coco_problems(data, path)[0]
        self._detection_data = None if problems else data
        return problems

    def detection_dict(self) -> dict[str, Any]:
        """Every segment as a COCO detection annotation (RLE mask, bbox, area, iscrowd)."""
        annotations = []
        for idx in range(len(self)):
            try:
                id_map, segments = self.load_segments(idx)
            except ImageReadError as e:  # skipped when loaded too: no ground truth, no prediction
                print(f"warning: no ground truth for image {self.ids[idx]}: {e}", flush=True)
                continue
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


def _load_panoptic_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"panoptic annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a valid JSON file ({e})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a COCO panoptic file (top level is {type(data).__name__})")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise DatasetError(f"{path}: not a COCO panoptic file, {missing} missing or not a list")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def panoptic_json_problems(data: dict[str, Any], path: str) -> list[Problem]:
    """Every malformed value of a panoptic json: categories without an integer ``id``, images
    without an integer ``id`` or a ``file_name`` (or with a bad ``width`` / ``height``),
    annotations without ``image_id`` / ``file_name`` / a ``segments_info`` list, segments
    without an ``id`` (1 .. 256^3 - 1) or ``category_id``, or with a bad ``iscrowd``, ``area`` or ``bbox``."""
    problems: list[Problem] = []

    def keyed(entries_key: str, kind: str, key: str) -> list[dict[str, Any]]:
        """The entries of ``data[entries_key]`` with an integer ``key`` (a problem for each other one)."""
        entries = []
        for index, entry in enumerate(data[entries_key]):
            if isinstance(entry, dict) and _is_int(entry.get(key)):
                entries.append(entry)
            else:
                problems.append(Problem(path, f"lacks an integer '{key}': {str(entry)[:200]}", f"{kind} #{index}"))
        return entries

    keyed("categories", "category", "id")
    sizes = {}
    for img in keyed("images", "image", "id"):
        where = f"image {img['id']}"
        checks = [name_problem(img.get("file_name"), "file_name")]
        checks += [side_problem(img[key], key) if img.get(key) else None for key in ("width", "height")]
        problems += [Problem(path, what, where) for what in checks if what is not None]
        sizes[img["id"]] = (img.get("width"), img.get("height"))
    for ann in keyed("annotations", "annotation", "image_id"):
        where = f"annotation of image {ann['image_id']}"
        what = name_problem(ann.get("file_name"), "file_name")
        problems += [Problem(path, what, where)] if what else []
        if not isinstance(ann.get("segments_info", []), list):
            problems.append(Problem(path, "has a 'segments_info' that is not a list", where))
            continue
        width, height = sizes.get(ann["image_id"], (None, None))
        for k, seg in enumerate(ann.get("segments_info", [])):
            seg_where = f"{where}, segment #{k}"
            if not isinstance(seg, dict):
                problems.append(Problem(path, "is not an object", seg_where))
                continue
            checks = [
                number_problem(seg.get("id"), "id", integer=True, low=1, high=MAX_SEGMENT_ID),
                number_problem(seg.get("category_id"), "category_id", integer=True, low=0),
                flag_problem(seg.get("iscrowd", 0), "iscrowd"),
                number_problem(seg["area"], "area", low=0) if "area" in seg else None,
                bbox_problem(seg["bbox"], width, height) if "bbox" in seg else None,
            ]
            problems += [Problem(path, what, seg_where) for what in checks if what is not None]
    return problems


def segment_problems(id_map: np.ndarray, segments: list[dict[str, Any]], png: str) -> list[Problem]:
    """Disagreements between a panoptic PNG's ids and its ``segments_info``."""
    present = set(np.unique(id_map).tolist())
    listed = {int(s["id"]) for s in segments}
    problems = [
        Problem(png, "of segments_info does not occur in the PNG", f"segment id {s['id']}")
        for s in segments
        if int(s["id"]) not in present
    ]
    problems += [
        Problem(png, "occurs in the PNG but not in segments_info", f"segment id {i}")
        for i in sorted(present - listed - {0})
    ]
    return problems


def png_content_problems(ds: CocoPanoptic) -> list[Problem]:
    """Every panoptic PNG of ``ds`` decoded and compared with its ``segments_info`` (what
    ``python -m datasets.check`` adds to the start-up check unless ``--check_images full`` did it)."""
    problems = []
    for idx, img in enumerate(ds.images):
        try:
            ds.load_segments(idx)
        except ImageReadError as e:
            problems.append(Problem(e.path, e.reason, f"image {img['id']} ({img['file_name']})"))
    return problems


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


def _png_problems(ds: CocoPanoptic, cfg: DataConfig, infos: list[Any]) -> list[Problem]:
    """Each panoptic PNG: present, readable, the size of its image (``infos``: the images' probes);
    with ``--check_images full`` also its ids against ``segments_info``."""
    if cfg.check_images == "none":
        return []
    problems = []
    for img, ann, img_info in zip(ds.images, ds.annotations, infos):
        png = ds.ann_folder / ann["file_name"]
        where = f"image {img['id']} ({img['file_name']})"
        info = probe_image(png, full=cfg.check_images == "full")
        expected = (img_info.width, img_info.height) if img_info is not None and img_info.error is None else None
        if info.error is not None:
            what = "has no panoptic PNG" if info.error == "is not found" else f"has an unusable PNG ({info.error})"
            problems.append(Problem(str(png), what, where))
        elif expected is not None and (info.width, info.height) != expected:
            what = f"has a {info.width}x{info.height} PNG but is {expected[0]}x{expected[1]}"
            problems.append(Problem(str(png), what, where))
        elif cfg.check_images == "full":
            problems += segment_problems(read_panoptic_png(png), list(ann.get("segments_info", [])), str(png))
    return problems


def build(image_set: str, cfg: DataConfig | Any) -> CocoPanoptic:
    """Split ``image_set`` of COCO panoptic under ``coco_path`` / ``coco_panoptic_path``, checked
    (``cfg``: a ``DataConfig`` or the official ``args``; ``masks`` decides whether targets carry
    masks; ``train_scales`` / ``val_size`` / ``max_size`` as for ``coco``).

    The start-up check of ``datasets.split_check`` covers every image and PNG: a missing or
    unreadable PNG, a PNG whose size differs from its image's (displayed) size, JSON
    ``width``/``height`` different from the image; with ``--check_images full`` also segments of
    ``segments_info`` absent from the PNG and PNG ids absent from ``segments_info`` (otherwise found
    when the sample is loaded)."""
    cfg = as_config(cfg)
    if not cfg.coco_path or not cfg.coco_panoptic_path:
        raise DatasetError("dataset_file 'coco_panoptic' needs --coco_path (images) and --coco_panoptic_path")
    paths = panoptic_paths(cfg.coco_path, cfg.coco_panoptic_path)
    if image_set not in paths:
        raise ValueError(f"unknown image_set {image_set!r}, expected one of {sorted(paths)}")
    img_folder, ann_folder, ann_file, det_file = paths[image_set]
    ds = CocoPanoptic(
        img_folder,
        ann_folder,
        ann_file,
        transforms=transforms_from_config(image_set, cfg),
        return_masks=cfg.masks,
        detection_file=det_file,
        max_bad_images=cfg.max_bad_images,
    )
    image_paths = ds.image_source.paths
    if cfg.cache_mode and image_paths:
        ds.image_source.cache = ImageCache(image_paths, cfg.rank, cfg.world_size)
        print(f"data: {image_set}: {ds.image_source.cache.describe()}", flush=True)
    infos = probe_images(image_paths, cfg, ds.image_source.cache, label=f"data: {image_set}: ")
    problems, notes = image_problems(ds.images, image_paths, infos, str(ann_file))
    problems += _png_problems(ds, cfg, infos)
    if image_set == "val" and det_file.is_file():  # the box / mask AP's ground truth
        problems += ds.detection_file_problems()
    bad_problems = finish_split(image_set, str(ann_file), problems, notes, len(image_paths), cfg)
    num_segments = sum(len(a.get("segments_info", [])) for a in ds.annotations)
    check_split_contents(image_set, str(ann_file), len(image_paths), num_segments)
    ds.stats = stats = {
        "num_annotations": num_segments,
        "num_categories": len(ds.categories),
        "max_category_id": ds.max_category_id,
        "max_objects_per_image": max((len(a.get("segments_info", [])) for a in ds.annotations), default=0),
    }
    report_split(image_set, str(ann_file), len(image_paths), len(bad_problems), stats)
    ds.image_source.bad.update(unreadable_indices(image_paths, bad_problems))
    return ds


__all__ = [
    "CocoPanoptic",
    "build",
    "panoptic_json_problems",
    "panoptic_paths",
    "png_content_problems",
    "rgb2id",
    "segment_problems",
]
