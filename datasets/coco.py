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
from datasets.coco_json import (
    _is_int,
    check_coco_dict,
    collect_coco_problems,
    degenerate_annotation_ids,
    load_coco_json,
    normalize_coco_dict,
    validate_coco_file,
)
from datasets.config import (
    OFFICIAL_MAX_SIZE,
    OFFICIAL_TRAIN_SCALES,
    OFFICIAL_VAL_SIZE,
    DataConfig,
    data_config_from_args,
)
from datasets.images import ImageCache, ImageInfo, ImageSource, decode_image
from datasets.problems import DatasetError, Problem
from datasets.split_check import (
    check_split_contents,
    finish_split,
    image_problems,
    probe_images,
    report_split,
    unreadable_indices,
)

# The official crop branch (resize to 400/500/600, crop 384..600) is defined for a largest scale of 800.
_OFFICIAL_CROP_RESIZES = (400, 500, 600)
_OFFICIAL_CROP_RANGE = (384, 600)


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
            stats = check_coco_dict(data, ann_file, num_classes, masks=return_masks)
        if not Path(img_folder).is_dir():
            raise DatasetError(f"image folder not found: {img_folder} (for annotation file {ann_file})")
        # Same state as torchvision.datasets.CocoDetection.__init__, with the COCO index built from the
        # dict parsed above instead of re-reading the file.
        torchvision.datasets.VisionDataset.__init__(self, str(img_folder))
        self.coco = coco_from_dict(data)
        self.ids = sorted(self.coco.imgs.keys())
        self.stats = stats if stats is not None else collect_coco_problems(data, ann_file, masks=return_masks)[1]
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
    ann_problems, stats = collect_coco_problems(data, ann_file, cfg.num_classes, cfg.masks)
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
