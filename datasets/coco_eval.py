"""COCO box / mask evaluation of DETR predictions (AP, AP50, ..., AR100), per-category AP, and an offline command.

``CocoEvaluator`` has the official interface (``update``, ``synchronize_between_processes``,
``accumulate``, ``summarize``, ``coco_eval[iou_type].stats``), with pycocotools or, optionally,
faster-coco-eval (``--coco_eval_backend faster``); ``per_class_ap`` and ``stats_to_dict`` name the
numbers. ``python -m datasets.coco_eval --gt GT.json --results DETS.json`` evaluates a detection file.
Unlike the official code, it runs pycocotools' public ``evaluate()`` once instead of re-implementing it per batch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

if TYPE_CHECKING:
    import torch

COCO_STAT_NAMES: list[str] = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
SUPPORTED_IOU_TYPES = ("bbox", "segm")
COCO_EVAL_BACKENDS = ("pycocotools", "faster")


def coco_eval_backend(name: str) -> tuple[type, type]:
    """``(COCO, COCOeval)`` classes of a backend: ``pycocotools`` (the reference) or ``faster``
    (faster-coco-eval, an optional extra imported here, on first use: C++ per-image matching and
    accumulation, the same 12 numbers to 1e-6)."""
    if name == "pycocotools":
        return COCO, COCOeval
    if name == "faster":
        try:
            from faster_coco_eval import COCO as FasterCOCO
            from faster_coco_eval import COCOeval_faster
        except ImportError as e:
            raise ImportError(
                "--coco_eval_backend faster needs the faster-coco-eval package: pip install faster-coco-eval"
            ) from e
        return FasterCOCO, COCOeval_faster
    raise ValueError(f"--coco_eval_backend: unknown '{name}', choose from {list(COCO_EVAL_BACKENDS)}")


def _quiet_coco(coco_cls: type, dataset: dict[str, Any] | None = None) -> Any:
    """A ``coco_cls`` over ``dataset`` (indexed), without the loading messages."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_cls()
        if dataset is not None:
            coco.dataset = dataset
            coco.createIndex()
    return coco


def ground_truth_for_backend(coco_gt: Any, backend: str, private: bool = True) -> Any:
    """The ground truth ``coco_gt`` (a pycocotools-style ``COCO``, or the annotation dict) as the
    backend's ``COCO``; over a deep copy of the annotations with ``private`` (evaluation adds
    fields to them), else over the caller's dict itself."""
    coco_cls, _ = coco_eval_backend(backend)
    dataset = coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset
    return _quiet_coco(coco_cls, copy.deepcopy(dataset) if private else dataset)


def _make_cocoeval(backend: str, coco_gt: Any, iou_type: str) -> Any:
    _, eval_cls = coco_eval_backend(backend)
    if backend == "faster":  # its messages go to print, as pycocotools'
        return eval_cls(coco_gt, iouType=iou_type, print_function=print)
    return eval_cls(coco_gt, iouType=iou_type)


def load_results(coco_gt: Any, results: list[dict[str, Any]]) -> Any:
    """The detections ``results`` (COCO result format) as a result ``COCO`` of ``coco_gt``'s
    class; an empty list gives an empty result set (``loadRes`` fails on it)."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes([dict(r) for r in results])
    return _quiet_coco(
        type(coco_gt),
        {
            "images": list(coco_gt.dataset.get("images", [])),
            "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        },
    )


@contextlib.contextmanager
def _gc_paused() -> Iterable[None]:
    """Python's cyclic garbage collector off for the block: loading and matching detections
    creates millions of small objects that hold no cycles, and the collector's repeated scans of
    them cost more than the work itself (5,000 images x 100 detections: the faster backend's
    ``loadRes`` 1.9 s -> 0.45 s). Numbers are unaffected."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def evaluate_results(coco_eval: Any, coco_gt: Any, results: list[dict[str, Any]], img_ids: Sequence[int]) -> Any:
    """``load_results`` then ``run_cocoeval`` on ``img_ids``, with the garbage collector paused."""
    with _gc_paused():
        return run_cocoeval(coco_eval, load_results(coco_gt, results), img_ids)


def run_cocoeval(coco_eval: Any, coco_dt: Any, img_ids: Sequence[int] | None = None) -> Any:
    """``evaluate()`` + ``accumulate()`` of ``coco_eval`` on the result set ``coco_dt``
    (restricted to ``img_ids`` when given); returns ``coco_eval``."""
    coco_eval.cocoDt = coco_dt
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    return coco_eval


