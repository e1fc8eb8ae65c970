"""Panoptic quality (``datasets.panoptic_eval``) on hand-built cases with known PQ, on the real
panopticapi sample and the transformers COCO fixture (ground truth against itself, and modified
predictions with hand-computed values), and the ``PanopticEvaluator`` round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.panoptic_eval import PanopticEvaluator, pq_compute, read_panoptic_png
from models.segmentation import id2rgb

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SAMPLE = DATA / "coco_panoptic_sample"
HF = DATA / "hf_coco_fixture"

# cat 1, 2: things; cat 3: stuff
CATEGORIES = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 3, "name": "s", "isthing": 0},
]


def _write(folder: Path, name: str, images: list[tuple[np.ndarray, list[dict]]], categories=CATEGORIES) -> Path:
    """Write a panoptic json ``folder/name.json`` and PNGs ``folder/name/<id>.png``."""
    png_dir = folder / name
    png_dir.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, (id_map, segments) in enumerate(images, start=1):
        file_name = f"{image_id:012d}.png"
        Image.fromarray(id2rgb(id_map)).save(png_dir / file_name)
        annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"annotations": annotations, "categories": categories}))
    return path


def _seg(seg_id: int, cat: int, iscrowd: int = 0) -> dict:
    return {"id": seg_id, "category_id": cat, "iscrowd": iscrowd}


def _pq(tmp_path: Path, gt: list, pred: list) -> dict:
    gt_json = _write(tmp_path, "gt", gt)
    pred_json = _write(tmp_path, "pred", pred)
    return pq_compute(gt_json, pred_json, verbose=False)


def _scene() -> tuple[np.ndarray, list[dict]]:
    """20x20: stuff (id 7, cat 3) everywhere but a thing of cat 1 (id 5) and one of cat 2 (id 9)."""
    m = np.full((20, 20), 7)
    m[0:10, 0:10] = 5
    m[12:18, 12:18] = 9
    return m, [_seg(5, 1), _seg(9, 2), _seg(7, 3)]


def test_perfect_prediction(tmp_path: Path) -> None:
    m, segs = _scene()
    r = _pq(tmp_path, [(m, segs)], [(m, segs)])
    for key, n in (("All", 3), ("Things", 2), ("Stuff", 1)):
        assert r[key] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": n})
    assert r["per_class"][1] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0})


def test_prediction_ids_may_differ(tmp_path: Path) -> None:
    m, segs = _scene()
    pred = np.select([m == 5, m == 9, m == 7], [0, 1, 2])  # official DETR ids: 0, 1, 2 (0 is a segment)
    r = _pq(tmp_path, [(m, segs)], [(pred, [_seg(0, 1), _seg(1, 2), _seg(2, 3)])])
    assert r["All"]["pq"] == pytest.approx(1.0)


def test_one_segment_missing(tmp_path: Path) -> None:
    m, segs = _scene()
    pred = m.copy()
    pred[pred == 9] = 0  # cat 2's thing not predicted (void)
    r = _pq(tmp_path, [(m, segs)], [(pred, [_seg(5, 1), _seg(7, 3)])])
    assert r["per_class"][2] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0})
    assert r["All"]["pq"] == pytest.approx(2 / 3)
    assert r["Things"]["pq"] == pytest.approx(0.5)
    assert r["Stuff"]["pq"] == pytest.approx(1.0)


def _shifted(shift: int) -> tuple[list, list]:
    """20x20 stuff (id 7, cat 3) with a 10x10 thing (id 5, cat 1); the prediction shifts the thing."""
    gt = np.full((20, 20), 7)
    gt[0:10, 0:10] = 5
    pred = np.full((20, 20), 7)
    pred[0:10, shift : 10 + shift] = 5
    segs = [_seg(5, 1), _seg(7, 3)]
    return [(gt, segs)], [(pred, segs)]


def test_shifted_segment(tmp_path: Path) -> None:
    r = _pq(tmp_path, *_shifted(2))
    # thing: intersection 80, union 120; stuff: intersection 280, union 320
    assert r["Things"] == pytest.approx({"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0, "n": 1})
    assert r["Stuff"] == pytest.approx({"pq": 0.875, "sq": 0.875, "rq": 1.0, "n": 1})
    assert r["All"]["pq"] == pytest.approx((2 / 3 + 0.875) / 2)


def test_shifted_segment_below_half_is_fp_and_fn(tmp_path: Path) -> None:
    r = _pq(tmp_path, *_shifted(4))  # thing: intersection 60, union 140 -> IoU 0.43, no match
    assert r["Things"] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1})


def test_shifted_segment_onto_void(tmp_path: Path) -> None:
    gt = np.zeros((20, 20), dtype=np.int64)
    gt[0:10, 0:10] = 5
    pred = np.zeros_like(gt)
    pred[0:10, 2:12] = 5  # intersection 80; the 20 px on void leave the union: 100 + 100 - 80 - 20
    r = _pq(tmp_path, [(gt, [_seg(5, 1)])], [(pred, [_seg(5, 1)])])
    assert r["All"] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0, "n": 1})


def test_two_segments_merged(tmp_path: Path) -> None:
    gt = np.zeros((10, 20), dtype=np.int64)
    gt[:, 0:12] = 1  # 120 px
    gt[:, 12:20] = 2  # 80 px
    pred = np.full((10, 20), 4)  # one segment over both: IoU 0.6 with the first, 0.4 with the second
    r = _pq(tmp_path, [(gt, [_seg(1, 1), _seg(2, 1)])], [(pred, [_seg(4, 1)])])
    # tp 1 (IoU 0.6), fn 1, fp 0 -> PQ = 0.6 / 1.5, SQ 0.6, RQ 1 / 1.5
    assert r["All"] == pytest.approx({"pq": 0.4, "sq": 0.6, "rq": 2 / 3, "n": 1})


def test_void_removed_from_union(tmp_path: Path) -> None:
    gt = np.zeros((10, 20), dtype=np.int64)
    gt[:, 0:10] = 5  # 100 px, void elsewhere
    pred = np.zeros_like(gt)
    pred[:, 0:15] = 3  # 150 px, 50 of them on void -> IoU 100 / (150 + 100 - 100 - 50) = 1
    r = _pq(tmp_path, [(gt, [_seg(5, 1)])], [(pred, [_seg(3, 1)])])
    assert r["All"] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1})


def test_prediction_on_void_is_not_a_false_positive(tmp_path: Path) -> None:
    gt = np.zeros((10, 20), dtype=np.int64)
    gt[:, 0:10] = 5
    pred = gt.copy()
    pred[:, 12:20] = 6  # cat 2 entirely on void: ignored
    pred[0:4, 10:12] = 7  # cat 2: 8 px, 8 on void -> ignored too
    r = _pq(tmp_path, [(gt, [_seg(5, 1)])], [(pred, [_seg(5, 1), _seg(6, 2), _seg(7, 2)])])
    assert r["All"] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1})
    assert r["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_crowd_regions(tmp_path: Path) -> None:
    gt = np.full((10, 20), 8)  # stuff everywhere (cat 3) ...
    gt[:, 0:10] = 9  # ... but a crowd region of cat 1 on the left
    gt_segs = [_seg(9, 1, iscrowd=1), _seg(8, 3)]
    pred = gt.copy()
    pred[:, 0:10] = 0
    pred[:, 0:6] = 1  # cat 1 inside the crowd region: not a false positive, crowd is never matched
    pred[:, 6:10] = 2  # cat 2 inside cat 1's crowd region: a false positive
    r = _pq(tmp_path, [(gt, gt_segs)], [(pred, [_seg(1, 1), _seg(2, 2), _seg(8, 3)])])
    # cat 1: nothing counted (not in n); cat 2: fp 1 -> PQ 0; cat 3: IoU 100 / 100 (crowd px are not void)
    assert r["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert r["Things"] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1})
    assert r["Stuff"] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1})
    assert r["All"]["n"] == 2


def test_things_and_stuff_split(tmp_path: Path) -> None:
    gt = np.full((10, 10), 2)
    gt[:, 0:5] = 1  # thing cat 1 (50 px), stuff cat 3 (50 px)
    pred = gt.copy()
    pred[:, 5] = 1  # thing 60 px -> IoU 50/60; stuff 40 px -> IoU 40/50
    r = _pq(tmp_path, [(gt, [_seg(1, 1), _seg(2, 3)])], [(pred, [_seg(1, 1), _seg(2, 3)])])
    assert r["Things"] == pytest.approx({"pq": 5 / 6, "sq": 5 / 6, "rq": 1.0, "n": 1})
    assert r["Stuff"] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0, "n": 1})
    assert r["All"]["pq"] == pytest.approx((5 / 6 + 0.8) / 2)


def test_accumulates_over_images(tmp_path: Path) -> None:
    m, segs = _scene()
    missing = m.copy()
    missing[missing == 5] = 0
    r = _pq(tmp_path, [(m, segs), (m, segs)], [(m, segs), (missing, [_seg(9, 2), _seg(7, 3)])])
    # cat 1: tp 1 (IoU 1), fn 1 -> PQ 1 / 1.5
    assert r["per_class"][1]["pq"] == pytest.approx(2 / 3)
    assert r["All"]["pq"] == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_inconsistent_prediction_raises(tmp_path: Path) -> None:
    m, segs = _scene()
    with pytest.raises(KeyError, match="segment id 9"):
        _pq(tmp_path, [(m, segs)], [(m, [_seg(5, 1), _seg(7, 3)])])
    with pytest.raises(KeyError, match="not in the PNG"):
        _pq(tmp_path, [(m, segs)], [(m, [*segs, _seg(11, 1)])])


def test_panoptic_evaluator_round_trip(tmp_path: Path) -> None:
    import io

    m, segs = _scene()
    gt_json = _write(tmp_path, "gt", [(m, segs)])
    buf = io.BytesIO()
    Image.fromarray(id2rgb(m)).save(buf, format="PNG")
    evaluator = PanopticEvaluator(gt_json, tmp_path / "gt", output_dir=str(tmp_path / "out"))
    evaluator.update([{"png_string": buf.getvalue(), "segments_info": segs, "image_id": 1, "file_name": "1.png"}])
    evaluator.synchronize_between_processes()
    r = evaluator.summarize()
    assert r["All"]["pq"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "1.png").is_file() and (tmp_path / "out" / "predictions.json").is_file()


# ---------------------------------------------------------------------------------------- real data


@pytest.fixture()
def sample() -> Path:
    if not (SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip(f"panoptic sample not found under {SAMPLE}")
    return SAMPLE


def test_real_sample_against_itself(sample: Path) -> None:
    r = pq_compute(sample / "panoptic_examples.json", sample / "panoptic_examples.json", sample / "panoptic_examples",
                   sample / "panoptic_examples", verbose=False)  # fmt: skip
    # categories present: things 1, 8, 19, 37; stuff 125, 184, 187, 193
    assert r["All"] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 8})
    assert r["Things"]["n"] == 4 and r["Stuff"]["n"] == 4


def test_real_sample_one_segment_removed(sample: Path, tmp_path: Path) -> None:
    gt = json.loads((sample / "panoptic_examples.json").read_text())
    pred_dir = tmp_path / "pred"
    shutil.copytree(sample / "panoptic_examples", pred_dir)
    ann = next(a for a in gt["annotations"] if a["image_id"] == 142238)
    ball = next(s for s in ann["segments_info"] if s["category_id"] == 37)  # the only sports ball
    ann["segments_info"].remove(ball)
    id_map = read_panoptic_png(pred_dir / ann["file_name"])
    id_map[id_map == ball["id"]] = 0
    Image.fromarray(id2rgb(id_map)).save(pred_dir / ann["file_name"])
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(gt))
    r = pq_compute(sample / "panoptic_examples.json", pred_json, sample / "panoptic_examples", pred_dir, verbose=False)
    # sports ball: fn 1 -> PQ 0; the 7 other categories stay perfect
    assert r["All"]["pq"] == pytest.approx(7 / 8)
    assert r["Things"]["pq"] == pytest.approx(3 / 4)
    assert r["Stuff"]["pq"] == pytest.approx(1.0)


@pytest.fixture()
def hf_gt(tmp_path: Path) -> Path:
    """The transformers fixture's panoptic annotation as a panopticapi json (categories from the sample)."""
    if not (HF / "coco_panoptic_annotations.txt").is_file() or not (SAMPLE / "panoptic_coco_categories.json").is_file():
        pytest.skip("hf_coco_fixture or the panoptic category list not found")
    segments = json.loads((HF / "coco_panoptic_annotations.txt").read_text())
    categories = json.loads((SAMPLE / "panoptic_coco_categories.json").read_text())
    gt = {
        "annotations": [{"image_id": 39769, "file_name": "000000039769.png", "segments_info": segments}],
        "categories": categories,
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_hf_fixture_against_itself(hf_gt: Path) -> None:
    r = pq_compute(hf_gt, hf_gt, HF / "coco_panoptic", HF / "coco_panoptic", verbose=False)
    # cat (17) x2, couch (63), remote (75) x2, blanket (93, stuff)
    assert r["All"] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 4})
    assert r["Stuff"]["n"] == 1


def test_hf_fixture_wrong_class(hf_gt: Path, tmp_path: Path) -> None:
    pred = json.loads(hf_gt.read_text())
    cat = next(s for s in pred["annotations"][0]["segments_info"] if s["category_id"] == 17)
    cat["category_id"] = 18  # one of the two cats called a dog
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(pred))
    r = pq_compute(hf_gt, pred_json, HF / "coco_panoptic", HF / "coco_panoptic", verbose=False)
    # cat: tp 1, fn 1 -> 2/3; dog: fp 1 -> 0; couch, remote, blanket: 1
    assert r["per_class"][17]["pq"] == pytest.approx(2 / 3)
    assert r["per_class"][18]["pq"] == 0.0
    assert r["All"]["pq"] == pytest.approx((2 / 3 + 0 + 1 + 1 + 1) / 5)
    assert r["Things"]["pq"] == pytest.approx((2 / 3 + 0 + 1 + 1) / 4)
    assert r["Stuff"]["pq"] == pytest.approx(1.0)
