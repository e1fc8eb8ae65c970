"""Hostile and careless annotation values (issue 21's data rows), met through the command line as a
user meets them: ``python -m datasets.check`` or ``python main.py`` in a subprocess on a small
generated set with the faults injected, under a 4 GiB address-space limit so that a value reaching
pycocotools' C code unchecked (it allocates without bound for a coordinate of 1e30) fails the test
instead of eating the machine. Each case expects one line per problem (file, image or annotation
id, field), no traceback; the panoptic PNG faults that start-up cannot see are skipped mid-run."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_faults import copy_coco, cut_png_pixels, make_voc, read_json, write_json
from pycocotools import mask as coco_mask
from tiny import TINY

from datasets.synthetic_panoptic import generate_synthetic_panoptic
from datasets.values import polygon_area, rle_counts, segmentation_area

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 4 << 30
TRAIN = Path("annotations") / "instances_train2017.json"
PANOPTIC_TRAIN = Path("annotations") / "panoptic_train2017.json"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python *argv`` (``-m datasets.check ...`` or ``main.py ...``) under the memory limit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, preexec_fn=_limit_memory
    )


def expect(proc: subprocess.CompletedProcess, status: int, *lines: str) -> str:
    """The output, once the exit status is ``status``, no traceback was printed and each of
    ``lines`` occurs in it."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == status and "Traceback" not in out, out[-4000:]
    for line in lines:
        assert line in out, f"{line!r} not in:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 train / 3 val image generated panoptic set (read-only: tests copy it)."""
    root = tmp_path_factory.mktemp("panoptic")
    generate_synthetic_panoptic(root, num_train=6, num_val=3, image_size=64, seed=0, verbose=False)
    return root


def _coco_faults(root: Path, segmentations_only: bool = False) -> list[str]:
    """Bad values in the training annotations of a COCO copy; returns the lines expected, those of
    the segmentations first (SEGMENTATION_LINES of them)."""
    path = root / TRAIN
    data = read_json(path)
    image, anns = data["images"][0], data["annotations"]
    where = f"{path}: annotation id"
    anns[0]["segmentation"] = [[1e30, 1.0, 5.0, 1.0, 5.0, 5.0]]  # area computed from it at load
    del anns[0]["area"]
    anns[1]["segmentation"] = [[float("nan"), 1.0, 5.0, 1.0, 5.0, 5.0]]
    anns[3]["segmentation"] = {"size": [64, 64], "counts": [10, 20]}  # runs do not cover 64x64
    anns[4]["segmentation"] = [[1.0, 2.0, 3.0]]
    if not segmentations_only:
        anns[2]["iscrowd"] = "0"  # every box a crowd box: nothing trained
        anns[5]["bbox"] = [0.0, 0.0, 1e12, 5.0]
        image["width"] = "abc"
    write_json(path, data)
    return [
        f"{where} {anns[0]['id']} 'segmentation polygon 0 coordinate' is 1e+30, outside the plausible range",
        f"{where} {anns[1]['id']} 'segmentation polygon 0 coordinate' is nan, expected a finite number",
        f"{where} {anns[3]['id']} has an RLE 'segmentation' whose runs do not cover its 64x64 size",
        f"{where} {anns[4]['id']} has a malformed polygon 0 in 'segmentation' (3 values",
        f"{where} {anns[2]['id']} 'iscrowd' is the string '0', expected the number 0 or 1",
        f"{where} {anns[5]['id']} has an invalid bbox [0.0, 0.0, 1000000000000.0, 5.0] ('w' is 1e+12, outside",
        f"{path}: image id {image['id']} 'width' is the string 'abc', expected an integer",
    ]


SEGMENTATION_LINES = 4


def _panoptic_faults(root: Path) -> list[str]:
    path = root / PANOPTIC_TRAIN
    data = read_json(path)
    del data["categories"][0]["id"]
    del data["annotations"][1]["segments_info"][0]["id"]
    data["annotations"][2]["segments_info"][0]["iscrowd"] = "0"
    del data["images"][3]["file_name"]
    write_json(path, data)
    image_ids = [a["image_id"] for a in data["annotations"]]
    # the detection-format file of the box / mask AP, read by pycocotools at evaluation
    detection_path = root / "annotations" / "instances_val2017.json"
    detection = read_json(detection_path)
    evaluated = detection["annotations"][0]
    evaluated["segmentation"] = [[1e30, 1.0, 5.0, 1.0, 5.0, 5.0]]
    write_json(detection_path, detection)
    return [
        f"{detection_path}: annotation id {evaluated['id']} 'segmentation polygon 0 coordinate' is 1e+30",
        f"{path}: category #0 lacks an integer 'id'",
        f"{path}: annotation of image {image_ids[1]}, segment #0 'id' is missing or null, expected an integer",
        f"{path}: annotation of image {image_ids[2]}, segment #0 'iscrowd' is the string '0'",
        f"{path}: image {data['images'][3]['id']} 'file_name' is None, expected a file name",
    ]


