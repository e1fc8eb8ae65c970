"""Panoptic quality (PQ, Kirillov et al., 2019) and the evaluator DETR's ``engine.evaluate`` uses.

``pq_compute`` has the signature, the COCO definitions and the result structure of
``panopticapi.evaluation.pq_compute`` (panopticapi is not on PyPI). ``PanopticEvaluator`` is the
official class: it writes each prediction's PNG to ``output_dir`` and returns ``pq_compute``'s
result from ``summarize`` on the main process (``None`` elsewhere). Unlike panopticapi it runs in
one process and names the image in its errors (``pq_single_image``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from util import distributed as dist_utils
from util.panoptic import read_panoptic_png, rgb2id  # noqa: F401  (rgb2id re-exported)

VOID = 0
OFFSET = 256 * 256 * 256


class _Stat:
    __slots__ = ("iou", "tp", "fp", "fn")

    def __init__(self) -> None:
        self.iou, self.tp, self.fp, self.fn = 0.0, 0, 0, 0


def _pq_average(
    stats: dict[int, _Stat], categories: dict[int, dict], isthing: bool | None
) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    pq = sq = rq = 0.0
    n = 0
    per_class: dict[int, dict[str, float]] = {}
    for cat_id, info in categories.items():
        if isthing is not None and (info.get("isthing") == 1) != isthing:
            continue
        s = stats[cat_id]
        if s.tp + s.fp + s.fn == 0:
            per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
        pq_c, sq_c, rq_c = s.iou / denom, (s.iou / s.tp if s.tp else 0.0), s.tp / denom
        per_class[cat_id] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
        pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
    if n == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_single_image(
    pan_gt: np.ndarray,
    gt_segments: list[dict],
    pan_pred: np.ndarray,
    pred_segments: list[dict],
    categories: dict[int, dict],
    stats: dict[int, _Stat],
    image: str = "",
) -> None:
    """Accumulate TP/FP/FN and matched IoU of one image into ``stats`` (``[H, W]`` id maps).

    The COCO definitions: a predicted and a ground-truth segment of the same category match when
    IoU > 0.5 (so matches are unique); crowd ground-truth segments never match; the IoU's union
    leaves out the predicted segment's pixels on void (id 0) ground truth; an unmatched prediction
    is not a false positive when more than half of it lies on void or on a crowd region of its category.

    Differences from panopticapi: ground-truth areas are counted in the PNG rather than read from the
    json; the void/crowd overlap of a prediction sums over all crowd regions of its category
    (panopticapi keeps the last one; COCO has at most one per category and image); panopticapi's
    checks (unknown segment ids in the PNG, segments of the json missing from the PNG, unknown
    categories) raise ``ValueError``/``KeyError`` naming the image.
    """
    if pan_gt.shape != pan_pred.shape:
        raise ValueError(f"image {image}: prediction PNG is {pan_pred.shape}, ground truth {pan_gt.shape}")
    gt_segms = {int(s["id"]): dict(s) for s in gt_segments}
    if VOID in gt_segms:
        raise ValueError(f"image {image}: ground-truth segment id 0 is reserved for void (unlabeled) pixels")
    pred_segms = {int(s["id"]): dict(s) for s in pred_segments}

    ids, counts = np.unique(pan_gt, return_counts=True)
    gt_area = dict(zip(ids.tolist(), counts.tolist()))
    for seg_id, seg in gt_segms.items():
        seg["area"] = gt_area.get(seg_id, 0)

    ids, counts = np.unique(pan_pred, return_counts=True)
    unseen = set(pred_segms)
    for seg_id, cnt in zip(ids.tolist(), counts.tolist()):
        if seg_id not in pred_segms:
            if seg_id == VOID:
                continue
            raise KeyError(f"image {image}: segment id {seg_id} is in the prediction PNG but not in segments_info")
        pred_segms[seg_id]["area"] = cnt
        unseen.discard(seg_id)
        if pred_segms[seg_id]["category_id"] not in categories:
            raise KeyError(
                f"image {image}: segment {seg_id} has unknown category_id {pred_segms[seg_id]['category_id']}"
            )
    if unseen:
        raise KeyError(f"image {image}: segment id(s) {sorted(unseen)} are in segments_info but not in the PNG")

    joint = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    ids, counts = np.unique(joint, return_counts=True)
    inter = {(int(j // OFFSET), int(j % OFFSET)): int(c) for j, c in zip(ids.tolist(), counts.tolist())}

    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (gt_id, pred_id), intersection in inter.items():
        if gt_id not in gt_segms or pred_id not in pred_segms:
            continue
        gt, pred = gt_segms[gt_id], pred_segms[pred_id]
        if gt.get("iscrowd", 0) == 1 or gt["category_id"] != pred["category_id"]:
            continue
        union = pred["area"] + gt["area"] - intersection - inter.get((VOID, pred_id), 0)
        iou = intersection / union
        if iou > 0.5:
            s = stats[gt["category_id"]]
            s.tp += 1
            s.iou += iou
            gt_matched.add(gt_id)
            pred_matched.add(pred_id)

    crowd_by_cat: dict[int, list[int]] = defaultdict(list)
    for gt_id, gt in gt_segms.items():
        if gt_id in gt_matched:
            continue
        if gt.get("iscrowd", 0) == 1:
            crowd_by_cat[gt["category_id"]].append(gt_id)
            continue
        if gt["category_id"] not in categories:
            raise KeyError(f"image {image}: ground-truth segment {gt_id} has unknown category_id {gt['category_id']}")
        stats[gt["category_id"]].fn += 1

    for pred_id, pred in pred_segms.items():
        if pred_id in pred_matched:
            continue
        ignored = inter.get((VOID, pred_id), 0)
        ignored += sum(inter.get((c, pred_id), 0) for c in crowd_by_cat.get(pred["category_id"], []))
        if ignored / pred["area"] > 0.5:
            continue
        stats[pred["category_id"]].fp += 1


def pq_compute(
    gt_json_file: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """PQ of the predictions against the ground truth, both in the COCO panoptic format (a json with
    ``annotations`` [``image_id``, ``file_name``, ``segments_info``] and a folder of PNGs; by default
    the json's path without ``.json``). Returns panopticapi's structure::

        {"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {cat_id: {"pq", "sq", "rq"}}}

    PQ = sum(IoU of matches) / (TP + FP/2 + FN/2) per category, averaged over the categories that
    occur (TP + FP + FN > 0); SQ and RQ likewise; ``n == 0`` (e.g. no stuff category) gives 0.0
    instead of panopticapi's ZeroDivisionError. A missing prediction for an image raises ``KeyError``."""
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    gt_folder = Path(gt_folder) if gt_folder is not None else Path(str(gt_json_file).replace(".json", ""))
    pred_folder = Path(pred_folder) if pred_folder is not None else Path(str(pred_json_file).replace(".json", ""))
    categories = {int(c["id"]): c for c in gt_json["categories"]}
    pred_by_image = {a["image_id"]: a for a in pred_json["annotations"]}

    stats: dict[int, _Stat] = defaultdict(_Stat)
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in pred_by_image:
            raise KeyError(f"no prediction for the image with id {image_id} ({gt_ann['file_name']})")
        pred_ann = pred_by_image[image_id]
        pan_gt = read_panoptic_png(gt_folder / gt_ann["file_name"])
        pan_pred = read_panoptic_png(pred_folder / pred_ann["file_name"])
        pq_single_image(
            pan_gt, gt_ann["segments_info"], pan_pred, pred_ann["segments_info"], categories, stats, str(image_id)
        )

    results: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = _pq_average(stats, categories, isthing)
        if name == "All":
            results["per_class"] = per_class
    if verbose:
        print(f"{'':10s}|{'PQ':>8s} {'SQ':>8s} {'RQ':>8s} {'N':>5s}")
        for name in ("All", "Things", "Stuff"):
            r = results[name]
            print(f"{name:10s}|{100 * r['pq']:8.1f} {100 * r['sq']:8.1f} {100 * r['rq']:8.1f} {r['n']:5d}")
    return results


class PanopticEvaluator:
    """Collects ``PostProcessPanoptic`` outputs (with ``image_id`` and ``file_name`` added) and
    computes PQ against ``ann_file`` / ``ann_folder``."""

    def __init__(self, ann_file: str | os.PathLike, ann_folder: str | os.PathLike, output_dir: str = "panoptic_eval"):
        self.gt_json = str(ann_file)
        self.gt_folder = str(ann_folder)
        if dist_utils.is_main_process():
            os.makedirs(output_dir, exist_ok=True)
        self.output_dir = output_dir
        self.predictions: list[dict] = []

    def update(self, predictions: list[dict]) -> None:
        """Write each ``png_string`` to ``output_dir/file_name`` and keep the json entry."""
        os.makedirs(self.output_dir, exist_ok=True)
        for p in predictions:
            with open(os.path.join(self.output_dir, p["file_name"]), "wb") as f:
                f.write(p.pop("png_string"))
        self.predictions += predictions

    def synchronize_between_processes(self) -> None:
        merged: list[dict] = []
        for p in dist_utils.all_gather(self.predictions):
            merged += p
        self.predictions = merged

    def summarize(self) -> dict[str, Any] | None:
        if not dist_utils.is_main_process():
            return None
        predictions_json = os.path.join(self.output_dir, "predictions.json")
        with open(predictions_json, "w") as f:
            json.dump({"annotations": self.predictions}, f)
        return pq_compute(self.gt_json, predictions_json, gt_folder=self.gt_folder, pred_folder=self.output_dir)
