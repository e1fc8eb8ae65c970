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
import sys
from pathlib import Path

if not __package__:  # run as ``python tools/visualize.py``
    import _repo_root  # noqa: F401


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
    ``tools.inference.load_detector``); images are read and preprocessed as ``main.py --eval`` does.
    The folder of ``out`` is created before the inference; progress is printed on long inputs."""
    import torch  # here, so that ``--help`` and bad arguments answer without importing torch

    from tools import drawing
    from tools.inference import (
        Progress,
        batch_images,
        class_names,
        eval_transform,
        load_detector,
        original_sizes,
        prepare_output_folder,
        read_image,
        save_png,
    )

    loaded = load_detector(str(checkpoint))
    prepare_output_folder(Path(out).parent)  # before the inference: a folder that cannot be written fails now
    transform = eval_transform(loaded.args)
    coco = json.loads(Path(ann_file).read_text())
    names = {**class_names(loaded), **{c["id"]: c["name"] for c in coco["categories"]}}
    gts: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            gts.setdefault(a["image_id"], []).append(a["bbox"])
    tiles, infos = [], coco["images"][:num_images]
    progress = Progress(len(infos))
    for done, info in enumerate(infos, start=1):
        image = read_image(Path(image_folder) / info["file_name"])
        samples, _ = batch_images([image], transform)
        with torch.no_grad():
            res = loaded.postprocessors["bbox"](loaded.model(samples), original_sizes([image]))[0]
        keep = res["scores"] >= threshold
        tile = drawing.draw_detections(
            image, res["boxes"][keep].tolist(), res["labels"][keep].tolist(), res["scores"][keep].tolist(), names,
            min_side=min_side, gt_boxes=gts.get(info["id"], []), font_size=max(14, min_side // 24),
        )  # fmt: skip
        tiles.append(tile)
        progress.update(done)
    if not tiles:
        raise ValueError(f"no images in {ann_file}")
    title = f"Predictions with score >= {threshold:g} (class, score)    ground truth: dashed white"
    sheet = drawing.titled(drawing.grid(tiles, columns), title, max(16, min_side // 20))
    return save_png(sheet, out)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--coco_path", required=True, help="COCO layout folder; val2017 images are drawn")
    parser.add_argument("--out", default="predictions.png", help="PNG file to write (its folder is created)")
    parser.add_argument("--num_images", type=int, default=12)
    parser.add_argument("--threshold", type=float, default=0.5, help="draw predictions scoring at least this")
    return parser


def main(argv: list[str] | None = None) -> int:
    a = get_parser().parse_args(argv)
    root = Path(a.coco_path)
    ann_file = root / "annotations" / "instances_val2017.json"
    if not ann_file.is_file():  # checked before the model is loaded
        raise SystemExit(f"error: --coco_path {root}: no annotation file {ann_file}")
    if a.num_images < 1:
        raise SystemExit(f"error: --num_images must be >= 1, got {a.num_images}")
    from tools.inference import USER_ERRORS

    try:
        path = draw_predictions(a.checkpoint, root / "val2017", ann_file, a.out, a.num_images, a.threshold)
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from e
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
