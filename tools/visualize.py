"""Draw a trained detector's predictions on images, tiled into one PNG a person can read.

Only predictions scoring at least ``threshold`` are drawn (the threshold is written in the
picture's title), each as a solid box in its class's colour with a filled label (class name and
score) whose font grows with the picture; the ground truth is drawn as thin dashed white boxes.
Small images are upscaled (96 px demo images become 384 px tiles) so that boxes and labels are
legible. Not in the official code, whose notebooks draw with matplotlib one image at a time.

Usage: ``python tools/visualize.py --checkpoint outputs/demo/checkpoint.pth --coco_path DATA
--out predictions.png [--num_images 12 --threshold 0.5]``. Model flags come from the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as ``python tools/visualize.py``
    import _repo_root  # noqa: F401

import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

# Bright colours that stand out on dark backgrounds and on red/green/blue objects; white is the
# ground truth's. Class id ``c`` gets ``COLOURS[c % len(COLOURS)]``.
COLOURS = [(255, 150, 0), (255, 221, 0), (255, 70, 255), (0, 225, 255), (170, 255, 60), (255, 120, 140)]
GT_COLOUR = (255, 255, 255)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (Pillow >= 10.1); its fixed small bitmap font before."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # old Pillow, or Pillow built without FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return int(x1 - x0), int(y1 - y0)


def dashed_rectangle(
    draw: ImageDraw.ImageDraw, box: Sequence[float], colour: tuple[int, int, int], width: int, dash: int
) -> None:
    """Outline ``box = (x0, y0, x1, y1)`` with dashes of ``dash`` pixels (gaps as long)."""
    x0, y0, x1, y1 = box
    for a, b, horizontal, fixed in ((x0, x1, True, y0), (x0, x1, True, y1), (y0, y1, False, x0), (y0, y1, False, x1)):
        start = a
        while start < b:
            end = min(start + dash, b)
            line = [(start, fixed), (end, fixed)] if horizontal else [(fixed, start), (fixed, end)]
            draw.line(line, fill=colour, width=width)
            start += 2 * dash


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_label(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float],
    text: str,
    colour: tuple[int, int, int],
    font: ImageFont.ImageFont,
    canvas_size: tuple[int, int],
    taken: list[list[float]] | None = None,
) -> list[float]:
    """``text`` on a filled ``colour`` background at the first of these places that stays inside
    the canvas and clear of the labels in ``taken``: above ``box``'s top-left corner, inside it,
    below its bottom edge (else above). Returns the label's rectangle (appended to ``taken``)."""
    tw, th = _text_size(draw, text, font)
    pad = max(2, th // 5)
    w, h = tw + 2 * pad, th + 2 * pad
    x = min(max(0.0, box[0]), max(0.0, canvas_size[0] - w))
    candidates = [box[1] - h, box[1], box[3]]
    inside = [y for y in candidates if 0 <= y <= canvas_size[1] - h] or [min(max(0.0, box[1]), canvas_size[1] - h)]
    taken = [] if taken is None else taken
    rects = [[x, y, x + w, y + h] for y in inside]
    rect = next((r for r in rects if not any(_overlaps(r, t) for t in taken)), rects[0])
    draw.rectangle(rect, fill=colour)
    left, top = draw.textbbox((0, 0), text, font=font)[:2]
    draw.text((rect[0] + pad - left, rect[1] + pad - top), text, fill=TEXT, font=font)
    taken.append(rect)
    return rect


def draw_detections(
    image: Image.Image,
    boxes: torch.Tensor,
    labels: Sequence[int],
    scores: Sequence[float],
    names: dict[int, str],
    gt_boxes: Sequence[Sequence[float]] = (),
    min_side: int = 384,
) -> Image.Image:
    """One tile: ``image`` upscaled (integer factor) until its longer side is at least ``min_side``,
    the ground truth ``gt_boxes`` (COCO ``x, y, w, h`` pixels of ``image``) dashed white, then the
    predictions ``boxes [N, 4]`` (xyxy pixels of ``image``) with their class name and score.
    Draws every prediction it is given: filter by score first."""
    scale = max(1, -(-min_side // max(image.size)))
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    side = max(canvas.size)
    line = max(2, side // 128)
    font = load_font(max(11, side // 24))
    for x, y, w, h in gt_boxes:
        dashed_rectangle(
            draw, [x * scale, y * scale, (x + w) * scale, (y + h) * scale], GT_COLOUR, 1, max(3, side // 64)
        )
    scaled = [[v * scale for v in box] for box in boxes.tolist()]
    for b, label in zip(scaled, labels):  # every box first, then the labels on top
        draw.rectangle(b, outline=COLOURS[int(label) % len(COLOURS)], width=line)
    taken: list[list[float]] = []
    for b, label, score in zip(scaled, labels, scores):
        text = f"{names.get(int(label), int(label))} {float(score):.2f}"
        draw_label(draw, b, text, COLOURS[int(label) % len(COLOURS)], font, canvas.size, taken)
    return canvas


def tile_sheet(tiles: Sequence[Image.Image], title: str, columns: int = 4, gap: int = 8) -> Image.Image:
    """Tiles in a grid under a title strip (font scaled with the tile size)."""
    if not tiles:
        raise ValueError("tile_sheet: no tiles")
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    columns = min(columns, len(tiles))
    rows = (len(tiles) + columns - 1) // columns
    font = load_font(max(12, w // 20))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_h = _text_size(probe, title, font)[1] + 2 * gap
    sheet = Image.new("RGB", (columns * (w + gap) + gap, title_h + rows * (h + gap) + gap), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    left, top = draw.textbbox((0, 0), title, font=font)[:2]
    draw.text((gap - left, gap - top), title, fill=TEXT, font=font)
    for i, t in enumerate(tiles):
        sheet.paste(t, (gap + (i % columns) * (w + gap), title_h + gap + (i // columns) * (h + gap)))
    return sheet


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
    min_side: int = 384,
) -> Path:
    """Predictions of ``checkpoint`` on the first ``num_images`` images of ``ann_file`` (scores
    ``>= threshold`` only) with the ground truth, as one PNG ``out`` (written atomically)."""
    import datasets.transforms as T

    model, postprocessors, args = load_model_from_checkpoint(checkpoint)
    coco = json.loads(Path(ann_file).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    gts: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            gts.setdefault(a["image_id"], []).append(a["bbox"])
    size = args.val_size or 800
    tf = T.Compose([T.RandomResize([size], max_size=args.max_size or 1333), T.ToTensor(),
                    T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])  # fmt: skip
    tiles = []
    for info in coco["images"][:num_images]:
        img = Image.open(Path(image_folder) / info["file_name"]).convert("RGB")
        x, _ = tf(img, None)
        res = postprocessors["bbox"](model([x]), torch.tensor([[img.height, img.width]]))[0]
        keep = res["scores"] >= threshold
        tiles.append(
            draw_detections(img, res["boxes"][keep], res["labels"][keep].tolist(), res["scores"][keep].tolist(),
                            names, gts.get(info["id"], []), min_side=min_side)
        )  # fmt: skip
    if not tiles:
        raise ValueError(f"no images in {ann_file}")
    title = f"Predictions with score >= {threshold:g} (class, score)    ground truth: dashed white"
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.png")
    tile_sheet(tiles, title, columns).save(tmp)
    tmp.replace(out)
    return out


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
