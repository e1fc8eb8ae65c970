"""Run a trained detector on your images: COCO-format results and one drawn picture per image.

    python tools/predict.py --checkpoint outputs/demo/checkpoint.pth photos/ more/*.jpg --output preds
    python tools/predict.py --hub detr_resnet50 --pretrained street.jpg --output preds --threshold 0.7

Inputs (files, folders, glob patterns) are read and preprocessed as ``main.py --eval`` does for the
checkpoint (``tools.inference``); ``--output DIR`` receives ``predictions.json``, the drawings and,
for panoptic models, COCO panoptic PNGs (``predict`` lists the files). Not in the official code,
whose notebooks show the same steps by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as ``python tools/predict.py``
    import _repo_root  # noqa: F401

from tools.arguments import add_model_arguments  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Detect objects in images with a trained DETR / Deformable DETR: COCO results JSON and drawings.",
    )
    add_model_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns")
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--threshold", type=float, default=0.5, help="score above which detections are kept")
    parser.add_argument("--json_threshold", type=float, default=None, help="for predictions.json (default --threshold)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision")
    parser.add_argument("--no_drawings", action="store_true", help="only the JSON files")
    return parser


if __name__ == "__main__":
    get_parser().parse_args()  # --help and bad arguments answered before torch is imported

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tools import drawing  # noqa: E402
from tools.inference import (  # noqa: E402
    Progress,
    UnreadableImageError,
    atomic_write,
    autocast,
    batch_images,
    class_names,
    collect_images,
    eval_transform,
    load_from_arguments,
    original_sizes,
    prepare_output_folder,
    read_image,
    refuse_overwriting_inputs,
    remove_if_empty,
    run_command,
    save_png,
    unique_stem,
)


def image_ids(files: list[Path]) -> dict[Path, int | str]:
    """One distinct ``image_id`` per input: COCO-style file names (digits only) give their number,
    others their file name; a number or name that two inputs share (``1.png`` and ``01.png``,
    ``a/x.jpg`` and ``b/x.jpg``) gives each of them its path instead."""
    ids: dict[Path, int | str] = {p: int(p.stem) if p.stem.isdigit() else p.name for p in files}
    counts: dict[int | str, int] = {}
    for v in ids.values():
        counts[v] = counts.get(v, 0) + 1
    return {p: v if counts[v] == 1 else str(p) for p, v in ids.items()}


def coco_results(result: dict[str, torch.Tensor], image_id: int | str, file_name: str, threshold: float) -> list[dict]:
    """A post-processor's ``scores [K]``, ``labels [K]``, ``boxes [K, 4]`` (xyxy pixels) -> COCO
    results entries (``bbox`` xywh) for the detections scoring at least ``threshold``."""
    keep = result["scores"] >= threshold
    out = []
    for score, label, box in zip(result["scores"][keep].tolist(), result["labels"][keep].tolist(),
                                 result["boxes"][keep].tolist()):  # fmt: skip
        x0, y0, x1, y1 = box
        out.append({
            "image_id": image_id, "file_name": file_name, "category_id": int(label),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], "score": round(score, 5),
        })  # fmt: skip
    return out


def panoptic_categories(names: dict[int, str], is_thing_map: dict[int, bool]) -> list[dict[str, Any]]:
    """The panopticapi ``categories`` list of the classes that have a name or a thing/stuff flag."""
    ids = sorted(set(names) | {int(k) for k in is_thing_map})
    return [{"id": i, "name": names.get(i, f"class {i}"), "isthing": int(bool(is_thing_map.get(i, True)))}
            for i in ids]  # fmt: skip


@torch.no_grad()
def predict(args: argparse.Namespace) -> dict[str, Any]:
    """Run the command; returns a summary (``read``, ``unreadable``, ``detections``, ``output``).

    Images are batched (``--batch_size``) and run on ``--device`` (optionally under ``--amp``).
    ``--output DIR`` receives:

    * ``predictions.json``: the COCO results format (``image_id``, ``category_id``, ``bbox`` =
      ``[x, y, width, height]`` in pixels of the original image, ``score``) plus ``file_name``;
      ``image_id`` is the file name's number for COCO-style names (``000000039769.jpg``), else the
      file name (the path when two inputs share a number or name). Detections scoring at least ``--threshold`` (``--json_threshold 0`` keeps all, as a
      COCO evaluation wants them);
    * ``<name>.png``: the image with boxes, class names and scores above ``--threshold``;
    * panoptic checkpoints (``--masks`` with a thing/stuff map, or the official panoptic models) also
      ``panoptic/<name>.png`` (COCO panoptic PNG), ``panoptic.json`` (``segments_info`` per image, the
      panopticapi layout) and ``<name>_panoptic.png`` (a coloured overlay).

    Class names are the checkpoint's (``id2label``); official checkpoints and hub models get the COCO
    names. Files that cannot be read are reported by name and skipped with a count; the command fails
    when none could be read, and refuses an ``--output`` folder that holds inputs. Every output file is written to a temporary name and renamed.
    """
    files, notes = collect_images(args.inputs)
    for note in notes:
        print(f"note: {note}")
    if not files:
        raise FileNotFoundError(f"no image files in {' '.join(args.inputs)}")
    out = Path(args.output)
    refuse_overwriting_inputs(files, folder=out)
    ids = image_ids(files)
    created = prepare_output_folder(out)
    try:
        loaded = load_from_arguments(args)
    except BaseException:
        if created:
            remove_if_empty(out)
        raise
    names = class_names(loaded)
    device = loaded.args.device
    transform = eval_transform(loaded.args)
    panoptic = loaded.postprocessors.get("panoptic")
    json_threshold = args.threshold if args.json_threshold is None else args.json_threshold
    print(f"{loaded.source}: {len(files)} image(s) at shorter side {loaded.args.val_size or 800} "
          f"(max {loaded.args.max_size or 1333}) on {device}" + (f", {args.amp}" if args.amp != "none" else ""))  # fmt: skip

    results: list[dict] = []
    panoptic_annotations: list[dict] = []
    unreadable: list[str] = []
    taken: set[str] = set()
    progress = Progress(len(files))
    done = 0
    try:
        for start in range(0, len(files), args.batch_size):
            batch: list[tuple[Path, Image.Image]] = []
            for path in files[start : start + args.batch_size]:
                try:
                    batch.append((path, read_image(path)))
                except UnreadableImageError as e:
                    print(f"skipped {e}", flush=True)
                    unreadable.append(str(path))
            done += args.batch_size
            if not batch:
                continue
            images = [img for _, img in batch]
            samples, processed = batch_images(images, transform)
            with autocast(device, args.amp):
                outputs = loaded.model(samples.to(device))
            outputs = {k: v.float() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
            target_sizes = original_sizes(images).to(device)
            detections = loaded.postprocessors["bbox"](outputs, target_sizes)
            segments = panoptic(outputs, processed.to(device), target_sizes) if panoptic is not None else None
            for i, ((path, image), det) in enumerate(zip(batch, detections)):
                det = {k: v.cpu() for k, v in det.items()}
                name = unique_stem(path, taken)
                results += coco_results(det, ids[path], str(path), json_threshold)
                keep = det["scores"] >= args.threshold
                if not args.no_drawings:
                    drawn = drawing.draw_detections(
                        image, det["boxes"][keep].tolist(), det["labels"][keep].tolist(), det["scores"][keep].tolist(),
                        names,
                    )  # fmt: skip
                    save_png(drawn, out / f"{name}.png")
                if segments is not None:
                    panoptic_annotations.append(
                        _write_panoptic(
                            segments[i],
                            image,
                            name,
                            ids[path],
                            out,
                            names,
                            loaded.args.panoptic_is_thing_map,
                            args.no_drawings,
                        )  # fmt: skip
                    )
            progress.update(min(done, len(files)))
    except BaseException:
        if created:
            remove_if_empty(out)
        raise
    read = len(files) - len(unreadable)
    if read:
        atomic_write(out / "predictions.json", json.dumps(results) + "\n")
        if panoptic is not None:
            categories = panoptic_categories(names, loaded.args.panoptic_is_thing_map or {})
            atomic_write(out / "panoptic.json",
                         json.dumps({"annotations": panoptic_annotations, "categories": categories}) + "\n")  # fmt: skip
    elif created:
        remove_if_empty(out)
    summary = {"read": read, "unreadable": unreadable, "detections": len(results), "output": str(out)}
    if unreadable:
        print(f"skipped {len(unreadable)} of {len(files)} file(s) that could not be read: {', '.join(unreadable)}")
    if not read:
        raise UnreadableImageError(f"none of the {len(files)} input file(s) could be read; nothing written")
    print(f"{read} image(s): {len(results)} detection(s) with score >= {json_threshold} in {out / 'predictions.json'}"
          + ("" if args.no_drawings else f"; drawings in {out}"))  # fmt: skip
    return summary


def _write_panoptic(
    segments: dict[str, Any], image: Image.Image, name: str, image_id: int | str, out: Path, names: dict[int, str],
    is_thing_map: dict[int, bool] | None, no_drawings: bool,
) -> dict[str, Any]:  # fmt: skip
    """Write the COCO panoptic PNG (and the overlay); returns the image's panoptic.json entry."""
    from tools.visualize_panoptic import decode_png, panoptic_overlay

    (out / "panoptic").mkdir(exist_ok=True)
    atomic_write(out / "panoptic" / f"{name}.png", segments["png_string"])
    if not no_drawings:
        categories = panoptic_categories(names, is_thing_map or {})
        id_map = decode_png(segments["png_string"])
        if id_map.shape != (image.height, image.width):  # the PNG is at the original size
            raise RuntimeError(f"panoptic map {id_map.shape} does not match image {image.size}")
        overlay = panoptic_overlay(image, id_map, segments["segments_info"], categories, labels=False)
        overlay = _label_segments(overlay, id_map, segments["segments_info"], names)
        save_png(overlay, out / f"{name}_panoptic.png")
    return {"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments["segments_info"]}


def _label_segments(overlay: Image.Image, id_map: Any, segments_info: list[dict], names: dict[int, str]) -> Image.Image:
    """Readable names at the segments' centres (filled labels, font sized to the picture)."""
    import numpy as np
    from PIL import ImageDraw

    canvas, k = drawing.enlarge(overlay)
    draw = ImageDraw.Draw(canvas)
    size = drawing.font_size_for(*canvas.size)
    for seg in segments_info:
        ys, xs = np.nonzero(id_map == int(seg["id"]))
        if len(xs):
            cid = int(seg["category_id"])
            drawing.draw_label(draw, (float(xs.mean()) * k, float(ys.mean()) * k), names.get(cid, f"class {cid}"),
                               drawing.colour(cid), size, bounds=canvas.size)  # fmt: skip
    return canvas


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit(f"error: --batch_size must be >= 1, got {args.batch_size}")
    return run_command(predict, args)


if __name__ == "__main__":
    sys.exit(main())
