"""VOC mAP@0.5 (``datasets.voc_eval``) on hand-made cases whose AP was computed by hand with the
devkit's rules: difficult objects, duplicates, a class without ground truth, a class without
detections, IoU exactly 0.5, both interpolations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.voc_eval import NO_GROUND_TRUTH, VocEvaluator, voc_ap

CAT, DOG, BIRD = 7, 11, 2


def coco_box(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    """A devkit box (one-based, inclusive) as a COCO ``[x, y, w, h]``."""
    return [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]


def prediction(boxes: list[tuple[float, ...]], scores: list[float], labels: list[int]) -> dict:
    """Devkit boxes as the post-processor's continuous xyxy."""
    xyxy = torch.tensor([[x1 - 1, y1 - 1, x2, y2] for x1, y1, x2, y2 in boxes], dtype=torch.float32).reshape(-1, 4)
    return {"boxes": xyxy, "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


GROUND_TRUTH = {
    "images": [{"id": 1}, {"id": 2}],
    "categories": [{"id": BIRD, "name": "bird"}, {"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": CAT, "bbox": coco_box(1, 1, 10, 10)},
        {"id": 2, "image_id": 1, "category_id": CAT, "bbox": coco_box(21, 21, 30, 30), "difficult": 1},
        {"id": 3, "image_id": 2, "category_id": CAT, "bbox": coco_box(1, 1, 10, 10)},
        {"id": 4, "image_id": 2, "category_id": DOG, "bbox": coco_box(31, 31, 40, 40)},
    ],
}


def evaluate(use_07_metric: bool) -> VocEvaluator:
    evaluator = VocEvaluator(GROUND_TRUTH, use_07_metric=use_07_metric)
    # cat: TP (0.9), duplicate of it FP (0.8), on the difficult box: ignored (0.7), no overlap FP (0.6),
    # TP on image 2 (0.5); bird: a detection, but no bird in the ground truth; dog: no detection.
    evaluator.update(
        {
            1: prediction([(1, 1, 10, 10), (1, 1, 10, 10), (21, 21, 30, 30), (5, 5, 9, 9)], [0.9, 0.8, 0.7, 0.4], [CAT, CAT, CAT, BIRD]),
            2: prediction([(50, 50, 60, 60), (1, 1, 10, 10)], [0.6, 0.5], [CAT, CAT]),
        }
    )  # fmt: skip
    evaluator.update({1: prediction([(1, 1, 10, 10)], [0.99], [DOG])})  # image seen again: ignored
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    return evaluator


def test_area_under_the_monotone_curve() -> None:
    stats = evaluate(use_07_metric=False).stats_dict()
    # cat: recall .5 at precision 1, then 1.0 at precision .5 -> .5 * 1 + .5 * .5
    assert stats["voc_per_class_AP"] == {"bird": NO_GROUND_TRUTH, "cat": pytest.approx(0.75), "dog": 0.0}
    assert stats["voc_mAP50"] == pytest.approx((0.75 + 0.0) / 2)  # bird has no ground truth: left out


def test_eleven_point_interpolation() -> None:
    stats = evaluate(use_07_metric=True).stats_dict()
    # recall thresholds 0, .1, ..., .5 reach precision 1; .6 ... 1.0 only precision .5
    assert stats["voc_per_class_AP"]["cat"] == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert stats["voc_mAP50"] == pytest.approx((6 * 1.0 + 5 * 0.5) / 11 / 2)


def test_iou_threshold_is_inclusive_with_pixel_widths() -> None:
    gt = {"images": [{"id": 1}], "categories": [{"id": 0, "name": "a"}], "annotations": []}
    gt["annotations"].append({"id": 1, "image_id": 1, "category_id": 0, "bbox": coco_box(1, 1, 10, 10)})
    for bottom, expected in ((5, 1.0), (4, 0.0)):  # 10x5 of 10x10 pixels: IoU exactly 0.5; 10x4: 0.4
        evaluator = VocEvaluator(gt)
        evaluator.update({1: prediction([(1, 1, 10, bottom)], [1.0], [0])})
        evaluator.accumulate()
        assert evaluator.stats_dict()["voc_per_class_AP"]["a"] == expected


def test_voc_ap_matches_the_definitions() -> None:
    recall = np.array([0.2, 0.4, 0.4, 0.8])
    precision = np.array([1.0, 0.5, 0.6, 0.4])
    # envelope: 1 up to recall .2, .6 up to .4, .4 up to .8, 0 after
    assert voc_ap(recall, precision) == pytest.approx(0.2 * 1 + 0.2 * 0.6 + 0.4 * 0.4)
    # 11 points: t=0,.1,.2 -> 1; .3,.4 -> .6; .5 ... .8 -> .4; .9, 1 -> 0
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((3 * 1 + 2 * 0.6 + 4 * 0.4) / 11)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0 == voc_ap(np.zeros(0), np.zeros(0), True)


def test_unknown_image_is_an_error() -> None:
    with pytest.raises(KeyError, match="image id 99"):
        VocEvaluator(GROUND_TRUTH).update({99: prediction([], [], [])})
