"""CocoEvaluator: perfect detections give AP 1, jittered ones less, no predictions do not crash;
faster-coco-eval gives pycocotools' numbers; per-category AP; the offline command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from datasets.coco import CocoDetection
from datasets.coco_eval import (
    COCO_EVAL_BACKENDS,
    COCO_STAT_NAMES,
    CocoEvaluator,
    coco_eval_backend,
    evaluate_detections,
    format_per_class,
    per_class_ap,
    stats_to_dict,
)
from datasets.coco_eval import main as coco_eval_main

ROOT = Path(__file__).resolve().parents[2]

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


# --------------------------------------------------------------------------------------------
# Backends, per-category AP, the offline command line


def test_faster_backend_gives_the_same_numbers(synthetic_root: Path) -> None:
    """faster-coco-eval against pycocotools on the same detections: generated COCO-like ones
    (80 sparse categories, crowd boxes, all sizes) and the evaluator's own boxes and masks."""
    from benchmarks.bench_coco_eval import make_eval_set

    gt, results = make_eval_set(60, 30, seed=1)
    ref = evaluate_detections(gt, results, backend="pycocotools", verbose=False)
    fast = evaluate_detections(gt, results, backend="faster", verbose=False)
    assert 0.05 < ref.stats[0] < 0.9  # a non-trivial evaluation
    np.testing.assert_allclose(fast.stats, ref.stats, rtol=0, atol=1e-6)
    for a, b in zip(per_class_ap(fast), per_class_ap(ref), strict=True):
        assert (a["id"], a["name"], a["num_gt"]) == (b["id"], b["name"], b["num_gt"])
        assert [a[k] for k in ("AP", "AP50", "AP75")] == pytest.approx([b[k] for k in ("AP", "AP50", "AP75")], abs=1e-6)

    coco = synthetic_coco(synthetic_root)
    preds = ground_truth_predictions(coco, jitter=0.1, with_masks=True)
    by_backend = {b: CocoEvaluator(coco, ["bbox", "segm"], backend=b) for b in COCO_EVAL_BACKENDS}
    for evaluator in by_backend.values():
        evaluator.update(preds)
        evaluator.summarize()
    assert 0 < by_backend["pycocotools"].coco_eval["bbox"].stats[0] < 1  # jittered boxes, exact masks
    for iou_type in ("bbox", "segm"):
        a, b = (by_backend[k].coco_eval[iou_type].stats for k in COCO_EVAL_BACKENDS)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_missing_faster_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import fails
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        coco_eval_backend("faster")
    with pytest.raises(ValueError, match="pycocotools"):
        coco_eval_backend("detectron")


def _two_class_set() -> tuple[dict, list[dict]]:
    """Category 1 'cat' found perfectly, category 2 'dog' missed, category 3 'owl' has no ground truth."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 40, 20], "area": 800, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "owl"}]
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 40, 20], "score": 0.8},
        {"image_id": 2, "category_id": 2, "bbox": [60, 5, 20, 20], "score": 0.7},  # no overlap: a miss
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.5},
    ]
    return {"images": images, "annotations": anns, "categories": cats}, results


@pytest.mark.parametrize("backend", COCO_EVAL_BACKENDS)
def test_per_class_ap(backend: str) -> None:
    gt, results = _two_class_set()
    rows = per_class_ap(evaluate_detections(gt, results, backend=backend, verbose=False))
    assert [(r["id"], r["name"], r["num_gt"]) for r in rows] == [(1, "cat", 2), (2, "dog", 1), (3, "owl", 0)]
    assert rows[0]["AP"] == pytest.approx(1.0) and rows[0]["AP50"] == pytest.approx(1.0)
    assert rows[1]["AP"] == 0.0 and rows[1]["AP75"] == 0.0
    assert rows[2]["AP"] == -1.0  # nothing to evaluate
    table = format_per_class(rows)
    assert "cat" in table and "owl" in table and "    -" in table

    gt, results = make_eval_set_small()
    coco_eval = evaluate_detections(gt, results, backend=backend, verbose=False)
    valid = [r["AP"] for r in per_class_ap(coco_eval) if r["AP"] >= 0]
    assert np.mean(valid) == pytest.approx(coco_eval.stats[0], abs=1e-9)  # COCO AP: the mean over categories
    with pytest.raises(ValueError, match="accumulate"):
        per_class_ap(SimpleNamespace(eval={}))


def make_eval_set_small() -> tuple[dict, list[dict]]:
    from benchmarks.bench_coco_eval import make_eval_set

    return make_eval_set(20, 20, seed=2)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt, results = _two_class_set()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(results))
    out = tmp_path / "stats.json"
    summary = coco_eval_main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "dets.json"),
                              "--out", str(out), "--per_class", "--backend", "faster"])  # fmt: skip
    printed = capsys.readouterr().out
    assert all(f"\n{name} " in printed for name in COCO_STAT_NAMES[1:]) and printed.count("owl") == 1
    saved = json.loads(out.read_text())
    assert saved == summary and saved["AP"] == pytest.approx(0.5) and saved["per_class"][0]["name"] == "cat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dets.json", "gt.json", "stats.json"]  # no temporary file
    # as documented: python -m datasets.coco_eval, from another folder
    proc = subprocess.run(
        [sys.executable, "-m", "datasets.coco_eval", "--gt", "gt.json", "--results", "dets.json"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"\n{'AP':<5} 0.5000\n" in proc.stdout and f"\n{'AP50':<5} 0.5000\n" in proc.stdout


@pytest.mark.parametrize(
    ("gt_text", "dets_text", "message"),
    [
        ('{"images": [', "[]", "gt.json: not a valid JSON file (Expecting value: line 1 column 13"),
        ('{"images": []}', "[]", "missing key(s) ['annotations', 'categories']"),
        (None, '{"annotations": []}', "dets.json: expected a JSON list of detections"),
        (None, '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]', "detection #0 lacks ['score']"),
        (None, '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 1}]', "detection #0 has bbox"),
        (None, '[{"image_id": 77, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}]', "image id(s) not in"),
    ],
)
def test_command_line_bad_files(tmp_path: Path, gt_text: str | None, dets_text: str, message: str) -> None:
    gt, _ = _two_class_set()
    (tmp_path / "gt.json").write_text(gt_text if gt_text is not None else json.dumps(gt))
    (tmp_path / "dets.json").write_text(dets_text)
    out = tmp_path / "stats.json"
    with pytest.raises(SystemExit) as e:
        coco_eval_main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "dets.json"), "--out", str(out)])
    assert message in str(e.value) and str(e.value).startswith("error: ")
    assert not out.exists()
    with pytest.raises(SystemExit, match="does not exist"):
        coco_eval_main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "dets.json"),
                        "--out", str(tmp_path / "missing" / "stats.json")])  # fmt: skip
