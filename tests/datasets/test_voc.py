"""PASCAL VOC reading (``datasets.voc``): the real 10-image VOCdevkit sample (when present) and
small generated folders with every kind of bad input, each named with its file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from data_faults import make_voc
from golden import DATA_DIR

from datasets import DataConfig, DatasetError, build_dataset
from datasets.voc import VOC_CLASSES, parse_xml
from datasets.voc_eval import voc_evaluator_for

VOCDEVKIT = DATA_DIR / "voc_mmfewshot" / "VOCdevkit"
SMALL = {"train_scales": (64,), "val_size": 64, "max_size": 64}


@pytest.fixture(scope="module")
def vocdevkit() -> Path:
    if not (VOCDEVKIT / "VOC2007" / "Annotations").is_dir():
        pytest.skip(f"VOC sample not found under {VOCDEVKIT}")
    return VOCDEVKIT


def xml_objects(path: Path) -> list[tuple[str, list[float], int]]:
    root = parse_xml(path.read_bytes())
    out = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        out.append(
            (
                obj.findtext("name"),
                [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
                int(obj.findtext("difficult")),
            )
        )
    return out  # fmt: skip


def test_real_sample(vocdevkit: Path) -> None:
    cfg = DataConfig(dataset_file="voc", voc_path=str(vocdevkit), val_split="test", **SMALL)
    train, val = build_dataset("train", cfg), build_dataset("val", cfg)
    assert len(train) == len(val) == 10 and train.id2label == dict(enumerate(VOC_CLASSES))
    assert train.max_category_id <= 19 and val.voc_use_07_metric is False
    gt = val.coco.dataset
    n_difficult = 0
    for img in gt["images"]:
        year, name = img["voc_id"].split("/")
        assert img["file_name"] == f"VOC{year}/JPEGImages/{name}.jpg"
        expected = xml_objects(vocdevkit / f"VOC{year}" / "Annotations" / f"{name}.xml")
        anns = val.coco.loadAnns(val.coco.getAnnIds(img["id"]))
        assert [(VOC_CLASSES[a["category_id"]], a["difficult"]) for a in anns] == [(c, d) for c, _, d in expected]
        for a, (_, (x1, y1, x2, y2), _) in zip(anns, expected):  # one-based inclusive -> continuous
            assert a["bbox"] == [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]
        n_difficult += sum(d for _, _, d in expected)
    assert n_difficult > 0
    image, target = val[0]
    assert image.shape[0] == 3 and len(target["labels"]) == len(val.coco.getAnnIds(val.ids[0]))

    dropped = build_dataset("train", DataConfig(**{**cfg.__dict__, "remove_difficult": True}))
    assert len(dropped.coco.dataset["annotations"]) == len(gt["annotations"]) - n_difficult
    assert not any(a["difficult"] for a in dropped.coco.dataset["annotations"])
    only_2007 = build_dataset("val", DataConfig(**{**cfg.__dict__, "voc_years": ("2007",)}))
    assert len(only_2007) == 5 and only_2007.voc_use_07_metric is True  # VOC2007 test: 11-point AP

    evaluator = voc_evaluator_for(val)  # the ground truth as predictions: AP 1 for every class present
    for image_id in val.ids:
        anns = val.coco.loadAnns(val.coco.getAnnIds(image_id))
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        labels = torch.tensor([a["category_id"] for a in anns])
        evaluator.update({image_id: {"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels}})
    evaluator.accumulate()
    assert evaluator.stats_dict()["voc_mAP50"] == 1.0


def test_bad_folders_and_files_are_all_reported(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOCdevkit", "2007", "trainval", {"a": [("dog", (5, 5, 30, 30), 0)], "b": [], "c": []})
    (root / "VOC2007" / "Annotations" / "b.xml").write_text(
        "<annotation>\n  <object>\n    <name>dog</name>\n</annotation>\n"
    )
    make_voc(root, "2012", "trainval", {"d": [("unicorn", (1, 1, 9, 9), 0), ("cat", (9, 9, 4, 30), 0)]})
    (root / "VOC2007" / "Annotations" / "c.xml").unlink()
    (root / "VOC2012" / "ImageSets" / "Main" / "val.txt").write_text("d\n")
    make_voc(root, "2010", "trainval", {"e": []})
    (root / "VOC2010" / "Annotations" / "e.xml").unlink()
    (root / "VOC2010" / "Annotations").rmdir()
    cfg = DataConfig(dataset_file="voc", voc_path=str(root), **SMALL)
    with pytest.raises(DatasetError) as err:
        build_dataset("train", cfg)
    message = str(err.value)
    assert len(err.value.problems) == 4, message
    assert re.search(r"VOC2007/Annotations/b\.xml:4: is not well-formed XML \(mismatched tag", message)
    assert "VOC2007/Annotations/c.xml: is missing (the image is listed in the split)" in message
    assert "VOC2012/Annotations/d.xml:9: object 'unicorn' is not one of the 20 VOC classes" in message
    assert "VOC2010: is not a VOC year folder: it has no Annotations/" in message
    with pytest.raises(
        DatasetError, match=r"VOC2007/ImageSets/Main/val.txt: is missing \(split lists there: \['trainval'\]\)"
    ):
        build_dataset("val", cfg)
    with pytest.raises(DatasetError, match="--voc_path .* does not exist"):
        build_dataset("train", DataConfig(dataset_file="voc", voc_path=str(tmp_path / "nowhere")))


def test_degenerate_boxes_dropped_and_counted(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOCdevkit", "2012", "val", {"a": [("cat", (10, 10, 40, 30), 0), ("cat", (40, 10, 10, 30), 1)], "b": []})  # fmt: skip
    ds = build_dataset("val", DataConfig(dataset_file="voc", voc_path=str(root), val_split="val", **SMALL))
    assert ds.num_degenerate_boxes == 1 and len(ds) == 2
    _, target = ds[0]
    assert target["labels"].tolist() == [VOC_CLASSES.index("cat")] and ds.num_dropped_boxes == 1
