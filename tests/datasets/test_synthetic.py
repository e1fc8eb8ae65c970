"""The synthetic shapes data set: deterministic, COCO-valid, distinct splits, idempotent generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from pycocotools import mask as coco_mask

from datasets.coco_json import validate_coco_file
from datasets.synthetic import CATEGORIES, generate_synthetic_coco, main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ANN = {"train": "annotations/instances_train2017.json", "val": "annotations/instances_val2017.json"}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files(tmp_path: Path, synthetic_root: Path) -> None:
    again = tmp_path / "again"
    generate_synthetic_coco(again, num_train=12, num_val=6, image_size=64, seed=0, verbose=False)
    assert tree_bytes(again) == tree_bytes(synthetic_root)
    other = tmp_path / "other"
    generate_synthetic_coco(other, num_train=12, num_val=6, image_size=64, seed=5, verbose=False)
    assert (other / ANN["train"]).read_bytes() != (synthetic_root / ANN["train"]).read_bytes()


def test_val_differs_from_train(synthetic_root: Path) -> None:
    train = json.loads((synthetic_root / ANN["train"]).read_text())
    val = json.loads((synthetic_root / ANN["val"]).read_text())
    assert len(train["images"]) == 12 and len(val["images"]) == 6
    name = train["images"][0]["file_name"]
    assert name == val["images"][0]["file_name"]
    a = np.asarray(PIL.Image.open(synthetic_root / "train2017" / name))
    b = np.asarray(PIL.Image.open(synthetic_root / "val2017" / name))
    assert not np.array_equal(a, b)
    assert train["annotations"][: len(val["annotations"])] != val["annotations"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_annotations_are_valid(synthetic_root: Path, split: str) -> None:
    stats = validate_coco_file(synthetic_root / ANN[split], num_classes=len(CATEGORIES) + 1)
    assert stats["num_degenerate_boxes"] == 0 and stats["num_images_without_annotations"] == 0
    data = json.loads((synthetic_root / ANN[split]).read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]
    assert all(c["name"] for c in data["categories"])
    per_image: dict[int, int] = {}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
        assert min(w, h) >= 64 / 6 - 2 and max(w, h) <= 64 / 2 + 1  # sides in [S/6, S/2], up to rasterization
        assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h
        polygon = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert len(polygon) >= 3
        # the drawn pixels (hence the tight box) lie inside the polygon, which lies inside the image
        assert np.floor(polygon[:, 0].min()) <= x and x + w <= np.ceil(polygon[:, 0].max())
        assert np.floor(polygon[:, 1].min()) <= y and y + h <= np.ceil(polygon[:, 1].max())
        assert polygon.min() >= 0 and polygon.max() <= 64
    assert all(1 <= n <= 4 for n in per_image.values())
    assert len(per_image) == len(data["images"])
    for image in data["images"]:
        with PIL.Image.open(synthetic_root / f"{split}2017" / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"]) == (64, 64) and im.mode == "RGB"


def test_at_least_three_classes_and_object_colours(tmp_path: Path) -> None:
    root = tmp_path / "many"
    generate_synthetic_coco(root, num_train=30, num_val=2, image_size=48, seed=3, verbose=False)
    data = json.loads((root / ANN["train"]).read_text())
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3}
    counts = dict.fromkeys(range(1, 5), 0)
    for image in data["images"]:
        counts[sum(a["image_id"] == image["id"] for a in data["annotations"])] += 1
    assert sum(counts.values()) == 30 and counts[1] > 0 and counts[2] + counts[3] + counts[4] > 0
    # the last object of an image is painted on top: its pixels have the category's dominant channel
    for image in data["images"]:
        ann = [a for a in data["annotations"] if a["image_id"] == image["id"]][-1]
        pixels = np.asarray(PIL.Image.open(root / "train2017" / image["file_name"])).astype(float)
        mask = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(ann["segmentation"], 48, 48))).astype(bool)
        inside, outside = pixels[mask].mean(0), pixels[~mask].mean(0)
        assert int(np.argmax(inside)) == ann["category_id"] - 1
        assert inside.max() > outside.max() + 60  # bright object on a dark background


def test_idempotent_and_safe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "demo"
    meta = generate_synthetic_coco(root, num_train=3, num_val=2, image_size=32, seed=1)
    assert not meta["skipped"] and json.loads((root / "meta.json").read_text())["num_train"] == 3
    stamp = (root / ANN["train"]).stat().st_mtime_ns
    main(["--out", str(root), "--num_train", "3", "--num_val", "2", "--size", "32", "--seed", "1"])
    assert "not regenerating" in capsys.readouterr().out
    assert (root / ANN["train"]).stat().st_mtime_ns == stamp
    # other parameters: regenerated, old images removed
    meta = generate_synthetic_coco(root, num_train=2, num_val=1, image_size=32, seed=1, verbose=False)
    assert not meta["skipped"] and len(list((root / "train2017").glob("*.png"))) == 2
    # never writes into a foreign non-empty folder
    foreign = tmp_path / "coco"
    foreign.mkdir()
    (foreign / "something.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_synthetic_coco(foreign, num_train=1, num_val=1, image_size=32)
    with pytest.raises(ValueError, match="val_seed"):
        generate_synthetic_coco(tmp_path / "x", num_train=1, num_val=1, seed=4, val_seed=4)


def test_shapes5_task_has_five_classes_and_leaves_the_default_alone(tmp_path):
    meta = generate_synthetic_coco(
        tmp_path / "s5", num_train=30, num_val=2, image_size=48, verbose=False, task="shapes5"
    )
    data = json.loads((tmp_path / "s5" / "annotations" / "instances_train2017.json").read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5] and meta["task"] == "shapes5"
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3, 4, 5}
    assert data["categories"][:3] == CATEGORIES  # the first three are the demo's
    assert "task" not in generate_synthetic_coco(tmp_path / "s3", num_train=2, num_val=1, image_size=48, verbose=False)
    with pytest.raises(ValueError, match="unknown synthetic task"):
        generate_synthetic_coco(tmp_path / "bad", num_train=1, num_val=1, image_size=48, verbose=False, task="x")
