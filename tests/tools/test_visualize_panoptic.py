"""``tools.visualize_panoptic``: COCO panoptic PNG + JSON that the PQ evaluator reads back, and an
overlay image of the right size with the segments coloured."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.panoptic_eval import pq_compute
from datasets.synthetic_panoptic import PANOPTIC_CATEGORIES, id2rgb
from tools.visualize_panoptic import decode_png, panoptic_overlay, write_coco_panoptic


def _prediction() -> tuple[np.ndarray, dict]:
    ids = np.full((16, 20), 1)
    ids[4:10, 5:12] = 0  # official DETR ids: 0 is a segment here
    buf = io.BytesIO()
    Image.fromarray(id2rgb(ids)).save(buf, format="PNG")
    segments = [
        {"id": 0, "category_id": 2, "isthing": True, "area": 42},
        {"id": 1, "category_id": 5, "isthing": False, "area": 278},
    ]
    return ids, {
        "png_string": buf.getvalue(),
        "segments_info": segments,
        "image_id": 7,
        "file_name": "000000000007.png",
    }


def test_write_coco_panoptic_round_trip(tmp_path: Path) -> None:
    ids, pred = _prediction()
    path = write_coco_panoptic([pred], tmp_path, PANOPTIC_CATEGORIES)
    assert np.array_equal(decode_png(tmp_path / "panoptic" / "000000000007.png"), ids)
    # as ground truth, ids must start at 1 (0 is void there)
    gt_ids, gt = _prediction()
    buf = io.BytesIO()
    Image.fromarray(id2rgb(gt_ids + 1)).save(buf, format="PNG")
    gt["png_string"] = buf.getvalue()
    gt["segments_info"] = [{**s, "id": s["id"] + 1} for s in gt["segments_info"]]
    gt_path = write_coco_panoptic([gt], tmp_path / "gt", PANOPTIC_CATEGORIES)
    r = pq_compute(gt_path, path, verbose=False)
    assert r["All"]["pq"] == 1.0 and r["All"]["n"] == 2


def test_overlay(tmp_path: Path) -> None:
    ids, pred = _prediction()
    image = Image.fromarray(np.zeros((16, 20, 3), dtype=np.uint8))
    out = panoptic_overlay(image, decode_png(pred["png_string"]), pred["segments_info"], PANOPTIC_CATEGORIES, scale=4)
    assert out.size == (80, 64)
    arr = np.asarray(out)
    assert arr[2, 2].sum() > 0 and not np.array_equal(arr[2, 2], arr[7 * 4 + 2, 8 * 4 + 2])
    out.save(tmp_path / "overlay.png")
