"""Panoptic results for people and for tools: COCO panoptic PNG + JSON, and coloured overlays.

``write_coco_panoptic`` writes ``PostProcessPanoptic`` outputs in the panopticapi layout (readable
by ``datasets.panoptic_eval``); ``panoptic_overlay`` blends one colour per segment into the image.
``python tools/visualize_panoptic.py --coco_path DATA --coco_panoptic_path DATA --out DIR
[--checkpoint CKPT]`` writes ``DIR/overlay_<image id>.png`` of the ground truth of the validation
images, or of a ``--masks`` model's predictions (and their PNG + JSON). Not in the official code,
whose panoptic notebook draws with detectron2.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util.panoptic import read_panoptic_png  # noqa: E402

if TYPE_CHECKING:
    from models.loading import LoadedModel


def _palette_colour(category_id: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((category_id * 0.618034) % 1.0, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _segment_colour(cat: dict[str, Any] | None, category_id: int, instance: int) -> np.ndarray:
    base = np.array(cat["color"] if cat and "color" in cat else _palette_colour(category_id), dtype=np.float64)
    if cat is None or cat.get("isthing", 1):  # instances of one class: alternately lighter / darker
        base = base + (instance % 5 - 2) * 22.0
    return np.clip(base, 0, 255)


def decode_png(png: bytes | str | Path | Image.Image) -> np.ndarray:
    """A panoptic PNG (bytes, path or image) -> ``[H, W]`` int64 segment ids."""
    return read_panoptic_png(png)


def panoptic_overlay(
    image: Image.Image | np.ndarray,
    id_map: np.ndarray,
    segments_info: list[dict[str, Any]],
    categories: dict[int, dict[str, Any]] | list[dict[str, Any]],
    alpha: float = 0.55,
    scale: int = 1,
    labels: bool = True,
) -> Image.Image:
    """``image`` (RGB, same size as ``id_map [H, W]``) with each segment of ``segments_info`` filled
    in its colour at opacity ``alpha`` (stuff: the category's colour; things: a shade of it per
    instance), borders in white, names at the centres; void stays as is.
    ``scale`` enlarges the result (nearest) so small images stay readable."""
    if isinstance(categories, list):
        categories = {int(c["id"]): c for c in categories}
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    if img.shape[:2] != id_map.shape:
        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]}, panoptic map {id_map.shape[1]}x{id_map.shape[0]}")
    out = img.copy()
    counts: dict[int, int] = {}
    centres = []
    for seg in segments_info:
        mask = id_map == int(seg["id"])
        if not mask.any():
            continue
        cid = int(seg["category_id"])
        counts[cid] = counts.get(cid, 0) + 1
        colour = _segment_colour(categories.get(cid), cid, counts[cid])
        out[mask] = (1 - alpha) * img[mask] + alpha * colour
        ys, xs = np.nonzero(mask)
        centres.append((float(xs.mean()), float(ys.mean()), categories.get(cid, {}).get("name", str(cid))))
    border = np.zeros(id_map.shape, dtype=bool)
    border[:, 1:] |= id_map[:, 1:] != id_map[:, :-1]
    border[1:, :] |= id_map[1:, :] != id_map[:-1, :]
    out[border] = 255
    result = Image.fromarray(out.astype(np.uint8))
    if scale > 1:
        result = result.resize((result.width * scale, result.height * scale), Image.NEAREST)
    if labels:
        draw = ImageDraw.Draw(result)
        for x, y, name in centres:
            x, y = x * scale, y * scale
            draw.text((x - 3 * len(name) + 1, y - 4), name, fill=(0, 0, 0))
            draw.text((x - 3 * len(name), y - 5), name, fill=(255, 255, 255))
    return result


def write_coco_panoptic(
    predictions: list[dict[str, Any]], out_dir: str | Path, categories: list[dict[str, Any]]
) -> Path:
    """Write ``predictions`` (``png_string``, ``segments_info``, ``image_id``, ``file_name``) as
    ``out_dir/panoptic/*.png`` + ``out_dir/panoptic.json``; returns the json's path."""
    out_dir = Path(out_dir)
    png_dir = out_dir / "panoptic"
    png_dir.mkdir(parents=True, exist_ok=True)
    annotations = []
    for p in predictions:
        (png_dir / p["file_name"]).write_bytes(p["png_string"])
        annotations.append({k: p[k] for k in ("image_id", "file_name", "segments_info")})
    path = out_dir / "panoptic.json"
    path.write_text(json.dumps({"annotations": annotations, "categories": categories}))
    return path


def predict_panoptic(
    checkpoint: str | Path | LoadedModel, dataset: Any, threshold: float = 0.85, num_images: int = 8
) -> list[dict]:
    """Run the model of ``checkpoint`` (a path, or a ``models.loading.LoadedModel`` from
    ``tools.inference.load_detector``; trained with ``--masks``) on the first ``num_images`` of
    ``dataset`` (a ``CocoPanoptic`` with the validation transforms); ``PostProcessPanoptic`` outputs
    at the original image size, with ``image_id`` and ``file_name``."""
    import torch

    from models.segmentation import PostProcessPanoptic
    from tools.inference import load_detector

    loaded = load_detector(str(checkpoint)) if isinstance(checkpoint, (str, Path)) else checkpoint
    model = loaded.model
    if not hasattr(model, "mask_head"):
        raise ValueError(f"{loaded.source}: not a segmentation model (train it with --masks)")
    post = PostProcessPanoptic(dataset.is_thing_map(), threshold=threshold)
    results = []
    with torch.no_grad():
        for i in range(min(num_images, len(dataset))):
            img, target = dataset[i]
            res = post(model([img]), target["size"][None], target["orig_size"][None])[0]
            image_id = int(target["image_id"])
            results.append({**res, "image_id": image_id, "file_name": f"{image_id:012d}.png"})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw panoptic ground truth or predictions as coloured overlays.")
    parser.add_argument("--coco_path", required=True, help="images in COCO layout (val2017)")
    parser.add_argument("--coco_panoptic_path", required=True, help="panoptic annotations (official layout)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", default=None, help="a --masks checkpoint: draw its predictions")
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--split", default="val", choices=("train", "val"))
    args = parser.parse_args(argv)

    from datasets.coco_panoptic import CocoPanoptic, panoptic_paths
    from datasets.images import decode_image

    img_folder, png_folder, ann_file, _ = panoptic_paths(args.coco_path, args.coco_panoptic_path)[args.split]
    raw = CocoPanoptic(img_folder, png_folder, ann_file, transforms=None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    categories = raw.dataset["categories"]
    if args.checkpoint:
        from datasets.coco import transforms_from_args
        from tools.inference import load_detector

        loaded = load_detector(args.checkpoint)
        dataset = CocoPanoptic(img_folder, png_folder, ann_file, transforms=transforms_from_args("val", loaded.args))
        predictions = predict_panoptic(loaded, dataset, args.threshold, args.num_images)
        print(f"wrote {write_coco_panoptic([dict(p) for p in predictions], out, categories)}")
        drawn = [(p["image_id"], decode_png(p["png_string"]), p["segments_info"]) for p in predictions]
    else:
        drawn = []
        for i in range(min(args.num_images, len(raw))):
            id_map, segments = raw.load_segments(i)
            drawn.append((raw.ids[i], id_map, segments))
    for image_id, id_map, segments in drawn:
        info = raw.images[raw.ids.index(image_id)]
        image = decode_image(img_folder / info["file_name"])  # EXIF orientation, 16-bit: as in training
        scale = max(1, 256 // max(image.size))
        path = out / f"overlay_{image_id:012d}.png"
        panoptic_overlay(image, id_map, segments, categories, scale=scale).save(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
