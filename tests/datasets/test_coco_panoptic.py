"""``datasets.coco_panoptic``: targets read from real panoptic PNGs (the panopticapi sample and the
transformers fixture) and from the synthetic panoptic set, the official paths of ``build``, the
transforms applied with masks, the detection-format ground truth, and clear errors on bad input."""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.coco_panoptic import CocoPanoptic, build, rgb2id
from datasets.synthetic_panoptic import generate_synthetic_panoptic, id2rgb

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SAMPLE = DATA / "coco_panoptic_sample"
HF = DATA / "hf_coco_fixture"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_panoptic")
    generate_synthetic_panoptic(root, num_train=4, num_val=3, image_size=48, seed=0, verbose=False)
    return root


def _check_target(target: dict, id_map: np.ndarray, segments: list[dict]) -> None:
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (len(segments), *id_map.shape)
    assert target["labels"].tolist() == [s["category_id"] for s in segments]
    assert target["iscrowd"].tolist() == [s.get("iscrowd", 0) for s in segments]
    for mask, seg, box in zip(masks, segments, target["boxes"]):
        assert torch.equal(mask.bool(), torch.from_numpy(id_map == seg["id"]))
        ys, xs = torch.nonzero(mask, as_tuple=True)
        # official convention: xyxy spanning the max pixel index
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item()]
        if "bbox" in seg:  # COCO's bbox is xywh with width = max - min + 1
            x, y, w, h = seg["bbox"]
            assert box.tolist() == [x, y, x + w - 1, y + h - 1]
    # segments do not overlap
    assert int(masks.sum(0).max()) <= 1


