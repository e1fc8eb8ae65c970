"""Draw a trained detector's predictions on images: boxes, class names and scores, optionally
the ground truth in grey, tiled into one PNG a person can look at.

Usage: ``python tools/visualize.py --checkpoint outputs/demo/checkpoint.pth --coco_path DATA
--out predictions.png [--num_images 12 --threshold 0.5]``. Model flags come from the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

if not __package__:  # run as ``python tools/visualize.py``
    import _repo_root  # noqa: F401

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def load_model_from_checkpoint(path: str | Path, device: str = "cpu"):
    """Rebuild the model from the flags stored in our checkpoint and load its weights."""
    import main as main_module
    from models import build_model
    from util.checkpoint import load_checkpoint, load_model_state, model_state_from_checkpoint

    ckpt = load_checkpoint(path)
    args = main_module.get_args_parser().parse_args([])
    for k, v in ckpt.get("args", {}).items():
        setattr(args, k, v)
    args.resume, args.device, args.backbone_weights = str(path), device, "none"
    main_module.resolve_args(args)
    model, _, postprocessors = build_model(args)
    load_model_state(model, model_state_from_checkpoint(ckpt, str(path)), str(path))
    return model.to(device).eval(), postprocessors, args


@torch.no_grad()
def draw_predictions(
    checkpoint: str | Path,
    image_folder: str | Path,
    ann_file: str | Path,
    out: str | Path,
    num_images: int = 12,
    threshold: float = 0.5,
    columns: int = 4,
) -> Path:
    import datasets.transforms as T

    model, postprocessors, args = load_model_from_checkpoint(checkpoint)
    coco = json.loads(Path(ann_file).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    gts: dict[int, list] = {}
    for a in coco["annotations"]:
        gts.setdefault(a["image_id"], []).append(a)
    size = args.val_size or 800
    tf = T.Compose([T.RandomResize([size], max_size=args.max_size or 1333), T.ToTensor(),
                    T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])  # fmt: skip
    tiles = []
    for info in coco["images"][:num_images]:
        img = Image.open(Path(image_folder) / info["file_name"]).convert("RGB")
        x, _ = tf(img, None)
        outputs = model([x])
        res = postprocessors["bbox"](outputs, torch.tensor([[img.height, img.width]]))[0]
        scale = max(1, 256 // max(img.size))
        canvas = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        draw = ImageDraw.Draw(canvas)
        for a in gts.get(info["id"], []):
            x0, y0, w, h = (v * scale for v in a["bbox"])
            draw.rectangle([x0, y0, x0 + w, y0 + h], outline=(160, 160, 160), width=1)
        keep = res["scores"] > threshold
        for s, lab, b in zip(res["scores"][keep], res["labels"][keep], res["boxes"][keep]):
            colour = COLOURS[int(lab) % len(COLOURS)]
            b = (b * scale).tolist()
            draw.rectangle(b, outline=colour, width=2)
            draw.text((b[0] + 2, b[1] + 1), f"{names.get(int(lab), int(lab))} {s:.2f}", fill=colour)
        tiles.append(canvas)
    if not tiles:
        raise ValueError(f"no images in {ann_file}")
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (w + 4), rows * (h + 4)), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * (w + 4), (i // columns) * (h + 4)))
    out = Path(out)
    sheet.save(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--coco_path", required=True, help="COCO layout folder; val2017 images are drawn")
    parser.add_argument("--out", default="predictions.png")
    parser.add_argument("--num_images", type=int, default=12)
    parser.add_argument("--threshold", type=float, default=0.5)
    a = parser.parse_args()
    root = Path(a.coco_path)
    path = draw_predictions(a.checkpoint, root / "val2017", root / "annotations" / "instances_val2017.json", a.out,
                            a.num_images, a.threshold)  # fmt: skip
    print(f"wrote {path}")
