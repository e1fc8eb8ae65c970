"""Deterministic synthetic "shapes" detection data in the COCO 2017 layout, for the demo and the tests.

``generate_synthetic_coco(out_dir, ...)`` writes ``train2017/``, ``val2017/``,
``annotations/instances_{train,val}2017.json`` and ``meta.json`` (the parameters, written last), so
that ``main.py --coco_path out_dir`` reads it like COCO; ``task="shapes5"`` is a five-class task for
fine-tuning experiments. Command line:
``python -m datasets.synthetic --out DIR --num_train N --num_val M --size S --seed K [--task shapes5]``.
Not in the official code.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

GENERATOR_VERSION = 2
MAX_PAIR_IOU = 0.3
_PLACEMENT_TRIES = 20
_ELLIPSE_VERTICES = 32

# task -> categories: (name, shape, base RGB colour; each object gets a jittered version of it). The
# three classes of "shapes" differ in both shape and colour; in "shapes5" (fine-tuning experiments)
# neither the shape alone nor the colour alone tells the class.
TASKS: dict[str, list[tuple[str, str, tuple[int, int, int]]]] = {
    "shapes": [
        ("red rectangle", "rectangle", (220, 40, 40)),
        ("green ellipse", "ellipse", (40, 200, 60)),
        ("blue triangle", "triangle", (50, 90, 230)),
    ],
}
TASKS["shapes5"] = [
    *TASKS["shapes"],
    ("yellow ellipse", "ellipse", (225, 205, 40)),
    ("cyan rectangle", "rectangle", (40, 200, 210)),
]


def categories(task: str = "shapes") -> list[dict[str, Any]]:
    """The COCO ``categories`` of ``task`` (ids from 1)."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; known: {sorted(TASKS)}")
    return [{"id": i, "name": name, "supercategory": "shape"} for i, (name, _, _) in enumerate(TASKS[task], 1)]


CATEGORIES: list[dict[str, Any]] = categories("shapes")


def _shape_polygon(shape: str, x: float, y: float, w: float, h: float, rng: np.random.Generator) -> np.ndarray:
    """Convex polygon ``[K, 2]`` of (x, y) vertices inscribed in the box (x, y, w, h)."""
    if shape == "rectangle":
        return np.array([[x, y], [x, y + h], [x + w, y + h], [x + w, y]], dtype=np.float64)
    if shape == "ellipse":
        t = np.linspace(0.0, 2.0 * math.pi, _ELLIPSE_VERTICES, endpoint=False)
        return np.stack([x + w / 2 + w / 2 * np.cos(t), y + h / 2 - h / 2 * np.sin(t)], axis=1)
    apex = x + w * rng.uniform(0.2, 0.8)
    return np.array([[apex, y], [x, y + h], [x + w, y + h]], dtype=np.float64)


