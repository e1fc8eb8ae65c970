"""PASCAL VOC detection metric: per-class average precision at IoU 0.5 and its mean (mAP@0.5).

``voc_class_ap`` and ``voc_ap`` implement the VOC devkit's algorithm (``VOCevaldet.m`` and
``VOCap.m``, as ported in py-faster-rcnn and detectron2); ``VocEvaluator`` has ``CocoEvaluator``'s
interface and gives ``stats_dict()`` = ``{"voc_mAP50", "voc_per_class_AP"}``, which
``engine.evaluate`` adds for VOC data sets (``voc_evaluator_for``). Not in the official code; unlike
the devkit, a class without ground truth gets AP -1 and is left out of the mean, as COCOeval does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from datasets.sampling import SeededDataset
from util.distributed import all_gather

IOU_THRESHOLD = 0.5
NO_GROUND_TRUTH = -1.0


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from the cumulative ``recall`` and ``precision`` of the score-sorted detections.

    ``use_07_metric`` (VOC2007 test): the 11-point interpolated precision (mean over recall
    thresholds 0, 0.1, ..., 1 of the best precision at recall >= threshold, 0 where none); otherwise
    the area under the precision curve made monotone (VOC2010 and later)."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, made monotone from the right
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _iou_devkit(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(x1, y1, x2, y2)`` box with ``boxes [N, 4]``, inclusive pixel widths (``+ 1``)."""
    iw = np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0
    ih = np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return inter / (area + areas - inter)


