"""main.py meeting bad or unusual data (the data rows of issue 11, the bad input of issue 8) and
fine-tuning on the real PASCAL VOC sample end to end. Each problem is met where a user meets it:
through ``main.py``, before anything trains, with every problem named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from data_faults import (
    copy_coco,
    corrupt_png_data,
    exif_rotated_jpeg,
    make_voc,
    make_yolo,
    noise_image,
    png16,
    read_json,
    truncate,
    write_json,
)
from golden import DATA_DIR
from test_main import _expect_exit, parse
from tiny import TINY

import main as main_module
from models import build_model
from util.checkpoint import save_checkpoint
from util.config import resolve

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TRAIN = Path("annotations") / "instances_train2017.json"
VAL = Path("annotations") / "instances_val2017.json"
VOCDEVKIT = DATA_DIR / "voc_mmfewshot" / "VOCdevkit"


@pytest.fixture
def coco(tmp_path: Path, synthetic_coco: Path) -> Path:
    return copy_coco(synthetic_coco, tmp_path / "coco")


def test_data_problems_all_reported_before_training(coco: Path, tmp_path: Path) -> None:
    train, val = read_json(coco / TRAIN), read_json(coco / VAL)
    images = train["images"]
    truncate(coco / "train2017" / images[0]["file_name"])  # 1 of 12 unreadable: more than 0.1 %
    images[1]["width"] = 96  # JSON size different from the image
    exif_rotated_jpeg(coco / "train2017" / "phone.jpg", noise_image(64, 32))
    images[2].update(file_name="phone.jpg", width=32, height=64)  # the stored size, not the displayed one
    val["annotations"][0]["image_id"] = 999
    write_json(coco / TRAIN, train)
    write_json(coco / VAL, val)
    out = tmp_path / "run"
    message = _expect_exit(
        [*TINY, "--coco_path", str(coco), "--output_dir", str(out)],
        f"{coco / 'train2017' / images[0]['file_name']}: image id {images[0]['id']}",
        "is truncated",
        "is 96x64 (width x height) in the annotation file but 64x64 in the image file",
        "EXIF orientation 6",
        "instances_val2017.json: annotation id",
        "refers to image_id 999",
    )
    assert message.count("\n  - ") == 4  # every problem of both files, listed together
    assert not (out / "checkpoint.pth").exists() and not (out / "log.txt").exists()


def test_messy_data_trains_and_evaluates(coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train, val = read_json(coco / TRAIN), read_json(coco / VAL)
    images = train["images"]
    folder = coco / "train2017"
    truncate(folder / images[0]["file_name"])  # found by the start-up check: skipped
    corrupt_png_data(folder / images[1]["file_name"])  # passes the header check, fails when loaded: skipped
    displayed = np.asarray(PIL.Image.open(folder / images[2]["file_name"]).convert("RGB"))
    exif_rotated_jpeg(folder / "phone.jpg", displayed)  # phone photo: boxes in displayed orientation
    images[2]["file_name"] = "phone.jpg"
    gray = np.asarray(PIL.Image.open(folder / images[3]["file_name"]).convert("L")).astype(np.uint16)
    png16(folder / images[3]["file_name"], gray * 257)  # a 16-bit PNG: scaled back, not saturated
    for img in val["images"]:  # string image ids, annotations without id, area, iscrowd
        img["id"] = f"val-{img['id']}"
    for ann in val["annotations"]:
        ann["image_id"] = f"val-{ann['image_id']}"
        for key in ("id", "area", "iscrowd"):
            del ann[key]
    write_json(coco / TRAIN, train)
    write_json(coco / VAL, val)
    out = tmp_path / "run"
    stats = main_module.main(
        parse([*TINY, "--coco_path", str(coco), "--output_dir", str(out), "--epochs", "1", "--max_bad_images", "0.2"])
    )
    log = capsys.readouterr().out
    assert len(stats["coco_eval_bbox"]) == 12 and (out / "checkpoint.pth").is_file()
    assert f"warning: train: skipping unreadable image {folder / images[0]['file_name']}" in log
    assert f"warning: skipping {folder / images[1]['file_name']} (image id {images[1]['id']}" in log
    assert "1 image(s) rotated by their EXIF orientation" in log and "1 image(s) 16-bit (scaled to 8 bits)" in log
    assert "image ids are not all integers (e.g. 'val-1')" in log
    assert "without 'area': computed" in log and "without 'iscrowd': set to 0" in log and "without 'id'" in log


def test_validation_only_category_stops_before_training(coco: Path, tmp_path: Path) -> None:
    """num_classes from a checkpoint (4, as the training file's ids 1..3 give); the validation file
    alone uses id 4. The official code trains an epoch, then fails in the evaluation's loss."""
    model = build_model(resolve(parse([*TINY, "--num_classes", "4"])))[0]
    ckpt = tmp_path / "four_classes.pth"
    save_checkpoint({"model": model.state_dict(), "epoch": 0}, ckpt)
    val = read_json(coco / VAL)
    val["categories"].append({"id": 4, "name": "square"})
    val["annotations"][0]["category_id"] = 4
    write_json(coco / VAL, val)
    out = tmp_path / "run"
    _expect_exit(
        [*TINY, "--coco_path", str(coco), "--output_dir", str(out), "--resume", str(ckpt), "--epochs", "2"],
        "instances_val2017.json",
        "category id 4",
        "num_classes is 4",
        "pass --num_classes 5",
    )
    assert not (out / "log.txt").exists()


def test_empty_validation_set_stops_at_start_up(coco: Path) -> None:
    write_json(coco / VAL, {**read_json(coco / VAL), "images": [], "annotations": []})
    _expect_exit([*TINY, "--coco_path", str(coco)], "instances_val2017.json: the validation split has no image")


def test_voc_and_yolo_bad_input_named_with_file_and_line(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "VOCdevkit", "2012", "trainval", {"a": [("cat", (1, 1, 30, 30), 0)]})
    (voc / "VOC2012" / "Annotations").rename(voc / "VOC2012" / "Labels")
    _expect_exit(
        [*TINY, "--dataset_file", "voc", "--voc_path", str(voc), "--val_split", "trainval"],
        "VOC2012: is not a VOC year folder: it has no Annotations/",
    )
    yolo = make_yolo(tmp_path / "yolo", ["cat"], {"train": {"a": ["0 0.5 0.5 0.2 0.2 0.1"]}, "val": {"b": []}})
    _expect_exit(
        [*TINY, "--dataset_file", "yolo", "--yolo_path", str(yolo)],
        f"{yolo / 'labels' / 'train' / 'a.txt'}:1: has 6 fields",
    )


VOC_FLAGS = [
    "--dataset_file", "voc", "--voc_path", str(VOCDEVKIT), "--val_split", "test", "--remove_difficult",
    "--epochs", "1", "--lr_drop", "1",
]  # fmt: skip


@pytest.mark.slow
def test_voc_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if not (VOCDEVKIT / "VOC2007" / "Annotations").is_dir():
        pytest.skip(f"VOC sample not found under {VOCDEVKIT}")
    # fine-tuned from a COCO-like checkpoint (91 classes, 10 queries): head and queries re-initialised
    coco_like = build_model(resolve(parse([*TINY, "--num_classes", "91", "--num_queries", "10"])))[0]
    save_checkpoint({"model": coco_like.state_dict()}, tmp_path / "coco_like.pth")
    main_module.main(parse([*TINY, *VOC_FLAGS, "--output_dir", str(tmp_path / "voc"), "--finetune",
                            str(tmp_path / "coco_like.pth")]))  # fmt: skip
    text = capsys.readouterr().out
    assert "num_classes = 20 (from max category id" in text
    assert "--finetune: re-initialised class_embed.weight: checkpoint (92, 32), model (21, 32)" in text
    assert "--finetune: re-initialised query_embed.weight: checkpoint (10, 32), model (8, 32)" in text
    entry = json.loads((tmp_path / "voc" / "log.txt").read_text().splitlines()[-1])
    assert len(entry["test_coco_eval_bbox"]) == 12  # the fork's COCO-style numbers
    per_class = entry["test_voc_per_class_AP"]  # and the devkit's
    assert len(per_class) == 20 and "person" in per_class and per_class["bicycle"] == -1.0  # no bicycle in the sample
    assert 0.0 <= entry["test_voc_mAP50"] <= 1.0 and np.isfinite(entry["train_loss"])
    ckpt = torch.load(tmp_path / "voc" / "checkpoint.pth", weights_only=True)
    assert ckpt["model"]["class_embed.bias"].numel() == 21  # 20 VOC classes + no-object
    assert ckpt["id2label"][0] == "aeroplane" and ckpt["id2label"][19] == "tvmonitor"  # names travel