def rasterize_convex_polygon(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[H, W]`` bool mask of the pixels whose centre ``(i + 0.5, j + 0.5)`` lies in the convex ``poly``
    (pycocotools' convention, so that decoded polygons match the drawn pixels)."""
    mask = np.zeros((height, width), dtype=bool)
    x0 = max(int(math.floor(poly[:, 0].min())), 0)
    x1 = min(int(math.ceil(poly[:, 0].max())), width)
    y0 = max(int(math.floor(poly[:, 1].min())), 0)
    y1 = min(int(math.ceil(poly[:, 1].max())), height)
    if x1 <= x0 or y1 <= y0:
        return mask
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    # Orientation-independent half-plane test: every edge cross product has the polygon's sign.
    nxt = np.roll(poly, -1, axis=0)
    signed_area = float(np.sum(poly[:, 0] * nxt[:, 1] - nxt[:, 0] * poly[:, 1]))
    sign = 1.0 if signed_area >= 0 else -1.0
    inside = np.ones((y1 - y0, x1 - x0), dtype=bool)
    for (ax, ay), (bx, by) in zip(poly, nxt):
        inside &= sign * ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) >= 0
    mask[y0:y1, x0:x1] = inside
    return mask


def _box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _make_image(rng: np.random.Generator, size: int, task: str = "shapes") -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One ``[S, S, 3]`` uint8 image and its objects ``{category_id, bbox, area, segmentation}``.

    A dark noisy background and 1-4 objects with sides in [1/6, 1/2] of the image side. Objects may
    overlap partially (pairwise box IoU at most ``MAX_PAIR_IOU``; later objects are painted over
    earlier ones). Annotations are amodal: ``segmentation`` is the shape's polygon, ``bbox`` the
    tight box around all pixels of the shape as drawn (before occlusion), ``area`` its pixel count.
    """
    kinds = TASKS[task]
    base = rng.integers(0, 50, size=3)
    image = rng.standard_normal(size=(size, size, 3), dtype=np.float32)
    image *= 10.0
    image += base.astype(np.float32)
    num_objects = int(rng.integers(1, 5))
    placed: list[tuple[float, float, float, float]] = []
    objects = []
    for _ in range(num_objects):
        for _ in range(_PLACEMENT_TRIES):
            w = rng.uniform(size / 6, size / 2)
            h = rng.uniform(size / 6, size / 2)
            x = rng.uniform(0, size - w)
            y = rng.uniform(0, size - h)
            if all(_box_iou((x, y, w, h), other) <= MAX_PAIR_IOU for other in placed):
                break
        else:
            continue  # no room: the image gets fewer objects (at least one is always placed)
        category_id = int(rng.integers(1, len(kinds) + 1))
        _, shape, base_colour = kinds[category_id - 1]
        poly = _shape_polygon(shape, x, y, w, h, rng)
        mask = rasterize_convex_polygon(poly, size, size)
        if not mask.any():
            continue
        colour = np.clip(np.array(base_colour) + rng.integers(-25, 26, size=3), 0, 255)
        image[mask] = colour + 6.0 * rng.standard_normal(size=(int(mask.sum()), 3), dtype=np.float32)
        ys, xs = np.nonzero(mask)
        bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        placed.append((x, y, w, h))
        objects.append(
            {
                "category_id": category_id,
                "bbox": [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                "area": float(mask.sum()),
                "segmentation": [[round(float(v), 2) for v in poly.reshape(-1)]],
            }
        )
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8), objects


def _write_split(
    folder: Path, ann_file: Path, num_images: int, size: int, seed: int, split: str, task: str = "shapes"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image_id = index + 1
        pixels, objects = _make_image(np.random.default_rng([seed, index]), size, task)
        file_name = f"{image_id:012d}.png"
        PIL.Image.fromarray(pixels).save(folder / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
    data = {
        "info": {"description": f"synthetic shapes ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(task),
    }
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))


def make_meta(
    generator: str, version: int, num_train: int, num_val: int, image_size: int, seed: int, val_seed: int | None
) -> dict[str, Any]:
    """Check a generator's parameters and record them (``val_seed`` defaults to ``seed + 1``)."""
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train/num_val must be >= 0, got {num_train}/{num_val}")
    if image_size < 12:
        raise ValueError(f"image_size must be >= 12 pixels, got {image_size}")
    val_seed = seed + 1 if val_seed is None else val_seed
    if val_seed == seed:
        raise ValueError(f"val_seed must differ from seed (both {seed}): the splits would be identical")
    return {
        "generator": generator,
        "version": version,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "val_seed": val_seed,
    }


def reuse_or_clear(
    out: Path, meta: dict[str, Any], required: list[Path], png_folders: list[str], verbose: bool
) -> bool:
    """True when ``out`` already holds the data set ``meta`` describes (its ``meta.json`` matches and
    the ``required`` files exist): nothing to write. Otherwise removes our stale ``meta.json`` and
    PNGs and returns False. A folder holding anything else is refused, so real data is never overwritten.
    """
    meta_file = out / "meta.json"
    if meta_file.is_file():
        try:
            old = json.loads(meta_file.read_text())
        except json.JSONDecodeError:
            old = None
        if old == meta and all(p.is_file() for p in required):
            if verbose:
                print(f"{meta['generator']}: data set already in {out} with the same parameters; not regenerating")
            return True
        if isinstance(old, dict) and old.get("generator") not in (None, meta["generator"]):
            raise FileExistsError(f"{out} holds another data set ({meta_file}); refusing to write into it")
        meta_file.unlink()  # stale or different parameters: regenerate
        for folder in png_folders:
            for png in (out / folder).glob("*.png"):
                png.unlink()
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists, is not empty and has no synthetic meta.json; refusing to write into it")
    return False


def generate_synthetic_coco(
    out_dir: str | Path,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 128,
    seed: int = 0,
    val_seed: int | None = None,
    verbose: bool = True,
    task: str = "shapes",
) -> dict[str, Any]:
    """Write the synthetic data set to ``out_dir`` (COCO 2017 layout); return its ``meta.json`` dict.
    ``task``: ``"shapes"`` (3 classes, the demo's) or ``"shapes5"`` (5 classes; see ``TASKS``).
    Each image uses its own generator seeded with ``(seed, index)`` (validation: ``(val_seed,
    index)``): the output depends only on the parameters.

    ``val_seed`` defaults to ``seed + 1`` and must differ from ``seed``. If ``out_dir/meta.json``
    already records the same parameters and the annotation files exist, nothing is written
    (``meta["skipped"]`` is True). A non-empty ``out_dir`` without our ``meta.json`` is refused,
    so a real data set is never overwritten.
    """
    out = Path(out_dir)
    meta = make_meta("datasets.synthetic", GENERATOR_VERSION, num_train, num_val, image_size, seed, val_seed)
    categories(task)  # unknown task: ValueError before anything is written
    if task != "shapes":  # the demo's data keeps the meta.json it always had
        meta["task"] = task
    val_seed = meta["val_seed"]
    train_ann = out / "annotations" / "instances_train2017.json"
    val_ann = out / "annotations" / "instances_val2017.json"
    if reuse_or_clear(out, meta, [train_ann, val_ann], ["train2017", "val2017"], verbose):
        return {**meta, "skipped": True}

    start = time.perf_counter()
    _write_split(out / "train2017", train_ann, num_train, image_size, seed, "train", task)
    _write_split(out / "val2017", val_ann, num_val, image_size, val_seed, "val", task)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if verbose:
        print(
            f"wrote synthetic data set to {out}: {num_train} train + {num_val} val images of "
            f"{image_size}x{image_size} in {time.perf_counter() - start:.1f}s"
        )
    return {**meta, "skipped": False}


def cli_parser(description: str, out_help: str) -> argparse.ArgumentParser:
    """The command line shared by the synthetic data generators."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_val", type=int, default=200)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val_seed", type=int, default=None, help="default: seed + 1")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser("Generate the synthetic shapes data set in COCO layout.", "output folder (becomes --coco_path)")
    parser.add_argument("--task", default="shapes", choices=sorted(TASKS), help="shapes (3 classes) or shapes5 (5)")
    args = parser.parse_args(argv)
    generate_synthetic_coco(args.out, args.num_train, args.num_val, args.size, args.seed, args.val_seed, task=args.task)


if __name__ == "__main__":
    main()