def test_real_sample(tmp_path: Path) -> None:
    if not (SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip("panoptic sample not found")
    ds = CocoPanoptic(SAMPLE / "input_images", SAMPLE / "panoptic_examples", SAMPLE / "panoptic_examples.json")
    assert len(ds) == 2
    ann = json.loads((SAMPLE / "panoptic_examples.json").read_text())["annotations"]
    by_id = {a["image_id"]: a for a in ann}
    for i in range(len(ds)):
        img, target = ds[i]
        image_id = int(target["image_id"])
        id_map = rgb2id(np.asarray(Image.open(SAMPLE / "panoptic_examples" / by_id[image_id]["file_name"])))
        assert img.size == (id_map.shape[1], id_map.shape[0])
        assert target["orig_size"].tolist() == list(id_map.shape)
        _check_target(target, id_map, by_id[image_id]["segments_info"])
        assert target["area"].tolist() == [float(s["area"]) for s in by_id[image_id]["segments_info"]]
        assert target["iscrowd"].sum() >= 1  # crowd segments are kept in the target, as officially
    thing = ds.is_thing_map()
    assert len(thing) == 133 and thing[1] and not thing[184]


def test_real_sample_detection_ground_truth() -> None:
    if not (SAMPLE / "panoptic_coco_detection_format.json").is_file():
        pytest.skip("panoptic sample not found")
    derived = CocoPanoptic(SAMPLE / "input_images", SAMPLE / "panoptic_examples", SAMPLE / "panoptic_examples.json")
    given = CocoPanoptic(
        SAMPLE / "input_images",
        SAMPLE / "panoptic_examples",
        SAMPLE / "panoptic_examples.json",
        detection_file=SAMPLE / "panoptic_coco_detection_format.json",
    )
    a = sorted(
        (x["image_id"], x["category_id"], tuple(x["bbox"]), x["area"]) for x in derived.coco.dataset["annotations"]
    )
    b = sorted(
        (x["image_id"], x["category_id"], tuple(x["bbox"]), x["area"]) for x in given.coco.dataset["annotations"]
    )
    assert a == b


def test_hf_fixture(tmp_path: Path) -> None:
    if not (HF / "coco_panoptic_annotations.txt").is_file() or not (SAMPLE / "panoptic_coco_categories.json").is_file():
        pytest.skip("hf_coco_fixture or panoptic categories not found")
    segments = json.loads((HF / "coco_panoptic_annotations.txt").read_text())
    data = {
        "images": [{"id": 39769, "file_name": "000000039769.png", "width": 640, "height": 480}],
        "annotations": [{"image_id": 39769, "file_name": "000000039769.png", "segments_info": segments}],
        "categories": json.loads((SAMPLE / "panoptic_coco_categories.json").read_text()),
    }
    ann_file = tmp_path / "panoptic.json"
    ann_file.write_text(json.dumps(data))
    ds = CocoPanoptic(HF, HF / "coco_panoptic", ann_file)
    img, target = ds[0]
    id_map = rgb2id(np.asarray(Image.open(HF / "coco_panoptic" / "000000039769.png")))
    _check_target(target, id_map, segments)
    assert target["labels"].tolist() == [17, 17, 63, 75, 75, 93]


def test_synthetic_build_with_transforms(synthetic: Path) -> None:
    args = argparse.Namespace(
        coco_path=str(synthetic), coco_panoptic_path=str(synthetic), masks=True, train_scales=[32], val_size=32,
        max_size=32,
    )  # fmt: skip
    for split, n in (("train", 4), ("val", 3)):
        ds = build(split, args)
        assert len(ds) == n
        assert ds.ann_file == synthetic / "annotations" / f"panoptic_{split}2017.json"
        assert ds.ann_folder == synthetic / f"panoptic_{split}2017"
        # seeded: the random crop and resize of seed 249 leave a box spanning the whole 30-px width at
        # 1 + 1.2e-7 (float rounding of the resize, as in the official transforms), hence the tolerance
        random.seed(249)
        torch.manual_seed(249)
        img, target = ds[0]
        assert target["masks"].shape[-2:] == img.shape[-2:] and max(img.shape[-2:]) <= 32  # train may crop
        assert target["size"].tolist() == list(img.shape[-2:]) and target["orig_size"].tolist() == [48, 48]
        assert target["boxes"].shape == (len(target["labels"]), 4)
        assert (target["boxes"] >= 0).all() and (target["boxes"] <= 1 + 1e-6).all()
    assert ds.is_thing_map() == {1: True, 2: True, 3: True, 4: False, 5: False, 6: False}
    # the detection ground truth: the detection file's things plus every panoptic category
    assert sorted(ds.coco.getCatIds()) == [1, 2, 3, 4, 5, 6]
    assert {a["category_id"] for a in ds.coco.dataset["annotations"]} <= {1, 2, 3}
    args.masks = False
    assert "masks" not in build("val", args)[0][1]


def test_synthetic_is_deterministic(tmp_path: Path, synthetic: Path) -> None:
    other = tmp_path / "again"
    generate_synthetic_panoptic(other, num_train=4, num_val=3, image_size=48, seed=0, verbose=False)
    for name in ("annotations/panoptic_train2017.json", "annotations/instances_val2017.json"):
        assert (other / name).read_text() == (synthetic / name).read_text()
    a = json.loads((synthetic / "annotations/panoptic_train2017.json").read_text())["annotations"]
    b = json.loads((synthetic / "annotations/panoptic_val2017.json").read_text())["annotations"]
    assert a[0]["segments_info"] != b[0]["segments_info"]  # different seeds per split


def _copy(synthetic: Path, tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "data"
    shutil.copytree(synthetic, root)
    ann_file = root / "annotations" / "panoptic_val2017.json"
    return root, json.loads(ann_file.read_text())


def _dataset(root: Path, data: dict | None = None) -> CocoPanoptic:
    ann_file = root / "annotations" / "panoptic_val2017.json"
    if data is not None:
        ann_file.write_text(json.dumps(data))
    return CocoPanoptic(root / "val2017", root / "panoptic_val2017", ann_file)


def test_empty_and_stuff_only_images(synthetic: Path, tmp_path: Path) -> None:
    root, data = _copy(synthetic, tmp_path)
    ann = data["annotations"]
    # image 1: all void, no segments
    Image.fromarray(np.zeros((48, 48, 3), dtype=np.uint8)).save(root / "panoptic_val2017" / ann[0]["file_name"])
    ann[0]["segments_info"] = []
    # image 2: one stuff segment
    Image.fromarray(id2rgb(np.full((48, 48), 4001))).save(root / "panoptic_val2017" / ann[1]["file_name"])
    ann[1]["segments_info"] = [{"id": 4001, "category_id": 4, "iscrowd": 0, "area": 48 * 48}]
    ds = _dataset(root, data)
    _, empty = ds[0]
    assert empty["masks"].shape == (0, 48, 48) and empty["boxes"].shape == (0, 4) and empty["labels"].numel() == 0
    _, stuff = ds[1]
    assert stuff["labels"].tolist() == [4] and stuff["boxes"].tolist() == [[0, 0, 47, 47]]
    derived = ds.detection_dict()
    assert [a["category_id"] for a in derived["annotations"] if a["image_id"] == 2] == [4]


def test_png_id_missing_from_segments_info(synthetic: Path, tmp_path: Path) -> None:
    root, data = _copy(synthetic, tmp_path)
    removed = data["annotations"][0]["segments_info"].pop(0)
    ds = _dataset(root, data)
    with pytest.raises(ValueError, match=rf"000000000001\.png.*segment id {removed['id']}"):
        ds[0]


def test_segment_missing_from_png(synthetic: Path, tmp_path: Path) -> None:
    root, data = _copy(synthetic, tmp_path)
    data["annotations"][0]["segments_info"].append({"id": 77777, "category_id": 1, "iscrowd": 0, "area": 1})
    ds = _dataset(root, data)
    with pytest.raises(ValueError, match=r"000000000001\.png.*segment id 77777"):
        ds[0]


def test_missing_png(synthetic: Path, tmp_path: Path) -> None:
    root, _ = _copy(synthetic, tmp_path)
    (root / "panoptic_val2017" / "000000000002.png").unlink()
    ds = _dataset(root)
    with pytest.raises(ValueError, match=r"000000000002\.png: is not found \(the panoptic PNG of image 2\)"):
        ds[1]


def test_category_without_isthing(synthetic: Path, tmp_path: Path) -> None:
    root, data = _copy(synthetic, tmp_path)
    del data["categories"][4]["isthing"]
    with pytest.raises(ValueError, match=r"panoptic_val2017\.json: category 5 .* no 'isthing'"):
        _dataset(root, data)


def test_unknown_category(synthetic: Path, tmp_path: Path) -> None:
    root, data = _copy(synthetic, tmp_path)
    seg = data["annotations"][2]["segments_info"][0]
    seg["category_id"] = 99
    with pytest.raises(ValueError, match=rf"segment id {seg['id']} has category_id 99"):
        _dataset(root, data)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="coco_panoptic_path"):
        build("val", argparse.Namespace(coco_path=str(tmp_path), coco_panoptic_path=None))
    with pytest.raises(ValueError, match="panoptic annotation file not found"):
        build("val", argparse.Namespace(coco_path=str(tmp_path), coco_panoptic_path=str(tmp_path)))
