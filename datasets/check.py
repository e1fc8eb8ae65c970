"""The data set check: every problem of a split found before training, and reported all at once.

Not in the official code. The builders of ``datasets/`` run it at start-up on every split they
build, and it runs on its own as::

    python -m datasets.check --dataset_file coco PATH                     # COCO layout (both splits)
    python -m datasets.check --dataset_file coco --train_images DIR --train_annotations FILE ...
    python -m datasets.check --dataset_file coco_panoptic COCO_PATH [PANOPTIC_PATH]
    python -m datasets.check --dataset_file voc VOCdevkit [--voc_years 2007,2012] [--val_split test]
    python -m datasets.check --dataset_file yolo DIR_OR_DATA_YAML
    (any data flag of main.py is accepted: --check_images full, --num_classes N, --max_bad_images F, ...)

which prints every problem of both splits (and category ids of either split at or above
``--num_classes``, by default the training split's max id + 1) and exits with status 1 when
training would be refused.

What is checked (the annotation files are read whole; images per ``--check_images``):

* the annotation files themselves (format-specific: COCO JSON structure, VOC XML, YOLO labels),
  every annotation (box, image and category references, category ids below ``--num_classes``),
  with the file, line or annotation / image id of each problem;
* every image file (``datasets.images.probe_image``): present, decodable header, truncation signs,
  its displayed size (after EXIF orientation) against the annotation file's ``width``/``height``;
* a validation split with no image is an error; one with images but no annotation is a warning
  (COCO AP is then -1).

What happens: fatal problems (everything but unreadable images) stop the run with one
``DatasetError`` listing them all. Images that cannot be read are skipped with a warning naming
each, unless there are more than ``--max_bad_images`` (a fraction of the split, default 0.1 %),
which stops the run too. Fixes made while loading (missing ``width``/``height`` read from the
images, and the COCO normalisations of ``datasets.coco``) are counted in the log.

In a distributed run each rank probes the images of its shard and the results are gathered, so
the check costs one pass over the files in total.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from datasets.problems import DatasetError, format_problems


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


def run_check(args: argparse.Namespace, splits: Sequence[str], build: Callable[[str, Any], Any]) -> int:
    """Build each split with ``build(split, args)`` (which runs the check), then check the category
    ids of every split against ``--num_classes`` (default: the training split's max id + 1, as
    ``main.py`` derives it). Prints what was found; returns 0 when training could start, else 1."""
    from datasets import check_num_classes, max_category_id

    status, built = 0, {}
    for split in splits:
        try:
            built[split] = ds = build(split, args)
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


__all__ = ["main", "run_check"]