def _voc_faults(root: Path) -> list[str]:
    box = ("cat", (2, 2, 30, 30), 0)
    voc = make_voc(root / "VOCdevkit", "2012", "trainval", {n: [box] for n in ("a", "b", "c", "d")})
    folder = voc / "VOC2012" / "Annotations"
    edits = {
        "a": ("<width>64</width>", "<width>1e400</width>"),
        "b": ("<height>48</height>", "<height>nan</height>"),
        "c": ("<difficult>0</difficult>", "<difficult>nan</difficult>"),
        "d": ("<xmin>2</xmin>", "<xmin>NaN</xmin>"),
    }
    for name, (old, new) in edits.items():
        xml = folder / f"{name}.xml"
        xml.write_text(xml.read_text().replace(old, new))
    return [
        f"{folder / 'a.xml'}:5: '<width>' is inf, expected a finite number",
        f"{folder / 'b.xml'}:6: '<height>' is nan, expected a finite number",
        f"{folder / 'c.xml'}:12: object 'cat' '<difficult>' is 'nan', expected 0 or 1",
        f"{folder / 'd.xml'}:12: object 'cat' '<xmin>' is nan, expected a finite number",
    ]


@pytest.mark.parametrize("kind", ["coco", "coco_masks", "coco_panoptic", "voc"])
def test_bad_values_listed_at_start_up(kind: str, tmp_path: Path, synthetic_root: Path, panoptic: Path) -> None:
    """Start-up check: every bad value named in the list, nothing reaches pycocotools (the 1e30
    polygon without 'area' was rasterised to compute it: the OOM killer ended the process). A
    box-only run reads no segmentation (as the official code): the malformed ones are one warning
    there, and problems with --masks."""
    extra: list[str] = []
    if kind.startswith("coco_m") or kind == "coco":
        root = copy_coco(synthetic_root, tmp_path / "coco")
        lines, paths = _coco_faults(root), [str(root)]
        if kind == "coco":  # box-only: the other problems listed; alone, the segmentations only warned about
            out = expect(run("-m", "datasets.check", *paths, "--splits", "train"), 1, *lines[SEGMENTATION_LINES:])
            assert out.count("\n  - ") == len(lines) - SEGMENTATION_LINES, out
            root = copy_coco(synthetic_root, tmp_path / "segmentations")
            first = _coco_faults(root, segmentations_only=True)[0].split(": ", 1)[1]
            warning = f"4 annotation(s) with a malformed 'segmentation', unused without --masks (first: {first}"
            expect(run("-m", "datasets.check", str(root), "--splits", "train"), 0, warning)
            return
        kind, extra = "coco", ["--masks"]
    elif kind == "coco_panoptic":
        root = copy_coco(panoptic, tmp_path / "panoptic")
        lines, paths = _panoptic_faults(root), [str(root)]
    else:
        lines, paths = _voc_faults(tmp_path), [str(tmp_path / "VOCdevkit")]
    splits = ["train", "val"] if kind == "coco_panoptic" else ["train"]
    out = expect(run("-m", "datasets.check", "--dataset_file", kind, *paths, "--splits", *splits, *extra), 1, *lines)
    assert "train: FAILED" in out and out.count("\n  - ") == len(lines), out


def test_malformed_masks_refused_before_training(tmp_path: Path, synthetic_root: Path) -> None:
    """--masks: a 1e30 polygon (with its 'area' given, so the box-only check never rasterised it)
    and an RLE whose counts cannot be decoded were met mid-epoch (OOM, raw traceback): now named
    at start-up, before the model is built."""
    root = copy_coco(synthetic_root, tmp_path / "coco")
    data = read_json(root / TRAIN)
    first, second = data["annotations"][:2]
    first["segmentation"] = [[1e30, 1.0, 5.0, 1.0, 5.0, 5.0]]
    second["segmentation"] = {"size": [64, 64], "counts": "zz~"}
    write_json(root / TRAIN, data)
    out = tmp_path / "run"
    argv = [str(ROOT / "main.py"), *TINY, "--masks", "--coco_path", str(root), "--output_dir", str(out)]
    expect(
        run(*argv, cwd=tmp_path),
        1,
        f"annotation id {first['id']} 'segmentation polygon 0 coordinate' is 1e+30",
        f"annotation id {second['id']} has an RLE 'segmentation' whose 'counts' cannot be decoded",
        "nothing trained",
    )
    assert not (out / "checkpoint.pth").exists()


def test_data_warnings(tmp_path: Path, synthetic_root: Path) -> None:
    """Warned, not refused: an image file listed twice, a training split without objects, an image
    with more objects than --num_queries, annotations without segmentation under --masks."""
    root = copy_coco(synthetic_root, tmp_path / "coco")
    train = read_json(root / TRAIN)
    train["annotations"] = []
    first = train["images"][0]
    train["images"].append(dict(first, id=1000))
    write_json(root / TRAIN, train)
    val_path = root / "annotations" / "instances_val2017.json"
    val = read_json(val_path)
    crowded = val["images"][0]["id"]
    extra = [
        {"id": 9000 + k, "image_id": crowded, "category_id": 1, "bbox": [k, k, 4, 4], "area": 16, "iscrowd": 0}
        for k in range(9)
    ]
    val["annotations"] += extra
    write_json(val_path, val)
    expect(
        run("-m", "datasets.check", "--dataset_file", "coco", str(root), "--masks", "--num_queries", "8"),
        0,
        f"warning: train: {root / TRAIN}: image id 1000 lists the same file as image id {first['id']}",
        "but no annotation: the model can only learn to predict 'no object'",
        "warning: val: an image has",
        "more than --num_queries 8",
        f"warning: val: {val_path}: 9 annotation(s) without 'segmentation': their mask targets are empty (--masks)",
    )


