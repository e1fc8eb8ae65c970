"""Draw a trained detector's predictions on images, tiled into one PNG a person can read.

``python tools/visualize.py --checkpoint outputs/demo/checkpoint.pth --coco_path DATA --out
predictions.png [--num_images 12 --threshold 0.5]`` (model flags come from the checkpoint) draws the
predictions scoring at least the threshold and the ground truth (``draw_predictions``, with the
drawing of ``tools/drawing.py``); it makes the demo's ``predictions.png``. Not in the official code,
whose notebooks draw with matplotlib one image at a time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

if not __package__:  # run as ``python tools/visualize.py``
    import _repo_root  # noqa: F401

import torch  # noqa: E402

from tools import drawing  # noqa: E402
from tools.inference import (  # noqa: E402
    batch_images,
    class_names,
    eval_transform,
    load_detector,
    original_sizes,
    read_image,
    save_png,
)


@torch.no_grad()
def draw_predictions(
    checkpoint: str | Path,
    image_folder: str | Path,
    ann_file: str | Path,
    out: str | Path,
    num_images: int = 12,
    threshold: float = 0.5,
    columns: int = 4,
    min_side: int = 384,
) -> Path:
    """Predictions of ``checkpoint`` on the first ``num_images`` images of ``ann_file`` (scores
    ``>= threshold`` only) with the ground truth, each image upscaled until its longer side is at
    least ``min_side``, in ``columns`` columns under a title, as one PNG ``out`` (written atomically).
    Class names: the annotation file's, else the checkpoint's. The threshold is written in the
    title; predictions are solid boxes in their class's colour with filled labels, the ground truth
    thin dashed white boxes; upscaling keeps boxes and labels legible (96 px demo images become 384
    px tiles). The model is rebuilt by ``main.build_model_from_checkpoint`` (through
    ``tools.inference.load_detector``); images are read and preprocessed as ``main.py --eval`` does."""
    loaded = load_detector(str(checkpoint))
    transform = eval_transform(loaded.args)
    coco = json.loads(Path(ann_file).read_text())
    names = {**class_names(loaded), **{c["id"]: c["name"] for c in coco["categories"]}}
    gts: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            gts.setdefault(a["image_id"], []).append(a["bbox"])
    tiles = []
    for info in coco["images"][:num_images]:
        image = read_image(Path(image_folder) / info["file_name"])
        samples, _ = batch_images([image], transform)
        res = loaded.postprocessors["bbox"](loaded.model(samples), original_sizes([image]))[0]
        keep = res["scores"] >= threshold
        tile = drawing.draw_detections(
            image, res["boxes"][keep].tolist(), res["labels"][keep].tolist(), res["scores"][keep].tolist(), names,
            min_side=min_side, gt_boxes=gts.get(info["id"], []), font_size=max(14, min_side // 24),
        )  # fmt: skip
        tiles.append(tile)
    if not tiles:
        raise ValueError(f"no images in {ann_file}")
    title = f"Predictions with score >= {threshold:g} (class, score)    ground truth: dashed white"
    sheet = drawing.titled(drawing.grid(tiles, columns), title, max(16, min_side // 20))
    return save_png(sheet, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--coco_path", required=True, help="COCO layout folder; val2017 images are drawn")
    parser.add_argument("--out", default="predictions.png")
    parser.add_argument("--num_images", type=int, default=12)
    parser.add_argument("--threshold", type=float, default=0.5, help="draw predictions scoring at least this")
    a = parser.parse_args()
    root = Path(a.coco_path)
    path = draw_predictions(a.checkpoint, root / "val2017", root / "annotations" / "instances_val2017.json", a.out,
                            a.num_images, a.threshold)  # fmt: skip
    print(f"wrote {path}")
