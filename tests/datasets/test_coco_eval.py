"""CocoEvaluator: perfect detections give AP 1, jittered ones less, no predictions do not crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from datasets.coco import CocoDetection
from datasets.coco_eval import COCO_STAT_NAMES, CocoEvaluator, stats_to_dict

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def ground_truth_predictions(
    coco: COCO, jitter: float = 0.0, with_masks: bool = False, seed: int = 0
) -> dict[int, dict[str, torch.Tensor]]:
    """Predictions equal to the non-crowd ground truth (score 1), boxes optionally jittered."""
    rng = np.random.default_rng(seed)
    out = {}
    for image_id in coco.getImgIds():
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        if jitter:
            boxes = boxes + torch.from_numpy(rng.normal(0, jitter, size=boxes.shape)).float() * boxes[:, 2:].repeat(
                1, 2
            )
        boxes[:, 2:] += boxes[:, :2]
        pred = {
            "scores": torch.ones(len(anns)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "boxes": boxes,
        }
        if with_masks:
            masks = [torch.from_numpy(coco.annToMask(a)) for a in anns]
            img = coco.imgs[image_id]
            pred["masks"] = (
                torch.stack(masks)[:, None].float() if masks else torch.zeros((0, 1, img["height"], img["width"]))
            )
        out[image_id] = pred
    return out


def evaluate(coco: COCO, predictions: dict, iou_types: tuple[str, ...] = ("bbox",), batch: int = 4) -> CocoEvaluator:
    evaluator = CocoEvaluator(coco, iou_types)
    items = list(predictions.items())
    for start in range(0, len(items), batch):  # fed in batches, as engine.evaluate does
        evaluator.update(dict(items[start : start + batch]))
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def synthetic_coco(root: Path) -> COCO:
    ds = CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json", None, return_masks=False)
    return ds.coco


def test_perfect_boxes_and_masks_on_synthetic(synthetic_root: Path) -> None:
    coco = synthetic_coco(synthetic_root)
    evaluator = evaluate(coco, ground_truth_predictions(coco, with_masks=True), ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        stats = evaluator.coco_eval[iou_type].stats
        assert len(stats) == 12
        assert abs(stats[0] - 1.0) < 1e-6, (iou_type, stats)
    named = evaluator.stats_dict("bbox")
    assert list(named) == COCO_STAT_NAMES and abs(named["AP50"] - 1.0) < 1e-6


def test_jittered_boxes_score_lower(synthetic_root: Path) -> None:
    coco = synthetic_coco(synthetic_root)
    stats = evaluate(coco, ground_truth_predictions(coco, jitter=0.15)).coco_eval["bbox"].stats
    assert 0.0 <= stats[0] < 0.9


def test_perfect_and_jittered_on_real_sample(real_sample: Path) -> None:
    coco = CocoDetection(
        real_sample / "train_2017_small", real_sample / "instances_train2017_small.json", None, return_masks=False
    ).coco
    perfect = evaluate(coco, ground_truth_predictions(coco)).coco_eval["bbox"].stats
    assert abs(perfect[0] - 1.0) < 1e-6, perfect
    jittered = evaluate(coco, ground_truth_predictions(coco, jitter=0.1)).coco_eval["bbox"].stats
    assert jittered[0] < perfect[0] - 0.1


def test_zero_predictions_do_not_crash(synthetic_root: Path) -> None:
    coco = synthetic_coco(synthetic_root)
    # no image seen at all: nothing to evaluate
    stats = evaluate(coco, {}, ("bbox", "segm")).coco_eval["bbox"].stats
    assert len(stats) == 12 and all(s == -1 for s in stats)
    # every image seen, but no detection: AP 0
    empty = {
        image_id: {
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
            "boxes": torch.zeros(0, 4),
            "masks": torch.zeros(0, 1, 64, 64),
        }
        for image_id in coco.getImgIds()
    }
    evaluator = evaluate(coco, empty, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        stats = evaluator.coco_eval[iou_type].stats
        assert len(stats) == 12 and max(stats) <= 0.0


def test_only_seen_images_are_evaluated_once(synthetic_root: Path) -> None:
    coco = synthetic_coco(synthetic_root)
    preds = ground_truth_predictions(coco)
    first = next(iter(preds))
    evaluator = CocoEvaluator(coco, ["bbox"])
    evaluator.update({first: preds[first]})
    # the same image again (as a padding distributed sampler does) with wrong boxes: ignored
    evaluator.update({first: {**preds[first], "boxes": preds[first]["boxes"] + 20}})
    evaluator.synchronize_between_processes()
    evaluator.summarize()  # accumulates on demand
    assert abs(evaluator.coco_eval["bbox"].stats[0] - 1.0) < 1e-6
    assert evaluator.coco_eval["bbox"].params.imgIds == [first]


def test_interface_errors_and_helpers(synthetic_root: Path) -> None:
    coco = synthetic_coco(synthetic_root)
    with pytest.raises(ValueError, match="keypoints"):
        CocoEvaluator(coco, ["keypoints"])
    evaluator = CocoEvaluator(coco, ["bbox"])
    with pytest.raises(KeyError, match="123456"):
        evaluator.update({123456: {"scores": torch.ones(0), "labels": torch.ones(0), "boxes": torch.zeros(0, 4)}})
    named = stats_to_dict(np.arange(12) / 10, prefix="bbox_")
    assert named["bbox_AP"] == 0.0 and named["bbox_ARl"] == pytest.approx(1.1)
    with pytest.raises(ValueError):
        stats_to_dict([1.0, 2.0])


def test_synchronize_merges_ranks(synthetic_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coco = synthetic_coco(synthetic_root)
    preds = ground_truth_predictions(coco)
    ids = sorted(preds)
    rank0, rank1 = CocoEvaluator(coco, ["bbox"]), CocoEvaluator(coco, ["bbox"])
    rank0.update({i: preds[i] for i in ids[::2]})
    rank1.update({i: preds[i] for i in ids[1::2]})
    rank1.update({ids[0]: {**preds[ids[0]], "boxes": preds[ids[0]]["boxes"] + 20}})  # padded duplicate
    payload1 = (rank1.img_ids, rank1.results)
    monkeypatch.setattr("datasets.coco_eval.all_gather", lambda data: [data, payload1])
    rank0.synchronize_between_processes()
    rank0.accumulate()
    rank0.summarize()
    assert abs(rank0.coco_eval["bbox"].stats[0] - 1.0) < 1e-6
    assert rank0.coco_eval["bbox"].params.imgIds == ids
