"""COCO box evaluation: pycocotools (the reference) against faster-coco-eval on generated detections.

    python benchmarks/bench_coco_eval.py [--images 5000] [--dets 100] [--repeats 3]

Evaluates the same COCO-like set (``make_eval_set``) with each backend through
``datasets.coco_eval.evaluate_detections``, alternately, ``--repeats`` times; prints the median
wall-clock and CPU seconds of each and the ratios, and exits with status 1 unless the 12 stats agree
within ``--tolerance``. Not in the official code; figures in docs/results.md.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.coco_eval import COCO_STAT_NAMES, evaluate_detections  # noqa: E402

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def make_eval_set(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """``(ground truth COCO dict, detections in the COCO result format)``, deterministic in ``seed``.

    ``num_images`` images of 640x480 with 1-15 ground-truth boxes each (8 on average; COCO val2017
    has 7.3) over COCO's 80 sparse category ids, about 1% of them crowd, sizes spanning the small /
    medium / large ranges; ``dets_per_image`` detections per image (100: DETR's output): a jittered,
    sometimes mislabelled copy of each ground-truth box plus random boxes whose classes come from the
    image's own classes and a few others (a detector's top classes concentrate on what is in the
    image), with random scores."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height})
        n_gt = int(rng.integers(1, 16))
        side = np.exp(rng.uniform(np.log(8), np.log(400), size=(n_gt, 2)))  # small to large
        xy = rng.uniform(0, 1, size=(n_gt, 2)) * (np.array([width, height]) - side).clip(min=1)
        cats = rng.choice(COCO_CATEGORY_IDS, size=n_gt)
        for (x, y), (w, h), cat in zip(xy, side, cats):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h * 0.8),
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
        n_near = min(n_gt, dets_per_image)
        near = np.concatenate([xy[:n_near], side[:n_near]], 1) * rng.normal(1, 0.08, size=(n_near, 4))
        near_cats = np.where(rng.random(n_near) < 0.8, cats[:n_near], rng.choice(COCO_CATEGORY_IDS, size=n_near))
        n_rand = dets_per_image - n_near
        rand_side = np.exp(rng.uniform(np.log(4), np.log(480), size=(n_rand, 2)))
        rand_xy = rng.uniform(0, 1, size=(n_rand, 2)) * (np.array([width, height]) - rand_side).clip(min=1)
        boxes = np.concatenate([near, np.concatenate([rand_xy, rand_side], 1)])
        likely = np.concatenate([cats, rng.choice(COCO_CATEGORY_IDS, size=8)])
        labels = np.concatenate([near_cats, rng.choice(likely, size=n_rand)])
        scores = np.concatenate([rng.uniform(0.3, 1, n_near), rng.uniform(0, 0.6, n_rand)])
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            results.append({"image_id": image_id, "category_id": int(label), "bbox": box, "score": float(score)})
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in COCO_CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=["pycocotools", "faster"], choices=["pycocotools", "faster"])
    p.add_argument("--tolerance", type=float, default=1e-6, help="largest allowed difference of a stat")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    gt, results = make_eval_set(args.images, args.dets, args.seed)
    print(
        f"generated {len(gt['images'])} images, {len(gt['annotations'])} ground-truth boxes, "
        f"{len(results)} detections in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    times: dict[str, list[float]] = {b: [] for b in args.backends}
    cpu: dict[str, list[float]] = {b: [] for b in args.backends}
    stats: dict[str, list[float]] = {}
    # On a machine shared with other jobs the CPU seconds of this process are the steadier measure
    # (both backends evaluate on one thread here).
    for rep in range(args.repeats):
        for backend in args.backends:  # alternately: load on the machine affects both alike
            start, start_cpu = time.perf_counter(), time.process_time()
            coco_eval = evaluate_detections(gt, results, "bbox", backend, verbose=False)
            times[backend].append(time.perf_counter() - start)
            cpu[backend].append(time.process_time() - start_cpu)
            stats[backend] = [float(v) for v in coco_eval.stats]
            del coco_eval  # freed here, untimed: not charged to the next backend's run
            gc.collect()
            print(f"repeat {rep}: {backend:12} {times[backend][-1]:7.2f} s ({cpu[backend][-1]:.2f} s CPU)", flush=True)

    ref = args.backends[0]
    print(f"\n{'backend':12} {'wall s':>8} {'speed-up':>8} {'CPU s':>8} {'speed-up':>8}")
    for backend in args.backends:
        med, med_cpu = statistics.median(times[backend]), statistics.median(cpu[backend])
        print(
            f"{backend:12} {med:8.2f} {statistics.median(times[ref]) / med:7.2f}x "
            f"{med_cpu:8.2f} {statistics.median(cpu[ref]) / med_cpu:7.2f}x"
        )
    print("\n" + " ".join(f"{n:>7}" for n in ["", *COCO_STAT_NAMES]))
    for backend in args.backends:
        print(f"{backend[:7]:>7} " + " ".join(f"{v:7.4f}" for v in stats[backend]))
    worst = max(abs(a - b) for backend in args.backends for a, b in zip(stats[backend], stats[ref]))
    ok = worst <= args.tolerance
    print(f"largest difference of a stat: {worst:.2e} ({'within' if ok else 'ABOVE'} {args.tolerance:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