def per_class_ap(coco_eval: Any) -> list[dict[str, Any]]:
    """AP (IoU 0.50:0.95), AP50 and AP75 per category, all areas, 100 detections, from an
    accumulated ``COCOeval`` of either backend (``coco_eval.eval["precision"] [T, R, K, A, M]``).

    Returns one ``{"id", "name", "AP", "AP50", "AP75", "num_gt"}`` per evaluated category, in
    category-id order; the name comes from the ground truth's ``categories``. A category without
    ground truth has AP -1 (the pycocotools convention: nothing to evaluate)."""
    if not getattr(coco_eval, "eval", None) or "precision" not in coco_eval.eval:
        raise ValueError("per_class_ap needs an accumulated COCOeval: call evaluate() and accumulate() first")
    params = coco_eval.params
    precision = np.asarray(coco_eval.eval["precision"])
    area = list(params.areaRngLbl).index("all")
    max_det = list(params.maxDets).index(max(params.maxDets))
    iou_thrs = np.asarray(params.iouThrs)
    cats = coco_eval.cocoGt.cats
    img_ids = set(params.imgIds)
    gt_counts: dict[int, int] = {}
    for ann in coco_eval.cocoGt.dataset.get("annotations", []):
        if not ann.get("iscrowd", 0) and ann["image_id"] in img_ids:
            gt_counts[ann["category_id"]] = gt_counts.get(ann["category_id"], 0) + 1

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else -1.0

    rows = []
    for k, cat_id in enumerate(params.catIds):
        pr = precision[:, :, k, area, max_det]  # [T, R]
        row = {"id": int(cat_id), "name": str(cats.get(cat_id, {}).get("name", cat_id)), "AP": mean(pr)}
        for label, thr in (("AP50", 0.5), ("AP75", 0.75)):
            t = np.flatnonzero(np.isclose(iou_thrs, thr))
            row[label] = mean(pr[t]) if t.size else -1.0
        row["num_gt"] = gt_counts.get(int(cat_id), 0)
        rows.append(row)
    return rows


def format_per_class(rows: Sequence[Mapping[str, Any]]) -> str:
    """``per_class_ap`` rows as an aligned text table (``-`` where a class has no ground truth)."""
    width = max([len("category"), *(len(str(r["name"])) for r in rows)])

    def fmt(v: float) -> str:
        return "    -" if v < 0 else f"{v:5.3f}"

    lines = [f"{'id':>4} {'category':<{width}} {'AP':>5} {'AP50':>5} {'AP75':>5} {'#gt':>6}"]
    for r in rows:
        lines.append(
            f"{r['id']:>4} {r['name']:<{width}} {fmt(r['AP'])} {fmt(r['AP50'])} {fmt(r['AP75'])} {r['num_gt']:>6}"
        )
    return "\n".join(lines)


def stats_to_dict(stats: Iterable[float], prefix: str = "") -> dict[str, float]:
    """Name the 12 ``COCOeval.stats`` numbers: ``{"AP": ..., "AP50": ..., ..., "ARl": ...}``."""
    values = [float(v) for v in stats]
    if values and len(values) != len(COCO_STAT_NAMES):
        raise ValueError(f"expected {len(COCO_STAT_NAMES)} COCO stats, got {len(values)}")
    return {prefix + name: v for name, v in zip(COCO_STAT_NAMES, values)}


def all_gather(data: Any) -> list[Any]:
    """``util.distributed.all_gather``, imported on first use (the offline command needs no torch)."""
    from util.distributed import all_gather as gather

    return gather(data)


