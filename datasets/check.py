"""The data set check on its own: every problem of both splits, listed before any training.

``python -m datasets.check --dataset_file coco|coco_panoptic|voc|yolo PATH [PANOPTIC_PATH]`` (any
data flag of ``main.py`` is accepted, e.g. ``--train_images DIR``, ``--check_images full``,
``--num_classes N``) builds each split as ``main.py`` does, which runs the start-up check of
``datasets.split_check``, prints every problem and exits with status 1 when training would be
refused; ``run_check`` is the same from Python. Boxes that training clips or drops are listed under
each split (``box_notes``). Panoptic PNGs are also decoded and their ids compared with
``segments_info`` (what ``main.py`` does only with ``--check_images full``), and images with more
objects than ``--num_queries`` are warned about. The README's "Bad input" section says what is
checked. Not in the official code, which fails on the first bad value.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from datasets.problems import DatasetError, format_problems, raise_if_problems


def _positional_paths(cfg_args: argparse.Namespace, paths: list[str]) -> None:
    """Map the positional PATHs onto the data set's path flag(s)."""
    kind = cfg_args.dataset_file
    if not paths:
        return
    if kind == "voc":
        cfg_args.voc_path = paths[0]
    elif kind == "yolo":
        cfg_args.yolo_path = paths[0]
    elif kind == "coco_panoptic":
        cfg_args.coco_path = paths[0]
        cfg_args.coco_panoptic_path = paths[1] if len(paths) > 1 else paths[0]
    else:
        cfg_args.coco_path = paths[0]
    if len(paths) > (2 if kind == "coco_panoptic" else 1):
        raise SystemExit(f"error: too many paths for --dataset_file {kind}: {paths}")


# What training does with each kind of box (``ConvertCocoPolysToMask``: clamp to the image, then
# drop the boxes left without area), in the order they are reported.
_BOX_KINDS = {
    "size": "with zero or negative width or height: training drops them",
    "outside": "entirely outside the image: training drops them",
    "negative": "with negative x or y: training clips them at 0",
    "past": "reaching past the image's right or bottom edge: training clips them to the image",
}
_NAMED = 5  # annotations named per kind


def box_notes(data: dict[str, Any]) -> list[str]:
    """One line per kind of non-crowd box that training changes or drops (``_BOX_KINDS``) in a COCO
    dict whose images have their sizes, with the count and the first annotations (YOLO: the label
    file and line). A box counts once, under its first kind."""
    sizes = {img["id"]: (img.get("width") or math.inf, img.get("height") or math.inf) for img in data["images"]}
    found: dict[str, list[str]] = {kind: [] for kind in _BOX_KINDS}
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        width, height = sizes.get(ann["image_id"], (math.inf, math.inf))
        if w <= 0 or h <= 0:
            kind = "size"
        elif x >= width or y >= height or x + w <= 0 or y + h <= 0:
            kind = "outside"
        elif x < 0 or y < 0:
            kind = "negative"
        elif x + w > width or y + h > height:
            kind = "past"
        else:
            continue
        found[kind].append(str(ann.get("label_line") or f"annotation id {ann.get('id')}"))
    lines = []
    for kind, names in found.items():
        if names:
            more = f", and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
            lines.append(f"{len(names)} box(es) {_BOX_KINDS[kind]} ({', '.join(names[:_NAMED])}{more})")
    return lines


def run_check(args: argparse.Namespace, splits: Sequence[str], build: Callable[[str, Any], Any]) -> int:
    """Build each split with ``build(split, args)`` (which runs the check), then check the category
    ids of every split against ``--num_classes`` (default: the training split's max id + 1, as
    ``main.py`` derives it). Prints what was found; returns 0 when training could start, else 1."""
    from datasets import check_num_classes, max_category_id, warn_objects_beyond_queries
    from datasets.coco_panoptic import CocoPanoptic, png_content_problems
    from util.config import PRESETS

    status, built = 0, {}
    for split in splits:
        try:
            built[split] = ds = build(split, args)
            if isinstance(ds, CocoPanoptic) and args.check_images != "full":
                raise_if_problems(png_content_problems(ds), f"{split} panoptic PNGs")
        except DatasetError as e:
            status = 1
            print(f"{split}: FAILED")
            print(format_problems(e.problems, limit=None) if e.problems else f"  - {e}")
            continue
        except ValueError as e:
            status = 1
            print(f"{split}: FAILED\n  - {e}")
            continue
        stats = getattr(ds, "stats", {})
        print(
            f"{split}: OK: {len(ds)} images, {stats.get('num_annotations', '?')} annotations, "
            f"max category id {max_category_id(ds)}"
        )
        if hasattr(ds, "coco"):  # box data sets (COCO, VOC, YOLO)
            for line in box_notes(ds.coco.dataset):
                print(f"  - {line}")
    warn_objects_beyond_queries(args.num_queries or PRESETS[args.model]["num_queries"], built)
    reference = built.get("train", built.get("val"))
    if reference is not None:
        num_classes = args.num_classes or max_category_id(reference) + 1
        source = "--num_classes" if args.num_classes else "the training split" if "train" in built else "val"
        try:
            check_num_classes(num_classes, source, built)
        except DatasetError as e:
            status = 1
            print(f"num_classes: FAILED\n{format_problems(e.problems, limit=None)}")
    return status


def main(argv: list[str] | None = None) -> int:
    from datasets import build_dataset
    from util.config import get_args_parser

    parser = argparse.ArgumentParser(
        "python -m datasets.check",
        parents=[get_args_parser()],
        description="Check a data set as training would, and list every problem found.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="the data set's folder(s) (see the module docstring)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val"))
    args = parser.parse_args(argv)
    _positional_paths(args, args.paths)
    return run_check(args, args.splits, build_dataset)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["box_notes", "main", "run_check"]
