"""The typed configuration of the data sets, and the one place where command-line flags become it.

Not in the official code, whose builders read ``args`` directly. Every builder of
``datasets.DATASET_BUILDERS`` takes ``(image_set, cfg: DataConfig)``; ``data_config_from_args(args)``
(called by ``datasets.build_dataset``) turns ``main.py``'s flags into a ``DataConfig``. Absent or
``None`` flags take the field defaults below, which are the only defaults of these settings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from util import distributed as dist_utils

OFFICIAL_TRAIN_SCALES: tuple[int, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
OFFICIAL_MAX_SIZE = 1333
OFFICIAL_VAL_SIZE = 800

CHECK_IMAGES_LEVELS = ("none", "header", "full")


@dataclass(frozen=True)
class DataConfig:
    """What to read and how to check it. Paths are strings (``None``: not given).

    ``dataset_file``   ``coco`` | ``coco_panoptic`` | ``voc`` | ``yolo`` (a key of ``DATASET_BUILDERS``).
    ``coco_path``      COCO 2017 layout: ``train2017/``, ``val2017/``, ``annotations/instances_*.json``
                       (for ``coco_panoptic``: the images, with ``coco_panoptic_path`` the panoptic files).
    ``train_images`` / ``train_annotations`` / ``val_images`` / ``val_annotations``: a COCO-format split
                       anywhere on disk; each overrides the ``coco_path`` layout for its split.
    ``voc_path``       a ``VOCdevkit`` folder; ``voc_years`` the ``VOC<year>`` sub-folders to read
                       (``None``: every one present); ``remove_difficult`` drops difficult objects
                       from training (evaluation keeps them, as the devkit does).
    ``yolo_path``      a folder holding ``data.yaml`` (or the yaml file itself).
    ``train_split`` / ``val_split``: VOC ``ImageSets/Main`` list names (default ``trainval`` / ``val``),
                       YOLO ``data.yaml`` keys (default ``train`` / ``val``).
    ``masks``          targets carry instance masks (segmentation).
    ``num_classes``    when known, category ids must be below it (checked before training).
    ``train_scales`` / ``max_size`` / ``val_size``: the resize sizes of the official augmentation.
    ``cache_mode``     keep the encoded image files of this rank's shard in memory.
    ``rank`` / ``world_size``: this process's shard (images ``i`` with ``i % world_size == rank``).
    ``check_images``   ``none``: no image is opened at start-up; ``header``: every image header
                       (size, mode, EXIF orientation, truncation signs); ``full``: every image decoded.
    ``max_bad_images`` the fraction of images that may be unreadable (skipped with a warning);
                       more stops the run.
    """

    dataset_file: str = "coco"
    coco_path: str | None = None
    coco_panoptic_path: str | None = None
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    voc_path: str | None = None
    voc_years: tuple[str, ...] | None = None
    remove_difficult: bool = False
    yolo_path: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    masks: bool = False
    num_classes: int | None = None
    train_scales: tuple[int, ...] = OFFICIAL_TRAIN_SCALES
    max_size: int = OFFICIAL_MAX_SIZE
    val_size: int = OFFICIAL_VAL_SIZE
    cache_mode: bool = False
    rank: int = 0
    world_size: int = 1
    check_images: str = "header"
    max_bad_images: float = 0.001

    def __post_init__(self) -> None:
        if self.check_images not in CHECK_IMAGES_LEVELS:
            raise ValueError(f"--check_images must be one of {CHECK_IMAGES_LEVELS}, got {self.check_images!r}")
        if not (0.0 <= self.max_bad_images <= 1.0) or math.isnan(self.max_bad_images):
            raise ValueError(f"--max_bad_images is a fraction of the images in [0, 1], got {self.max_bad_images}")
        if not self.train_scales or any(int(s) <= 0 for s in self.train_scales):
            raise ValueError(f"--train_scales must be positive, got {list(self.train_scales)}")
        if self.max_size <= 0 or self.val_size <= 0:
            raise ValueError(f"--max_size and --val_size must be positive, got {self.max_size}, {self.val_size}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"--num_classes must be >= 1, got {self.num_classes}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} out of range for world size {self.world_size}")

    def split_name(self, image_set: str, defaults: dict[str, str]) -> str:
        """The VOC list / YOLO yaml key of ``image_set``: ``train_split`` / ``val_split``, else ``defaults``."""
        if image_set not in ("train", "val"):
            raise ValueError(f"unknown image_set {image_set!r}, expected 'train' or 'val'")
        return (self.train_split if image_set == "train" else self.val_split) or defaults[image_set]

    def max_bad_count(self, num_images: int) -> int:
        """How many of ``num_images`` images may be unreadable before the run stops."""
        return math.floor(self.max_bad_images * num_images + 1e-9)


def parse_years(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"2007,2012"`` (or a list of such strings) -> ``("2007", "2012")``; ``None`` / empty -> ``None``."""
    if value is None:
        return None
    parts = [value] if isinstance(value, str) else list(value)
    years = tuple(y.strip() for part in parts for y in str(part).split(",") if y.strip())
    return years or None


def data_config_from_args(args: Any) -> DataConfig:
    """``main.py``'s flags -> ``DataConfig``; flags that are absent or ``None`` keep the defaults.

    ``rank`` / ``world_size`` come from the initialised process group (1 process otherwise).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}

    def arg(name: str) -> Any:
        value = getattr(args, name, None)
        return defaults[name] if value is None else value

    return DataConfig(
        dataset_file=str(arg("dataset_file")),
        coco_path=arg("coco_path"),
        coco_panoptic_path=arg("coco_panoptic_path"),
        train_images=arg("train_images"),
        train_annotations=arg("train_annotations"),
        val_images=arg("val_images"),
        val_annotations=arg("val_annotations"),
        voc_path=arg("voc_path"),
        voc_years=parse_years(arg("voc_years")),
        remove_difficult=bool(arg("remove_difficult")),
        yolo_path=arg("yolo_path"),
        train_split=arg("train_split"),
        val_split=arg("val_split"),
        masks=bool(arg("masks")),
        num_classes=arg("num_classes"),
        train_scales=tuple(int(s) for s in arg("train_scales")),
        max_size=int(arg("max_size")),
        val_size=int(arg("val_size")),
        cache_mode=bool(arg("cache_mode")),
        rank=dist_utils.get_rank(),
        world_size=dist_utils.get_world_size(),
        check_images=str(arg("check_images")),
        max_bad_images=float(arg("max_bad_images")),
    )


__all__ = [
    "CHECK_IMAGES_LEVELS",
    "DataConfig",
    "OFFICIAL_MAX_SIZE",
    "OFFICIAL_TRAIN_SCALES",
    "OFFICIAL_VAL_SIZE",
    "data_config_from_args",
    "parse_years",
]
