"""Deterministic synthetic panoptic data in the COCO panoptic layout, the counterpart of ``datasets.synthetic``.

``generate_synthetic_panoptic(out_dir, ...)`` writes images, panoptic PNGs and json, and the things
in detection format, so that ``main.py --dataset_file coco_panoptic --coco_path out_dir
--coco_panoptic_path out_dir`` reads it like COCO panoptic (and ``--dataset_file coco`` like COCO
instances): the three shape classes as things, sky / grass / sand regions as stuff. Command line:
``python -m datasets.synthetic_panoptic --out DIR --num_train N --num_val M --size S --seed K``.
Not in the official code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from pycocotools import mask as coco_mask

from datasets.synthetic import (
    CATEGORIES,
    MAX_PAIR_IOU,
    TASKS,
    _box_iou,
    _shape_polygon,
    cli_parser,
    make_meta,
    rasterize_convex_polygon,
    reuse_or_clear,
)
from util.panoptic import id2rgb

GENERATOR_VERSION = 1
MIN_VISIBLE = 8
_PLACEMENT_TRIES = 20

_SHAPES = TASKS["shapes"]  # (name, shape, colour) of the thing categories 1..3
THING_CATEGORIES: list[dict[str, Any]] = [
    {**c, "isthing": 1, "color": list(_SHAPES[c["id"] - 1][2])} for c in CATEGORIES
]
STUFF_CATEGORIES: list[dict[str, Any]] = [
    {"id": 4, "name": "sky", "supercategory": "background", "isthing": 0, "color": [120, 140, 165]},
    {"id": 5, "name": "grass", "supercategory": "background", "isthing": 0, "color": [70, 85, 35]},
    {"id": 6, "name": "sand", "supercategory": "background", "isthing": 0, "color": [150, 125, 80]},
]
PANOPTIC_CATEGORIES = THING_CATEGORIES + STUFF_CATEGORIES
_COLOUR_OF = {c["id"]: np.array(c["color"]) for c in PANOPTIC_CATEGORIES}


def _stuff_map(rng: np.random.Generator, size: int) -> np.ndarray:
    """``[S, S]`` stuff category ids: sky above the horizon, grass and/or sand below."""
    cats = np.full((size, size), 4, dtype=np.int64)
    horizon = int(rng.integers(round(0.3 * size), round(0.6 * size) + 1))
    layout = int(rng.integers(0, 3))  # 0: grass | sand, 1: grass, 2: sand
    if layout == 0:
        border = int(rng.integers(round(0.25 * size), round(0.75 * size) + 1))
        cats[horizon:, :border] = 5
        cats[horizon:, border:] = 6
    else:
        cats[horizon:, :] = 5 if layout == 1 else 6
    return cats


def make_panoptic_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One image ``[S, S, 3]`` uint8, its segment-id map ``[S, S]`` and ``segments_info``
    (``id``, ``category_id``, ``iscrowd``, ``bbox`` xywh, ``area``).

    The image is split into stuff regions: "sky" (category 4) above a random horizon and, below it,
    "grass" (5) and/or "sand" (6), side by side with a random vertical border or one of them alone
    (2-3 stuff segments). On top, 1-4 things of the three shape categories of ``datasets.synthetic``.
    Later shapes occlude earlier ones; segments are the visible (modal) pixels, and shapes with fewer
    than ``MIN_VISIBLE`` visible pixels are dropped (their pixels go back to the stuff). There is no
    void and no crowd. Segment ids are ``1000 * category_id + k`` (multi-byte colours).
    """
    stuff = _stuff_map(rng, size)
    things = np.zeros((size, size), dtype=np.int64)  # 0 = no thing, else index + 1 into thing_cats
    thing_cats: list[int] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, 5))):
        for _ in range(_PLACEMENT_TRIES):
            w, h = rng.uniform(size / 6, size / 2), rng.uniform(size / 6, size / 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            if all(_box_iou((x, y, w, h), other) <= MAX_PAIR_IOU for other in placed):
                break
        else:
            continue
        category_id = int(rng.integers(1, len(THING_CATEGORIES) + 1))
        shape = _SHAPES[category_id - 1][1]
        mask = rasterize_convex_polygon(_shape_polygon(shape, x, y, w, h, rng), size, size)
        if not mask.any():
            continue
        placed.append((x, y, w, h))
        thing_cats.append(category_id)
        things[mask] = len(thing_cats)

    id_map = np.zeros((size, size), dtype=np.int64)
    segment_cats: dict[int, int] = {}
    counters: dict[int, int] = {}
    for k, category_id in enumerate(thing_cats, start=1):
        if (things == k).sum() < MIN_VISIBLE:
            things[things == k] = 0  # hidden: back to stuff
            continue
        counters[category_id] = counters.get(category_id, 0) + 1
        seg_id = 1000 * category_id + counters[category_id]
        id_map[things == k] = seg_id
        segment_cats[seg_id] = category_id
    for category_id in (4, 5, 6):
        region = (things == 0) & (stuff == category_id)
        if region.any():
            seg_id = 1000 * category_id + 1
            id_map[region] = seg_id
            segment_cats[seg_id] = category_id

    image = np.zeros((size, size, 3), dtype=np.float64)
    segments = []
    for seg_id in sorted(segment_cats, key=lambda s: (segment_cats[s] > 3, s)):
        category_id = segment_cats[seg_id]
        mask = id_map == seg_id
        colour = np.clip(_COLOUR_OF[category_id] + rng.integers(-20, 21, size=3), 0, 255)
        image[mask] = colour + rng.normal(0.0, 8.0, size=(int(mask.sum()), 3))
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
        segments.append({"id": seg_id, "category_id": category_id, "iscrowd": 0, "bbox": bbox, "area": int(mask.sum())})
    return np.clip(image, 0, 255).astype(np.uint8), id_map, segments


def _write_split(out: Path, split: str, num_images: int, size: int, seed: int) -> None:
    img_dir, png_dir = out / f"{split}2017", out / f"panoptic_{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    images, pan_anns, det_anns = [], [], []
    for index in range(num_images):
        image_id = index + 1
        pixels, id_map, segments = make_panoptic_image(np.random.default_rng([seed, index]), size)
        file_name = f"{image_id:012d}.png"
        PIL.Image.fromarray(pixels).save(img_dir / file_name, compress_level=1)
        PIL.Image.fromarray(id2rgb(id_map)).save(png_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        pan_anns.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
        for seg in segments:
            if seg["category_id"] > len(THING_CATEGORIES):
                continue
            rle = coco_mask.encode(np.asfortranarray((id_map == seg["id"]).astype(np.uint8)))
            det_anns.append(
                {
                    "id": len(det_anns) + 1,
                    "image_id": image_id,
                    "category_id": seg["category_id"],
                    "iscrowd": 0,
                    "bbox": [float(v) for v in seg["bbox"]],
                    "area": float(seg["area"]),
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                }
            )
    info = {"description": f"synthetic panoptic shapes ({split})", "version": str(GENERATOR_VERSION)}
    ann_dir = out / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    pan = {"info": info, "licenses": [], "images": images, "annotations": pan_anns, "categories": PANOPTIC_CATEGORIES}
    (ann_dir / f"panoptic_{split}2017.json").write_text(json.dumps(pan))
    det = {"info": info, "licenses": [], "images": images, "annotations": det_anns, "categories": CATEGORIES}
    (ann_dir / f"instances_{split}2017.json").write_text(json.dumps(det))


def generate_synthetic_panoptic(
    out_dir: str | Path,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 128,
    seed: int = 0,
    val_seed: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Write the data set to ``out_dir``; return its ``meta.json`` dict::

        out_dir/{train,val}2017/000000000001.png ...           images
        out_dir/panoptic_{train,val}2017/000000000001.png ...  panoptic PNGs (id = R + 256 G + 256^2 B)
        out_dir/annotations/panoptic_{train,val}2017.json      segments_info, categories with isthing
        out_dir/annotations/instances_{train,val}2017.json     the things in detection format (RLE masks)
        out_dir/meta.json                                       generation parameters; written last

    Each image uses its own generator seeded with ``(seed, index)`` (validation: ``(val_seed,
    index)``, ``val_seed`` defaults to ``seed + 1``).

    Nothing is written when ``out_dir/meta.json`` already records the same parameters
    (``meta["skipped"]`` is True); a non-empty ``out_dir`` without our ``meta.json`` is refused.
    """
    out = Path(out_dir)
    meta = make_meta("datasets.synthetic_panoptic", GENERATOR_VERSION, num_train, num_val, image_size, seed, val_seed)
    val_seed = meta["val_seed"]
    required = [out / "annotations" / f"{kind}_{split}2017.json" for kind in ("panoptic", "instances")
                for split in ("train", "val")]  # fmt: skip
    folders = ["train2017", "val2017", "panoptic_train2017", "panoptic_val2017"]
    if reuse_or_clear(out, meta, required, folders, verbose):
        return {**meta, "skipped": True}

    start = time.perf_counter()
    _write_split(out, "train", num_train, image_size, seed)
    _write_split(out, "val", num_val, image_size, val_seed)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if verbose:
        print(
            f"wrote synthetic panoptic data set to {out}: {num_train} train + {num_val} val images of "
            f"{image_size}x{image_size} in {time.perf_counter() - start:.1f}s"
        )
    return {**meta, "skipped": False}


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(
        "Generate the synthetic panoptic data set in COCO panoptic layout.",
        "output folder (--coco_path and --coco_panoptic_path)",
    )
    args = parser.parse_args(argv)
    generate_synthetic_panoptic(args.out, args.num_train, args.num_val, args.size, args.seed, args.val_seed)


if __name__ == "__main__":
    main()