def voc_class_ap(
    detections: Sequence[tuple[Any, float, Sequence[float]]],
    ground_truth: Mapping[Any, tuple[np.ndarray, np.ndarray]],
    use_07_metric: bool = False,
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one class. ``detections``: ``(image id, score, devkit box)``; ``ground_truth``: ``{image
    id: (boxes [N, 4] devkit, difficult [N] bool)}``. Returns ``(AP, recall, precision)``; AP is
    ``NO_GROUND_TRUTH`` when no box is non-difficult.

    Boxes are in the devkit's one-based inclusive pixel convention (widths ``x2 - x1 + 1``).
    Detections of all images are sorted by decreasing score (a stable sort, as MATLAB's ``sort``;
    ties keep their order); each is matched to the ground-truth box of its image with the largest
    IoU; IoU >= 0.5 (``VOCevaldet.m``; py-faster-rcnn's port uses ``>``, which differs only at
    exactly 0.5): a true positive if that box is not yet taken, a false positive if it is
    (duplicates), neither when that box is difficult; IoU < 0.5 is a false positive. Recall = TP /
    (number of non-difficult boxes), precision = TP / (TP + FP). The devkit divides by zero when
    there is no non-difficult box; here AP is then ``NO_GROUND_TRUTH`` (-1), left out of the mean."""
    npos = int(sum((~np.asarray(d, dtype=bool)).sum() for _, d in ground_truth.values()))
    taken = {image_id: np.zeros(len(d), dtype=bool) for image_id, (_, d) in ground_truth.items()}
    order = np.argsort(-np.asarray([s for _, s, _ in detections], dtype=np.float64), kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, d in enumerate(order):
        image_id, _, box = detections[d]
        gt_boxes, difficult = ground_truth.get(image_id, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        if len(gt_boxes) == 0:
            fp[rank] = 1
            continue
        ious = _iou_devkit(np.asarray(box, dtype=np.float64), np.asarray(gt_boxes, dtype=np.float64))
        best = int(np.argmax(ious))
        if ious[best] < iou_threshold:
            fp[rank] = 1
        elif difficult[best]:
            continue
        elif taken[image_id][best]:
            fp[rank] = 1
        else:
            tp[rank], taken[image_id][best] = 1, True
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    if npos == 0:
        return NO_GROUND_TRUTH, np.zeros_like(tp), np.zeros_like(tp)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, use_07_metric), recall, precision


class VocEvaluator:
    """Collect predictions batch by batch, then compute VOC AP@0.5 per class (``voc_class_ap``).

    ``coco_gt``: the ground truth as a pycocotools ``COCO`` (``datasets.get_coco_api_from_dataset``)
    or its dict, annotations with an optional ``difficult`` flag; ``class_names``: ``{category id:
    name}`` (default: the categories' names). ``use_07_metric``: 11-point AP (VOC2007 test).

    Ground truth ``bbox [x, y, w, h]`` becomes the devkit's ``(x + 1, y + 1, x + w, y + h)`` (the XML
    values back); predicted continuous ``(x0, y0, x1, y1)`` become ``(x0 + 1, y0 + 1, x1, y1)``, as
    detectron2 writes VOC results. Crowd annotations are treated as difficult. As ``CocoEvaluator``,
    only images passed to ``update`` are evaluated, and an image predicted twice counts once, with
    its first predictions.
    """

    def __init__(
        self,
        coco_gt: Any,
        class_names: Mapping[int, str] | None = None,
        use_07_metric: bool = False,
        iou_threshold: float = IOU_THRESHOLD,
    ) -> None:
        data = coco_gt.dataset if hasattr(coco_gt, "dataset") else coco_gt
        if class_names is None:
            class_names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        self.class_names = dict(class_names)
        self.use_07_metric = use_07_metric
        self.iou_threshold = iou_threshold
        # image id -> category id -> (boxes [N, 4] devkit, difficult [N])
        self.ground_truth: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {
            int(img["id"]): {} for img in data["images"]
        }
        per_image: dict[int, dict[int, list[tuple[list[float], bool]]]] = {}
        for ann in data["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            hard = bool(ann.get("difficult", 0) or ann.get("iscrowd", 0))
            per_image.setdefault(int(ann["image_id"]), {}).setdefault(int(ann["category_id"]), []).append(
                ([x + 1.0, y + 1.0, x + w, y + h], hard)
            )
        for image_id, by_class in per_image.items():
            self.ground_truth[image_id] = {
                cid: (
                    np.asarray([b for b, _ in objs], dtype=np.float64).reshape(-1, 4),
                    np.asarray([d for _, d in objs]),
                )
                for cid, objs in by_class.items()
            }
        self.img_ids: list[int] = []
        # image id -> (boxes [N, 4] devkit, scores [N], labels [N]); first update of an image wins
        self.results: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.stats: dict[str, Any] = {}
        self.recall_precision: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def update(self, predictions: Mapping[Any, Mapping[str, torch.Tensor]]) -> None:
        """Add ``{image_id: {"scores" [N], "labels" [N], "boxes" [N, 4] abs xyxy in original pixels}}``."""
        for key, prediction in predictions.items():
            image_id = int(key.item() if isinstance(key, torch.Tensor) else key)
            if image_id not in self.ground_truth:
                raise KeyError(f"VocEvaluator.update: image id {image_id} is not in the ground-truth annotations")
            self.img_ids.append(image_id)
            if image_id in self.results:
                continue
            boxes = torch.as_tensor(prediction["boxes"]).detach().double().cpu().numpy().reshape(-1, 4).copy()
            boxes[:, :2] += 1.0
            self.results[image_id] = (
                boxes,
                torch.as_tensor(prediction["scores"]).detach().double().cpu().numpy().reshape(-1),
                torch.as_tensor(prediction["labels"]).detach().cpu().numpy().reshape(-1).astype(np.int64),
            )

    def synchronize_between_processes(self) -> None:
        """Gather image ids and predictions from every rank (the first rank holding an image wins)."""
        img_ids: list[int] = []
        results: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for rank_ids, rank_results in all_gather((self.img_ids, self.results)):
            img_ids.extend(rank_ids)
            for image_id, res in rank_results.items():
                results.setdefault(image_id, res)
        self.img_ids, self.results = img_ids, results

    def accumulate(self) -> None:
        """Compute the AP of every class over the images passed to ``update``."""
        images = sorted(set(self.img_ids))
        per_class: dict[str, float] = {}
        self.recall_precision = {}
        for cid, name in sorted(self.class_names.items()):
            ground_truth = {
                i: self.ground_truth[i].get(cid, (np.zeros((0, 4)), np.zeros(0, dtype=bool))) for i in images
            }
            detections = [
                (i, float(score), box)
                for i in images
                if i in self.results
                for box, score, label in zip(*self.results[i])
                if label == cid
            ]
            ap, recall, precision = voc_class_ap(detections, ground_truth, self.use_07_metric, self.iou_threshold)
            per_class[name] = ap
            self.recall_precision[cid] = (recall, precision)
        defined = [ap for ap in per_class.values() if ap != NO_GROUND_TRUTH]
        self.stats = {
            "voc_mAP50": float(np.mean(defined)) if defined else NO_GROUND_TRUTH,
            "voc_per_class_AP": per_class,
        }

    def summarize(self) -> None:
        """Print mAP@0.5 and the per-class AP (accumulating first if needed)."""
        if not self.stats:
            self.accumulate()
        metric = "11-point (VOC2007)" if self.use_07_metric else "area under the curve"
        print(f"VOC mAP@0.5 ({metric}): {self.stats['voc_mAP50']:.4f}")
        for name, ap in self.stats["voc_per_class_AP"].items():
            print(f"  {name:>16}: {'no ground truth' if ap == NO_GROUND_TRUTH else f'{ap:.4f}'}")

    def stats_dict(self) -> dict[str, Any]:
        """``{"voc_mAP50": float, "voc_per_class_AP": {name: AP}}`` (empty before ``accumulate``)."""
        return dict(self.stats)


def voc_evaluator_for(dataset: Dataset) -> VocEvaluator | None:
    """A ``VocEvaluator`` for a VOC data set (one built by ``datasets.voc``, through ``Subset`` or
    ``SeededDataset`` wrappers), ``None`` for any other data set."""
    while isinstance(dataset, (Subset, SeededDataset)):
        dataset = dataset.dataset
    use_07 = getattr(dataset, "voc_use_07_metric", None)
    if use_07 is None:
        return None
    return VocEvaluator(dataset.coco, dataset.id2label, use_07_metric=use_07)


__all__ = ["NO_GROUND_TRUTH", "VocEvaluator", "voc_ap", "voc_class_ap", "voc_evaluator_for"]
