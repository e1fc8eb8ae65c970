"""``tools.drawing`` and ``tools.visualize``: predictions above the threshold only, filled labels
clear of each other, dashed ground truth, upscaled tiles in a grid under a title."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw

from tools import drawing
from tools.visualize import draw_predictions

NAMES = {1: "red rectangle", 2: "green ellipse"}


def test_tile_is_upscaled_with_solid_predictions_labels_and_dashed_ground_truth():
    image = Image.new("RGB", (96, 64), (0, 0, 0))
    boxes = [[10.0, 30.0, 50.0, 60.0]]
    tile = drawing.draw_detections(image, boxes, [1], [0.93], NAMES, min_side=384, gt_boxes=[[60, 8, 30, 40]])
    assert tile.size == (384, 256)  # scale 4
    px = np.asarray(tile)
    colour = np.array(drawing.colour(1))
    assert (px[150:230, 41] == colour).all()  # the prediction's left edge (x = 40 * 4), solid
    above = (px[:120, 42:120] == colour).all(axis=-1)  # above the box top (y = 120): the filled label
    rows = np.nonzero(above.mean(axis=1) > 0.3)[0]
    assert len(rows) >= 12 and rows.max() >= 115  # a label at least 12 px high, resting on the box
    label = px[rows.min() : rows.max() + 1, 42:120]
    assert (label != colour).any(axis=-1).mean() > 0.05  # with text on it
    top = px[32, 240:360]  # the ground truth's top edge (y = 8 * 4), dashed white
    white = (top == np.array(drawing.GT_COLOUR)).all(axis=-1)
    assert 0.3 < white.mean() < 0.7


def test_labels_of_boxes_at_one_place_do_not_cover_each_other():
    canvas = Image.new("RGB", (200, 200))
    draw, placed = ImageDraw.Draw(canvas), []
    rects = [drawing.draw_label(draw, (20, 60), f"object {i}", drawing.colour(i), 14, canvas.size, placed)
             for i in range(4)]  # fmt: skip
    assert placed == rects
    for i, a in enumerate(rects):
        assert min(a) >= 0 and max(a) <= 200 and a[3] - a[1] >= 14  # inside the canvas, text high
        assert not any(drawing._overlaps(a, b) for b in rects[i + 1 :])


def test_titled_grid():
    tiles = [Image.new("RGB", (50, 40), drawing.colour(i)) for i in range(3)]
    grid = drawing.grid(tiles, columns=2, gap=8)
    assert grid.size == (2 * 50 + 3 * 8, 2 * 40 + 3 * 8)
    assert grid.getpixel((8, 8)) == drawing.colour(0) and grid.getpixel((8, 8 + 40 + 8)) == drawing.colour(2)
    sheet = drawing.titled(grid, "title", 16)
    assert sheet.width == grid.width and sheet.height > grid.height + 16
    band = np.asarray(sheet)[: sheet.height - grid.height]
    assert (band.sum(axis=-1) < 200).sum() > 20  # dark title text on the white band


def test_draw_predictions_draws_only_scores_above_the_threshold(tiny_checkpoints, synthetic_coco, tmp_path):
    ann = synthetic_coco / "annotations" / "instances_val2017.json"
    drawn = {}
    for threshold in (0.0, 1.01):
        out = draw_predictions(tiny_checkpoints["detr"], synthetic_coco / "val2017", ann, tmp_path / f"p{threshold}.png",
                               2, threshold)  # fmt: skip
        drawn[threshold] = np.asarray(Image.open(out).convert("RGB"))
    assert drawn[0.0].shape == drawn[1.01].shape and drawn[0.0].shape[1] > 2 * 384  # 2 tiles, 64 px upscaled x6
    palette = np.array(drawing.PALETTE[:6])  # the classes of a 5-class model: ids 0-5
    counts = {t: (a[..., None, :] == palette).all(-1).any(-1).sum() for t, a in drawn.items()}
    assert counts[0.0] > 1000 and counts[1.01] == 0  # a score >= 1.01 does not exist: boxes only above it
    coco = json.loads(ann.read_text())
    first = coco["images"][0]["id"]
    x, y, w, _ = next(a["bbox"] for a in coco["annotations"] if a["image_id"] == first)
    top = drawn[1.01].shape[0] - 8 - 384 + round(y * 6)  # the first tile: in the one row of the grid, 8 px gaps
    edge = (drawn[1.01][top, 8 + round(x * 6) + 2 : 8 + round((x + w) * 6) - 2] == 255).all(-1)
    assert 0.25 < edge.mean() < 0.75  # the ground truth's top edge, dashed white, without any prediction
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.0.png", "p1.01.png"]  # no temporary files left
