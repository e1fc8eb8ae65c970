"""The start-up data check (``datasets.check``) on COCO-format data: every problem of a split listed
at once, fixes made while loading counted, unreadable images skipped up to ``--max_bad_images``,
empty validation sets, custom paths, the typed config and the ``python -m datasets.check`` CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import PIL.Image
import pytest
import torch
from data_faults import copy_coco, exif_rotated_jpeg, noise_image, read_json, save_jpeg, truncate, write_json

from datasets import DataConfig, DatasetError, build_dataset, build_datasets, check_num_classes, data_config_from_args
from datasets import check as check_module
from datasets.coco_eval import CocoEvaluator
from datasets.coco_panoptic import CocoPanoptic
from datasets.coco_panoptic import build as build_panoptic
from datasets.synthetic_panoptic import generate_synthetic_panoptic
from util.config import get_args_parser

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TRAIN = Path("annotations") / "instances_train2017.json"
VAL = Path("annotations") / "instances_val2017.json"


def config(root: Path, **kw) -> DataConfig:
    return DataConfig(coco_path=str(root), train_scales=(64,), val_size=64, max_size=64, **kw)


@pytest.fixture
def coco(tmp_path: Path, synthetic_root: Path) -> Path:
    return copy_coco(synthetic_root, tmp_path / "coco")


def test_every_problem_listed_at_once(coco: Path) -> None:
    data = read_json(coco / TRAIN)
    images = data["images"]
    images[0]["width"] = 80  # JSON size differs from the real image
    truncate(coco / "train2017" / images[1]["file_name"])  # unreadable: 1 of 12 > 0.1 %
    displayed = noise_image(64, 32)  # EXIF-rotated phone photo, JSON gives the stored size
    exif_rotated_jpeg(coco / "train2017" / "phone.jpg", displayed)
    images[2].update(file_name="phone.jpg", width=32, height=64)
    data["annotations"][0]["category_id"] = 9  # not listed
    del data["annotations"][1]["bbox"]
    write_json(coco / TRAIN, data)
    with pytest.raises(DatasetError) as err:
        build_dataset("train", config(coco))
    message = str(err.value)
    assert "5 problem(s), nothing trained" in message and "1 of 12 images cannot be read" in message
    by_what = {p.what.split(" ")[0]: p for p in err.value.problems}
    assert len(err.value.problems) == 5
    assert f"image id {images[0]['id']}" in message and "is 80x64 (width x height) in the annotation file" in message
    assert "is truncated (no JPEG end-of-image marker)" in message or "is truncated (its chunks" in message
    assert "EXIF orientation 6 is applied (stored as 32x64)" in message
    assert f"annotation id {data['annotations'][0]['id']} has category_id 9" in message
    assert f"annotation id {data['annotations'][1]['id']} lacks ['bbox']" in message
    assert by_what["lacks"].file == str(coco / TRAIN)


def test_messy_validation_json_is_normalised(coco: Path, capsys: pytest.CaptureFixture) -> None:
    data = read_json(coco / VAL)
    for img in data["images"]:
        img["id"] = f"img-{img['id']}"
        del img["width"], img["height"]
    for ann in data["annotations"]:
        ann["image_id"] = f"img-{ann['image_id']}"
        for key in ("id", "area", "iscrowd"):
            del ann[key]
    write_json(coco / VAL, data)
    ds = build_dataset("val", config(coco))
    out = capsys.readouterr().out
    n = len(data["annotations"])
    assert "image ids are not all integers (e.g. 'img-1'): numbered 1..6" in out
    assert f"{n} annotation(s) without 'id': given ids 1..{n}" in out
    assert f"{n} annotation(s) without 'area'" in out and f"{n} annotation(s) without 'iscrowd': set to 0" in out
    assert "6 image(s) without width/height in the annotations: read from the image files" in out
    gt = ds.coco.dataset
    assert [img["original_id"] for img in gt["images"]] == [f"img-{k}" for k in range(1, 7)]
    assert all(a["area"] > 0 and a["iscrowd"] == 0 for a in gt["annotations"])
    # the evaluator works on it: ground truth as predictions gives AP 1
    evaluator = CocoEvaluator(ds.coco, ["bbox"])
    for idx in range(len(ds)):
        _, target = ds[idx]
        image_id = int(target["image_id"])
        anns = ds.coco.loadAnns(ds.coco.getAnnIds(image_id))
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        labels = torch.tensor([a["category_id"] for a in anns])
        evaluator.update({image_id: {"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels}})
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.coco_eval["bbox"].stats[1] == pytest.approx(1.0)


def test_unreadable_images_skipped_up_to_the_limit(coco: Path, capsys: pytest.CaptureFixture) -> None:
    data = read_json(coco / TRAIN)
    bad = coco / "train2017" / data["images"][3]["file_name"]
    truncate(bad)
    with pytest.raises(DatasetError, match=r"1 of 12 images cannot be read, more than --max_bad_images 0.001"):
        build_dataset("train", config(coco))
    ds = build_dataset("train", config(coco, max_bad_images=0.1))
    assert "warning: train: skipping unreadable image" in capsys.readouterr().out
    assert len(ds) == 12
    _, target = ds[3]  # replaced by the next readable image, in index order
    assert int(target["image_id"]) == ds.ids[4]


def test_check_images_none_still_names_the_file_at_load_time(coco: Path) -> None:
    data = read_json(coco / TRAIN)
    bad = truncate(coco / "train2017" / data["images"][5]["file_name"])
    ds = build_dataset("train", config(coco, check_images="none"))  # no image opened at start-up
    ds[4]
    with pytest.raises(DatasetError, match=rf"1 unreadable images, more than the 0 .*\n  - {bad}: cannot be decoded"):
        ds[5]  # not a bare OSError: the file is named


def test_empty_validation_set(coco: Path, capsys: pytest.CaptureFixture) -> None:
    data = read_json(coco / VAL)
    write_json(coco / VAL, {**data, "annotations": []})
    build_dataset("val", config(coco))
    assert "has 6 image(s) but no annotation: COCO AP will be -1" in capsys.readouterr().out
    write_json(coco / VAL, {**data, "images": [], "annotations": []})
    with pytest.raises(DatasetError, match="the validation split has no image"):
        build_dataset("val", config(coco))


def test_both_splits_checked_together(coco: Path, synthetic_root: Path) -> None:
    train, val = read_json(coco / TRAIN), read_json(coco / VAL)
    train["annotations"][0]["bbox"] = [1, 2]
    val["annotations"][0]["image_id"] = 12345
    write_json(coco / TRAIN, train)
    write_json(coco / VAL, val)
    with pytest.raises(DatasetError) as err:
        build_datasets(config(coco))
    assert {p.file for p in err.value.problems} == {str(coco / TRAIN), str(coco / VAL)}
    # a category id only the validation split uses, above the training data's num_classes
    val = read_json(synthetic_root / VAL)
    val["categories"].append({"id": 7, "name": "new"})
    val["annotations"][0]["category_id"] = 7
    write_json(coco / VAL, val)
    ds_val = build_dataset("val", config(coco))
    assert ds_val.max_category_id == 7
    with pytest.raises(DatasetError, match=r"instances_val2017.json: has category id 7 in the val split, but num_"):
        check_num_classes(4, "the training data", {"val": ds_val})


def test_custom_paths_and_sparse_ids(tmp_path: Path, synthetic_root: Path) -> None:
    data = read_json(synthetic_root / TRAIN)
    remap = {1: 5, 2: 17, 3: 40}
    for cat in data["categories"]:
        cat["id"] = remap[cat["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = remap[ann["category_id"]]
    ann_file = write_json(tmp_path / "somewhere" / "labels.json", data)
    cfg = DataConfig(train_images=str(synthetic_root / "train2017"), train_annotations=str(ann_file))
    ds = build_dataset("train", cfg)
    assert ds.id2label == {5: "red rectangle", 17: "green ellipse", 40: "blue triangle"}
    assert ds.max_category_id == 40 and ds.ann_file == str(ann_file)
    assert set(ds[0][1]["labels"].tolist()) <= {5, 17, 40}
    with pytest.raises(DatasetError, match="needs --coco_path .* or --val_images and --val_annotations"):
        build_dataset("val", cfg)
    with pytest.raises(DatasetError, match="has category_id 40 >= num_classes=40"):
        build_dataset("train", dataclasses.replace(cfg, num_classes=40))


def test_config_from_flags_is_the_one_boundary(tmp_path: Path) -> None:
    args = get_args_parser().parse_args(
        ["--dataset_file", "voc", "--voc_path", "V", "--voc_years", "2007, 2012", "--val_split", "test",
         "--remove_difficult", "--cache_mode", "--check_images", "full", "--max_bad_images", "0.01",
         "--train_scales", "96", "128", "--max_size", "200"]
    )  # fmt: skip
    cfg = data_config_from_args(args)
    assert cfg.dataset_file == "voc" and cfg.voc_path == "V" and cfg.voc_years == ("2007", "2012")
    assert cfg.val_split == "test" and cfg.train_split is None and cfg.remove_difficult and cfg.cache_mode
    assert cfg.check_images == "full" and cfg.max_bad_images == 0.01
    assert cfg.train_scales == (96, 128) and cfg.max_size == 200 and cfg.val_size == 800
    default = data_config_from_args(get_args_parser().parse_args([]))
    assert default == DataConfig()  # the parser's unset flags take DataConfig's defaults
    with pytest.raises(ValueError, match="max_bad_images"):
        DataConfig(max_bad_images=5)


def test_panoptic_checks_and_error_type(tmp_path: Path) -> None:
    root = tmp_path / "pan"
    generate_synthetic_panoptic(root, num_train=2, num_val=2, image_size=32, seed=0, verbose=False)
    cfg = DataConfig(dataset_file="coco_panoptic", coco_path=str(root), coco_panoptic_path=str(root))
    assert len(build_panoptic("val", cfg)) == 2 and build_panoptic("val", cfg).id2label[4] == "sky"
    ann = read_json(root / "annotations" / "panoptic_val2017.json")
    png = root / "panoptic_val2017" / ann["annotations"][0]["file_name"]
    PIL.Image.open(png).resize((16, 16)).save(png)  # PNG no longer the size of its image
    (root / "val2017" / ann["images"][1]["file_name"]).write_bytes(b"not an image")
    with pytest.raises(DatasetError) as err:
        build_panoptic("val", cfg)
    message = str(err.value)
    assert "has a 16x16 PNG but is 32x32" in message and "cannot be decoded" in message
    with pytest.raises(DatasetError, match="not a valid JSON"):  # the same error type as for coco
        (root / "annotations" / "bad.json").write_text("{")
        CocoPanoptic(root / "val2017", root / "panoptic_val2017", root / "annotations" / "bad.json")


def test_check_cli(coco: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_module.main(["--dataset_file", "coco", str(coco)]) == 0
    out = capsys.readouterr().out
    assert "train: OK: 12 images" in out and "val: OK: 6 images" in out
    data = read_json(coco / VAL)
    for ann in data["annotations"][:3]:
        ann["bbox"] = [0, 0, "wide", 1]
    write_json(coco / VAL, data)
    save_jpeg(coco / "train2017" / read_json(coco / TRAIN)["images"][0]["file_name"], noise_image(8, 8))
    assert check_module.main(["--dataset_file", "coco", str(coco), "--check_images", "full"]) == 1
    out = capsys.readouterr().out
    assert "val: FAILED" in out and out.count("has an invalid bbox") == 3
    assert "train: FAILED" in out and "is 64x64 (width x height) in the annotation file but 8x8" in out
    val = read_json(coco / VAL)  # valid again, but with a category id only the validation split uses
    for ann in val["annotations"]:
        ann["bbox"] = [1, 1, 5, 5]
    val["categories"].append({"id": 9, "name": "nine"})
    val["annotations"][0]["category_id"] = 9
    write_json(coco / VAL, val)
    assert check_module.main(["--dataset_file", "coco", str(coco), "--check_images", "none"]) == 1
    assert (
        "has category id 9 in the val split, but num_classes is 4 (from the training split)" in capsys.readouterr().out
    )