@pytest.mark.slow
def test_panoptic_png_faults_found_by_check_and_skipped_mid_run(tmp_path: Path, panoptic: Path) -> None:
    """Pixel data cut short (a panoptic PNG, an image) and a segment of segments_info absent from
    its PNG: the default (header) start-up check cannot see them. ``datasets.check`` reports the
    PNGs; ``main.py`` skips each image with a warning, counted against --max_bad_images: with room
    for all three it trains (and stops evaluating at the second of two cut validation PNGs, with one
    line), with room for one it stops at the second with one line (also when a DataLoader worker
    meets it)."""
    root = copy_coco(panoptic, tmp_path / "panoptic")
    data = read_json(root / PANOPTIC_TRAIN)
    missing, cut, cut_image = data["annotations"][1:4]
    missing["segments_info"].append({"id": 77777, "category_id": 1, "iscrowd": 0, "area": 1})
    write_json(root / PANOPTIC_TRAIN, data)
    cut_png_pixels(root / "panoptic_train2017" / cut["file_name"])
    cut_png_pixels(root / "train2017" / data["images"][3]["file_name"])
    missing_png, cut_png = (root / "panoptic_train2017" / a["file_name"] for a in (missing, cut))
    paths = ["--coco_path", str(root), "--coco_panoptic_path", str(root)]
    expect(
        run("-m", "datasets.check", "--dataset_file", "coco_panoptic", *paths, "--splits", "train"),
        1,
        f"{missing_png}: image {missing['image_id']} ",
        "segment id 77777 of segments_info does not occur in the PNG",
        f"{cut_png}: image {cut['image_id']} ",
        "cannot be decoded",
    )
    for annotation in read_json(root / "annotations" / "panoptic_val2017.json")["annotations"][:2]:
        cut_png_pixels(root / "panoptic_val2017" / annotation["file_name"])  # 2 of 3: more than 0.5 allows
    argv = [str(ROOT / "main.py"), *TINY, "--dataset_file", "coco_panoptic", *paths, "--masks", "--batch_size", "2"]
    argv += ["--epochs", "1", "--output_dir", str(tmp_path / "run")]
    out = expect(
        run(*argv, "--max_bad_images", "0.5", cwd=tmp_path),
        1,
        f"warning: skipping {root / 'train2017' / data['images'][1]['file_name']}",
        f"{missing_png}: segment id 77777 of segments_info does not occur in the PNG",
        f"{cut_png}: cannot be decoded",
        f"warning: skipping {root / 'train2017' / data['images'][3]['file_name']}",
        "error: 2 unreadable images, more than the 1 that --max_bad_images allows (met while loading)",
        "Evaluation stopped; the checkpoints saved are kept.",
    )
    assert (tmp_path / "run" / "checkpoint.pth").exists() and out.count("warning: skipping") == 4
    argv[-1] = str(tmp_path / "stopped")
    out = expect(
        run(*argv, "--max_bad_images", "0.2", "--num_workers", "1", cwd=tmp_path),  # raised in a worker
        1,
        "error: 2 unreadable images, more than the 1 that --max_bad_images allows (met while loading)",
        "Training stopped; the last finished epoch's checkpoint.pth is untouched.",
    )
    assert out.count("warning: skipping") == 1


def test_areas_and_rle_decoding() -> None:
    """The numpy areas: shoelace for polygons, the runs of a compressed RLE decoded as pycocotools
    does (random masks, long runs, empty and full masks); undecodable strings refused."""
    assert polygon_area([[1, 1, 5, 1, 5, 5, 1, 5]]) == 16.0
    assert segmentation_area([[1, 1, 5, 1, 5, float("nan")]], 10, 10) is None
    rng = np.random.default_rng(0)
    masks = [rng.random((17, 23)) < p for p in (0.0, 0.1, 0.5, 0.9, 1.0)]
    masks.append(np.zeros((900, 700), dtype=bool))
    masks[-1][30:870, 5:690] = True  # runs beyond 2^15: several characters per value
    for mask in masks:
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = rle_counts({"counts": rle["counts"].decode()})
        assert counts is not None and counts.sum() == mask.size and counts[1::2].sum() == mask.sum()
        assert segmentation_area({"size": list(mask.shape), "counts": rle["counts"].decode()}, 700, 900) == mask.sum()
    assert rle_counts({"counts": "zz~"}) is None and rle_counts({"counts": "0P"}) is None
