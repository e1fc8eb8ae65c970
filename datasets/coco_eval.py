"""COCO box / mask evaluation of DETR predictions (AP, AP50, ..., AR100 via pycocotools).

Same interface as the official DETR ``datasets/coco_eval.py``: ``CocoEvaluator(coco_gt, iou_types)``
with ``update``, ``synchronize_between_processes``, ``accumulate``, ``summarize`` and the
``coco_eval[iou_type]`` ``COCOeval`` objects (``.stats``, 12 numbers, and ``.eval``). Like the
official evaluator only the images passed to ``update`` are evaluated, and an image predicted
twice (e.g. repeated by a distributed sampler) counts once, with its first predictions.

Differences: the official code re-implements ``COCOeval.evaluate`` per batch on top of private
pycocotools internals that changed across versions. Here ``update`` only converts predictions to
the COCO result format; ``synchronize_between_processes`` gathers those results (not per-image
evaluation tables) from every rank; ``accumulate`` builds the result set once and runs the public
``COCOeval.evaluate()`` + ``accumulate()``. Zero predictions give stats of 0 (or -1 when there is
nothing to evaluate) instead of a crash. ``COCO_STAT_NAMES`` and ``stats_to_dict`` name the stats.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from util.distributed import all_gather

COCO_STAT_NAMES: list[str] = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
SUPPORTED_IOU_TYPES = ("bbox", "segm")


def stats_to_dict(stats: Iterable[float], prefix: str = "") -> dict[str, float]:
    """Name the 12 ``COCOeval.stats`` numbers: ``{"AP": ..., "AP50": ..., ..., "ARl": ...}``."""
    values = [float(v) for v in stats]
    if values and len(values) != len(COCO_STAT_NAMES):
        raise ValueError(f"expected {len(COCO_STAT_NAMES)} COCO stats, got {len(values)}")
    return {prefix + name: v for name, v in zip(COCO_STAT_NAMES, values)}


def _xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def prepare_for_coco_detection(image_id: int, prediction: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """``{"boxes" [N, 4] absolute xyxy, "scores" [N], "labels" [N]}`` -> COCO box results."""
    boxes = _xyxy_to_xywh(torch.as_tensor(prediction["boxes"]).detach().float().cpu()).tolist()
    scores = torch.as_tensor(prediction["scores"]).detach().float().cpu().tolist()
    labels = torch.as_tensor(prediction["labels"]).detach().cpu().tolist()
    return [
        {"image_id": image_id, "category_id": int(label), "bbox": box, "score": float(score)}
        for box, score, label in zip(boxes, scores, labels)
    ]


def prepare_for_coco_segmentation(image_id: int, prediction: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """``{"masks" [N, 1, H, W] or [N, H, W] (probabilities or bool), "scores", "labels"}`` -> COCO RLE results."""
    masks = torch.as_tensor(prediction["masks"]).detach().cpu()
    if masks.ndim == 4:
        masks = masks[:, 0]
    masks = (masks > 0.5) if masks.is_floating_point() else masks.bool()
    scores = torch.as_tensor(prediction["scores"]).detach().float().cpu().tolist()
    labels = torch.as_tensor(prediction["labels"]).detach().cpu().tolist()
    results = []
    for mask, score, label in zip(masks.numpy(), scores, labels):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("utf-8")
        results.append({"image_id": image_id, "category_id": int(label), "segmentation": rle, "score": float(score)})
    return results


_PREPARE = {"bbox": prepare_for_coco_detection, "segm": prepare_for_coco_segmentation}


class CocoEvaluator:
    """Collect predictions batch by batch, then compute COCO metrics for each IoU type.

    ``coco_gt`` is the ground-truth ``pycocotools.coco.COCO`` (``get_coco_api_from_dataset``);
    ``iou_types`` a subset of ``("bbox", "segm")``. After ``accumulate()`` and ``summarize()`` the
    metrics are ``self.coco_eval[iou_type].stats`` (``COCO_STAT_NAMES`` order).
    """

    def __init__(self, coco_gt: COCO, iou_types: Sequence[str]) -> None:
        iou_types = list(iou_types)
        unknown = [t for t in iou_types if t not in SUPPORTED_IOU_TYPES]
        if unknown:
            raise ValueError(f"unsupported iou types {unknown}; supported: {list(SUPPORTED_IOU_TYPES)}")
        self.coco_gt = copy.deepcopy(coco_gt)
        self.iou_types = iou_types
        self.coco_eval: dict[str, COCOeval] = {t: COCOeval(self.coco_gt, iouType=t) for t in iou_types}
        self.img_ids: list[int] = []
        # iou type -> image id -> COCO-format results of that image (first update of an image wins)
        self.results: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in iou_types}
        self._accumulated = False

    def update(self, predictions: Mapping[Any, Mapping[str, torch.Tensor]]) -> None:
        """Add ``{image_id: {"scores" [N], "labels" [N], "boxes" [N, 4] abs xyxy, "masks"? [N, 1, H, W]}}``."""
        for key, prediction in predictions.items():
            image_id = int(key.item() if isinstance(key, torch.Tensor) else key)
            if image_id not in self.coco_gt.imgs:
                raise KeyError(f"CocoEvaluator.update: image id {image_id} is not in the ground-truth annotations")
            self.img_ids.append(image_id)
            for iou_type in self.iou_types:
                if image_id in self.results[iou_type]:
                    continue
                if iou_type == "segm" and "masks" not in prediction:
                    raise KeyError("CocoEvaluator.update: iou type 'segm' needs 'masks' in the predictions")
                self.results[iou_type][image_id] = _PREPARE[iou_type](image_id, prediction)
        self._accumulated = False

    def synchronize_between_processes(self) -> None:
        """Gather image ids and results from every rank (the first rank holding an image wins)."""
        gathered = all_gather((self.img_ids, self.results))
        img_ids: list[int] = []
        results: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in self.iou_types}
        for rank_img_ids, rank_results in gathered:
            img_ids.extend(rank_img_ids)
            for iou_type in self.iou_types:
                for image_id, res in rank_results[iou_type].items():
                    results[iou_type].setdefault(image_id, res)
        self.img_ids = img_ids
        self.results = results
        self._accumulated = False

    def _result_coco(self, results: list[dict[str, Any]]) -> COCO:
        if results:
            with contextlib.redirect_stdout(io.StringIO()):
                return self.coco_gt.loadRes([dict(r) for r in results])
        empty = COCO()
        empty.dataset = {
            "images": list(self.coco_gt.dataset.get("images", [])),
            "categories": copy.deepcopy(self.coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            empty.createIndex()
        return empty

    def accumulate(self) -> None:
        """Run ``COCOeval.evaluate()`` and ``accumulate()`` on the collected predictions."""
        img_ids = sorted(set(self.img_ids))
        for iou_type in self.iou_types:
            results = [r for image_id in sorted(self.results[iou_type]) for r in self.results[iou_type][image_id]]
            coco_eval = self.coco_eval[iou_type]
            coco_eval.cocoDt = self._result_coco(results)
            coco_eval.params.imgIds = img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
        self._accumulated = True

    def summarize(self) -> None:
        """Print the standard COCO table per IoU type and fill ``coco_eval[iou_type].stats``."""
        if not self._accumulated:
            self.accumulate()
        for iou_type, coco_eval in self.coco_eval.items():
            print(f"IoU metric: {iou_type}")
            coco_eval.summarize()

    def stats_dict(self, iou_type: str = "bbox") -> dict[str, float]:
        """``stats_to_dict(self.coco_eval[iou_type].stats)`` (empty before ``summarize``)."""
        return stats_to_dict(self.coco_eval[iou_type].stats)