def _xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    import torch

    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def prepare_for_coco_detection(image_id: int, prediction: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """``{"boxes" [N, 4] absolute xyxy, "scores" [N], "labels" [N]}`` -> COCO box results."""
    import torch

    boxes = _xyxy_to_xywh(torch.as_tensor(prediction["boxes"]).detach().float().cpu()).tolist()
    scores = torch.as_tensor(prediction["scores"]).detach().float().cpu().tolist()
    labels = torch.as_tensor(prediction["labels"]).detach().cpu().tolist()
    return [
        {"image_id": image_id, "category_id": int(label), "bbox": box, "score": float(score)}
        for box, score, label in zip(boxes, scores, labels)
    ]


def prepare_for_coco_segmentation(image_id: int, prediction: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """``{"masks" [N, 1, H, W] or [N, H, W] (probabilities or bool), "scores", "labels"}`` -> COCO RLE results."""
    import torch

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
    ``iou_types`` a subset of ``("bbox", "segm")``; ``backend`` one of ``COCO_EVAL_BACKENDS``.
    After ``accumulate()`` and ``summarize()`` the metrics are ``self.coco_eval[iou_type].stats``
    (``COCO_STAT_NAMES`` order) and ``self.per_class(iou_type)`` gives the per-category AP.

    As officially, only the images passed to ``update`` are evaluated, and an image predicted twice
    (e.g. repeated by a distributed sampler) counts once, with its first predictions. The official
    code re-implements ``COCOeval.evaluate`` per batch on top of private pycocotools internals that
    changed across versions; here ``update`` only converts predictions to the COCO result format,
    ``synchronize_between_processes`` gathers those results (not per-image evaluation tables), and
    ``accumulate`` builds the result set once and runs the public ``COCOeval.evaluate()`` +
    ``accumulate()``. Zero predictions give stats of 0 (-1 when there is nothing to evaluate), not a crash.
    """

    def __init__(self, coco_gt: COCO, iou_types: Sequence[str], backend: str = "pycocotools") -> None:
        iou_types = list(iou_types)
        unknown = [t for t in iou_types if t not in SUPPORTED_IOU_TYPES]
        if unknown:
            raise ValueError(f"unsupported iou types {unknown}; supported: {list(SUPPORTED_IOU_TYPES)}")
        self.backend = backend
        self.coco_gt = ground_truth_for_backend(coco_gt, backend)
        self.iou_types = iou_types
        self.coco_eval: dict[str, Any] = {t: _make_cocoeval(backend, self.coco_gt, t) for t in iou_types}
        self.img_ids: list[int] = []
        # iou type -> image id -> COCO-format results of that image (first update of an image wins)
        self.results: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in iou_types}
        self._accumulated = False

    def update(self, predictions: Mapping[Any, Mapping[str, torch.Tensor]]) -> None:
        """Add ``{image_id: {"scores" [N], "labels" [N], "boxes" [N, 4] abs xyxy, "masks"? [N, 1, H, W]}}``."""
        for key, prediction in predictions.items():
            image_id = int(key.item() if hasattr(key, "item") else key)  # a tensor or numpy scalar, or an int
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

    def accumulate(self) -> None:
        """Run ``COCOeval.evaluate()`` and ``accumulate()`` on the collected predictions."""
        img_ids = sorted(set(self.img_ids))
        for iou_type in self.iou_types:
            results = [r for image_id in sorted(self.results[iou_type]) for r in self.results[iou_type][image_id]]
            evaluate_results(self.coco_eval[iou_type], self.coco_gt, results, img_ids)
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

    def per_class(self, iou_type: str = "bbox") -> list[dict[str, Any]]:
        """``per_class_ap`` of ``iou_type`` (after ``accumulate``)."""
        if not self._accumulated:
            self.accumulate()
        return per_class_ap(self.coco_eval[iou_type])


# --------------------------------------------------------------------------------------------
# Offline evaluation of a detection file: python -m datasets.coco_eval --gt GT.json --results DETS.json


def check_results(results: Any, coco_gt: Any, path: str, iou_type: str = "bbox") -> list[dict[str, Any]]:
    """Validate COCO-format detections against the ground truth: a list of objects with
    ``image_id``, ``category_id``, ``score`` and ``bbox`` (4 finite numbers, ``bbox``) or
    ``segmentation`` (``segm``), image ids present in the ground truth. Raises ``ValueError``
    naming ``path`` and the detection's index. Detections of categories absent from the ground
    truth are kept (COCOeval ignores them) and counted by the caller."""
    if not isinstance(results, list):
        raise ValueError(
            f"{path}: expected a JSON list of detections (COCO result format), got {type(results).__name__}"
        )
    needed = ("image_id", "category_id", "score", "bbox" if iou_type == "bbox" else "segmentation")
    unknown_images: set[Any] = set()
    for i, det in enumerate(results):
        if not isinstance(det, dict):
            raise ValueError(f"{path}: detection #{i} is not an object: {str(det)[:120]}")
        missing = [k for k in needed if k not in det]
        if missing:
            raise ValueError(f"{path}: detection #{i} lacks {missing}: {str(det)[:200]}")
        score = det["score"]
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"{path}: detection #{i} has score {score!r}, expected a finite number")
        if iou_type == "bbox":
            box = det["bbox"]
            if (
                not isinstance(box, (list, tuple))
                or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
            ):
                raise ValueError(f"{path}: detection #{i} has bbox {box!r}, expected 4 finite numbers x, y, w, h")
        if det["image_id"] not in coco_gt.imgs:
            unknown_images.add(det["image_id"])
    if unknown_images:
        shown = sorted(unknown_images, key=str)[:5]
        raise ValueError(
            f"{path}: {len(unknown_images)} image id(s) not in the ground truth, e.g. {shown}: "
            "are these detections of another split?"
        )
    return results


def _check_areas(data: dict[str, Any], path: str) -> None:
    for i, ann in enumerate(data["annotations"]):
        if "area" not in ann:
            raise ValueError(
                f"{path}: annotation {ann.get('id', f'#{i}')} lacks 'area' "
                "(COCO evaluation needs it for the small/medium/large split)"
            )


def evaluate_detections(
    coco_gt: Any,
    results: list[dict[str, Any]],
    iou_type: str = "bbox",
    backend: str = "pycocotools",
    verbose: bool = True,
    private: bool = True,
) -> Any:
    """Evaluate COCO-format ``results`` on every image of ``coco_gt`` (a ``COCO`` or the
    annotation dict) as test-dev evaluation does; returns the summarized ``COCOeval`` (``.stats``).
    ``verbose=False`` silences the backend's messages and table; ``private=False`` evaluates on
    the caller's annotation dict itself (no copy; evaluation adds fields to its annotations)."""
    out = sys.stdout if verbose else io.StringIO()
    with contextlib.redirect_stdout(out):
        gt = ground_truth_for_backend(coco_gt, backend, private)
        coco_eval = _make_cocoeval(backend, gt, iou_type)
        evaluate_results(coco_eval, gt, results, sorted(gt.getImgIds()))
        coco_eval.summarize()
    return coco_eval


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file in the same folder and a rename:
    a reader never sees a partial file, and a failed write leaves nothing behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: str, what: str) -> Any:
    """The JSON file given to ``--what``; a missing file or bad JSON is a ``ValueError`` naming both."""
    from datasets.coco_json import DatasetError, load_coco_json

    if not Path(path).is_file():
        raise ValueError(f"--{what}: no such file {path}")
    try:
        return load_coco_json(path)
    except DatasetError as e:
        raise ValueError(f"--{what} {e}") from e


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line; returns what it writes to ``--out``."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.coco_eval",
        description="COCO evaluation of a detection file: prints the 12 COCO stats by name and per-category AP.",
    )
    parser.add_argument("--gt", required=True, help="ground-truth COCO annotation file (instances_*.json)")
    parser.add_argument("--results", required=True, help="detections in the COCO result format (a JSON list)")
    parser.add_argument("--backend", default="pycocotools", choices=COCO_EVAL_BACKENDS)
    parser.add_argument("--iou_type", default="bbox", choices=SUPPORTED_IOU_TYPES)
    parser.add_argument("--out", default=None, help="write the stats (and per-category AP) to this JSON file")
    parser.add_argument("--per_class", action="store_true", help="print the per-category AP table")
    args = parser.parse_args(argv)
    try:
        if args.out is not None and not Path(args.out).resolve().parent.is_dir():
            raise ValueError(f"--out {args.out}: folder {Path(args.out).resolve().parent} does not exist")
        from datasets.coco_json import DatasetError, check_coco_dict

        gt_data = _read_json(args.gt, "gt")
        try:
            info = check_coco_dict(gt_data, args.gt)
        except DatasetError as e:
            raise ValueError(str(e)) from e
        _check_areas(gt_data, args.gt)
        gt = _quiet_coco(COCO, gt_data)
        results = check_results(_read_json(args.results, "results"), gt, args.results, args.iou_type)
        coco_eval_backend(args.backend)  # a missing optional package fails before the work
    except (ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e
    unknown = sum(r["category_id"] not in gt.cats for r in results)
    print(
        f"{args.gt}: {info['num_images']} images, {info['num_annotations']} annotations; "
        f"{args.results}: {len(results)} detections"
    )
    if unknown:
        print(f"warning: {unknown} detection(s) have a category id absent from the ground truth: not evaluated")
    start = time.perf_counter()
    coco_eval = evaluate_detections(gt_data, results, args.iou_type, args.backend, verbose=False, private=False)
    seconds = time.perf_counter() - start
    stats = stats_to_dict(coco_eval.stats)
    rows = per_class_ap(coco_eval)
    width = max(len(n) for n in COCO_STAT_NAMES)
    for name, value in stats.items():
        print(f"{name:<{width}} {value:.4f}")
    if args.per_class:
        print(format_per_class(rows))
    print(f"({args.backend}, {args.iou_type}, {seconds:.1f} s)")
    summary = {"iou_type": args.iou_type, "backend": args.backend, **stats, "per_class": rows}
    if args.out is not None:
        write_json_atomic(args.out, summary)
        print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
