"""YOLO-format reading (``datasets.yolo``): the Ultralytics / Roboflow layouts, boxes converted to
pixels, class names kept, and bad label lines stopped with their file and line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from data_faults import make_yolo

from datasets import DataConfig, DatasetError, build_dataset

SMALL = {"train_scales": (64,), "val_size": 64, "max_size": 64}


def config(path: Path, **kw) -> DataConfig:
    return DataConfig(dataset_file="yolo", yolo_path=str(path), **SMALL, **kw)


def test_ultralytics_layout(tmp_path: Path) -> None:
    root = make_yolo(
        tmp_path / "set",
        ["cat", "dog"],
        {
            "train": {"a": ["0 0.5 0.5 0.5 0.5", "1 0.25 0.25 0.25 0.5"], "b": None, "c": []},
            "val": {"d": ["1 0.1 0.2 0.3 0.4 0.3 0.2"]},  # a polygon: read as its box
        },
    )
    train = build_dataset("train", config(root))
    assert len(train) == 3 and train.id2label == {0: "cat", 1: "dog"} and train.max_category_id == 1
    gt = train.coco.dataset
    assert [img["file_name"] for img in gt["images"]] == ["a.png", "b.png", "c.png"]
    assert [a["bbox"] for a in gt["annotations"]] == [[16.0, 12.0, 32.0, 24.0], [8.0, 0.0, 16.0, 24.0]]
    assert all(img["width"] == 64 and img["height"] == 48 for img in gt["images"])
    _, target = train[1]  # no label file: no objects
    assert target["boxes"].shape == (0, 4)
    val = build_dataset("val", config(root / "data.yaml", val_split="val"))
    torch.testing.assert_close(val.coco.dataset["annotations"][0]["bbox"], [0.1 * 64, 0.2 * 48, 0.2 * 64, 0.2 * 48])


def test_roboflow_layout_and_names_mapping(tmp_path: Path) -> None:
    root = tmp_path / "export"
    make_yolo(root, ["x"], {"train": {"a": ["0 0.5 0.5 0.2 0.2"]}})
    (root / "train").mkdir()
    (root / "images" / "train").rename(root / "train" / "images")
    (root / "labels" / "train").rename(root / "train" / "labels")
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../train/images\nnc: 2\nnames:\n  0: person\n  1: car\n"
    )
    ds = build_dataset("train", config(root))
    assert ds.id2label == {0: "person", 1: "car"} and len(ds.coco.dataset["annotations"]) == 1
    (root / "data.yaml").write_text("train: ../train/images\nnc: 3\nnames: [person, car]\n")
    with pytest.raises(DatasetError, match="nc is 3 but 'names' has 2 entries"):
        build_dataset("train", config(root))
    (root / "data.yaml").write_text("train: ../train/images\nnames: [person, car]\n")
    with pytest.raises(DatasetError, match=r"data.yaml: no 'val' entry"):
        build_dataset("val", config(root))
    (root / "data.yaml").write_text("train: [unclosed\n")
    with pytest.raises(DatasetError, match=r"data.yaml:2: not valid YAML"):
        build_dataset("train", config(root))


def test_bad_label_lines_named_with_file_and_line(tmp_path: Path) -> None:
    lines = ["0 0.5 0.5 0.2 0.2", "1 0.5 0.5 0.2", "0 0.5 1.5 0.2 0.2", "", "2 0.5 0.5 0.2 0.2", "0 a 0.5 0.2 0.2"]
    root = make_yolo(tmp_path / "set", ["cat", "dog"], {"train": {"a": lines, "b": ["0 0.5 0.5 0 0.2"]}})
    with pytest.raises(DatasetError) as err:
        build_dataset("train", config(root))
    label = root / "labels" / "train" / "a.txt"
    message = str(err.value)
    assert len(err.value.problems) == 4, message
    assert f"{label}:2: has 4 fields: expected 'class cx cy w h' (5)" in message
    assert f"{label}:3: has a coordinate outside [0, 1]" in message
    assert f"{label}:5: has class index 2, which is not in the 2 names of data.yaml" in message
    assert f"{label}:6: has a field that is not a number" in message
    (label).write_text("0 0.5 0.5 0.2 0.2\n")
    ds = build_dataset("train", config(root))  # b's zero-width box: dropped and counted
    assert ds.num_degenerate_boxes == 1


def test_pyyaml_is_an_optional_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_yolo(tmp_path / "set", ["cat"], {"train": {"a": []}})
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(DatasetError, match="pip install pyyaml"):
        build_dataset("train", config(root))
