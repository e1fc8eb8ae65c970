"""COCO loading on the synthetic data set: targets, builder, validation errors, degenerate boxes."""

from __future__ import annotations

import json
import re
import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from datasets import DATASET_BUILDERS, build_dataset, get_coco_api_from_dataset
from datasets.coco import (
    CocoDetection,
    DatasetError,
    build,
    convert_coco_poly_to_mask,
    make_coco_transforms,
)
from datasets.coco_json import validate_coco_file

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TRAIN_ANN = Path("annotations") / "instances_train2017.json"


def test_loads_and_targets_match_json(synthetic_root: Path) -> None:
    ann_file = synthetic_root / TRAIN_ANN
    data = json.loads(ann_file.read_text())
    ds = CocoDetection(synthetic_root / "train2017", ann_file, transforms=None, return_masks=True)
    assert len(ds) == len(data["images"]) == 12
    assert ds.num_degenerate_boxes == 0
    for idx in range(len(ds)):
        image, target = ds[idx]
        image_id = ds.ids[idx]
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        assert target["image_id"].tolist() == [image_id]
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        expected = torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4)
        expected[:, 2:] += expected[:, :2]
        torch.testing.assert_close(target["boxes"], expected)
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["masks"].shape == (len(anns), 64, 64)
        assert target["orig_size"].tolist() == target["size"].tolist() == [64, 64]
        assert target["iscrowd"].tolist() == [0] * len(anns)
        assert image.size == (64, 64)


def test_build_with_demo_resolution(synthetic_root: Path) -> None:
    args = Namespace(
        dataset_file="coco",
        coco_path=str(synthetic_root),
        masks=False,
        train_scales=[48, 56, 64],
        max_size=80,
        val_size=64,
    )
    train = build_dataset("train", args)
    val = build_dataset("val", args)
    assert len(train) == 12 and len(val) == 6
    torch.manual_seed(0)
    for idx in range(len(train)):
        image, target = train[idx]
        assert image.shape[0] == 3 and max(image.shape[-2:]) <= 80
        assert "masks" not in target
        assert target["boxes"].numel() == 0 or (target["boxes"].min() >= 0 and target["boxes"].max() <= 1 + 1e-5)
    image, target = val[0]
    assert image.shape[-2:] == (64, 64)
    # official defaults when the optional attributes are missing
    default_val = build("val", Namespace(coco_path=str(synthetic_root), masks=True))
    image, target = default_val[0]
    assert image.shape[-2:] == (800, 800) and target["masks"].shape[-2:] == (800, 800)


def test_builder_registry_and_coco_api(synthetic_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset_file"):
        build_dataset("train", Namespace(dataset_file="pascal"))
    assert set(DATASET_BUILDERS) >= {"coco", "coco_panoptic", "voc", "yolo"}
    ds = build_dataset("val", Namespace(dataset_file="coco", coco_path=str(synthetic_root), masks=False))
    subset = torch.utils.data.Subset(torch.utils.data.Subset(ds, [0, 1, 2]), [0])
    assert get_coco_api_from_dataset(subset) is ds.coco


def test_build_errors(tmp_path: Path, synthetic_root: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        build("train", Namespace(coco_path=str(tmp_path / "nowhere"), masks=False))
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        build("train", Namespace(coco_path=str(tmp_path), masks=False))
    with pytest.raises(ValueError, match="image_set"):
        build("test", Namespace(coco_path=str(synthetic_root), masks=False))
    with pytest.raises(DatasetError, match="category_id 3 >= num_classes=3"):
        build("train", Namespace(coco_path=str(synthetic_root), masks=False, num_classes=3))


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_validation_errors_name_the_file(tmp_path: Path, synthetic_root: Path) -> None:
    good = json.loads((synthetic_root / TRAIN_ANN).read_text())
    missing = tmp_path / "missing.json"
    with pytest.raises(DatasetError, match="not found") as err:
        validate_coco_file(missing)
    assert str(missing) in str(err.value)

    not_json = tmp_path / "not_json.json"
    not_json.write_text("{this is not json")
    with pytest.raises(DatasetError, match="not a valid JSON") as err:
        validate_coco_file(not_json)
    assert str(not_json) in str(err.value)

    cases = {
        "list.json": ([1, 2, 3], "not a COCO annotation file"),
        "no_images.json": ({k: v for k, v in good.items() if k != "images"}, r"missing key\(s\) \['images'\]"),
        "no_bbox.json": (
            {**good, "annotations": [{k: v for k, v in good["annotations"][0].items() if k != "bbox"}]},
            r"annotation id 1 lacks \['bbox'\]",
        ),
        "bad_image.json": (
            {**good, "annotations": [{**good["annotations"][0], "id": 77, "image_id": 999}]},
            "annotation id 77 refers to image_id 999",
        ),
        "bad_bbox.json": (
            {**good, "annotations": [{**good["annotations"][0], "bbox": [1, 2, 3]}]},
            "annotation id 1 has an invalid bbox",
        ),
        "unknown_cat.json": (
            {**good, "annotations": [{**good["annotations"][0], "category_id": 9}]},
            "category_id 9, which is not listed",
        ),
    }
    for name, (data, pattern) in cases.items():
        path = write_json(tmp_path / name, data)
        with pytest.raises(DatasetError, match=pattern) as err:
            validate_coco_file(path)
        assert str(path) in str(err.value), name

    path = write_json(tmp_path / "ok.json", good)
    with pytest.raises(DatasetError) as err:
        validate_coco_file(path, num_classes=2)
    message = str(err.value)
    assert str(path) in message and "annotation id" in message
    assert re.search(r"category_id [23] >= num_classes=2", message), message
    stats = validate_coco_file(path, num_classes=4)
    assert stats["num_images"] == 12 and stats["num_annotations"] == len(good["annotations"])
    assert stats["max_category_id"] == 3 and stats["num_degenerate_boxes"] == 0
    assert stats["num_images_without_annotations"] == 0


def make_modified_set(tmp_path: Path, synthetic_root: Path) -> tuple[Path, Path, dict]:
    """Copy of the synthetic train split with 3 degenerate boxes, one crowd RLE and one empty image."""
    img_dir = tmp_path / "train2017"
    shutil.copytree(synthetic_root / "train2017", img_dir)
    data = json.loads((synthetic_root / TRAIN_ANN).read_text())
    first = data["images"][0]["id"]
    next_id = max(a["id"] for a in data["annotations"]) + 1
    extra = [
        {"bbox": [10, 10, 0, 5]},  # zero width
        {"bbox": [10, 10, 5, -3]},  # negative height
        {"bbox": [70, 10, 5, 5]},  # outside the 64 px image: zero width after clamping
    ]
    for k, e in enumerate(extra):
        data["annotations"].append(
            {"id": next_id + k, "image_id": first, "category_id": 1, "iscrowd": 0, "area": 1.0, "segmentation": [], **e}
        )
    crowd_rle = {"size": [64, 64], "counts": [64 * 10, 64 * 5, 64 * 49]}  # columns 10..14 (column-major)
    data["annotations"].append(
        {
            "id": next_id + 3,
            "image_id": first,
            "category_id": 2,
            "iscrowd": 1,
            "area": 320.0,
            "bbox": [10, 0, 5, 64],
            "segmentation": crowd_rle,
        }
    )
    data["images"].append({"id": 5000, "file_name": data["images"][0]["file_name"], "width": 64, "height": 64})
    ann_file = write_json(tmp_path / "instances.json", data)
    return img_dir, ann_file, data


def test_degenerate_boxes_dropped_and_counted(tmp_path: Path, synthetic_root: Path) -> None:
    img_dir, ann_file, data = make_modified_set(tmp_path, synthetic_root)
    stats = validate_coco_file(ann_file, num_classes=4)
    assert stats["num_degenerate_boxes"] == 3 and stats["num_crowd"] == 1
    assert stats["num_images_without_annotations"] == 1

    ds = CocoDetection(img_dir, ann_file, transforms=None, return_masks=True)
    assert ds.num_degenerate_boxes == 3 == ds.count_degenerate_annotations()
    assert len(ds.degenerate_ann_ids) == 3
    assert ds.num_dropped_boxes == 0
    first = ds.ids.index(data["images"][0]["id"])
    _, target = ds[first]
    original = json.loads((synthetic_root / TRAIN_ANN).read_text())
    valid = [a for a in original["annotations"] if a["image_id"] == data["images"][0]["id"]]
    # neither the 3 degenerate boxes nor the crowd annotation are targets
    assert len(target["boxes"]) == len(valid) == len(target["masks"]) == len(target["area"])
    assert target["labels"].tolist() == [a["category_id"] for a in valid]
    assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    assert ds.num_dropped_boxes == 3


def test_image_without_annotations(tmp_path: Path, synthetic_root: Path) -> None:
    img_dir, ann_file, _ = make_modified_set(tmp_path, synthetic_root)
    ds = CocoDetection(img_dir, ann_file, transforms=None, return_masks=True)
    idx = ds.ids.index(5000)
    _, target = ds[idx]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 64, 64)
    assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)
    torch.manual_seed(0)
    for image_set in ("train", "val"):
        ds._transforms = make_coco_transforms(image_set, max_size=80, scales=[48, 64], val_size=64)
        image, target = ds[idx]
        assert image.ndim == 3 and target["boxes"].shape == (0, 4) and target["masks"].shape[0] == 0


def test_crowd_rle_to_mask() -> None:
    rle = {"size": [64, 64], "counts": [64 * 10, 64 * 5, 64 * 49]}
    masks = convert_coco_poly_to_mask([rle, [[0, 0, 8, 0, 8, 8, 0, 8]], []], 64, 64)
    assert masks.shape == (3, 64, 64) and masks.dtype == torch.uint8
    assert masks[0].sum() == 320 and masks[0][:, 10:15].all()
    assert 50 <= int(masks[1].sum()) <= 81
    assert masks[2].sum() == 0


def test_missing_image_file(tmp_path: Path, synthetic_root: Path) -> None:
    data = json.loads((synthetic_root / TRAIN_ANN).read_text())
    data["images"][0]["file_name"] = "nope.png"
    ann_file = write_json(tmp_path / "ann.json", data)
    ds = CocoDetection(synthetic_root / "train2017", ann_file, transforms=None, return_masks=False)
    with pytest.raises(DatasetError, match="nope.png"):
        ds[0]
