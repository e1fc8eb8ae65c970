"""``datasets.image_processor.DetrImageProcessor``: the numbers transformers publishes for COCO
image 39769, exact equality with the installed transformers on detection and panoptic
annotations, single and batched, PIL / numpy / tensor inputs; clear errors for bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import DATA_DIR
from PIL import Image

from datasets.image_processor import BatchFeature, DeformableDetrImageProcessor, DetrImageProcessor

FIXTURE = DATA_DIR / "hf_coco_fixture"


@pytest.fixture(scope="module")
def coco() -> dict:
    """Image 39769, its detection and panoptic annotations; a second 800x800 copy of it with its
    boxes and panoptic PNG scaled to match (transformers' batched tests use such a pair)."""
    if not (FIXTURE / "coco_annotations.txt").is_file():
        pytest.skip(f"{FIXTURE} not present")
    image = Image.open(FIXTURE / "000000039769.png").convert("RGB")
    det = {"image_id": 39769, "annotations": json.loads((FIXTURE / "coco_annotations.txt").read_text())}
    segments = json.loads((FIXTURE / "coco_panoptic_annotations.txt").read_text())
    pano = {"file_name": "000000039769.png", "image_id": 39769, "segments_info": segments}
    det_big = copy.deepcopy(det)
    for a in det_big["annotations"]:
        x, y, w, h = a["bbox"]
        a["bbox"] = [x * 800 / 640, y * 800 / 480, w * 800 / 640, h * 800 / 480]
    return {"image": image, "det": det, "pano": pano, "image_big": image.resize((800, 800)), "det_big": det_big,
            "pano_big": {**pano, "file_name": "big.png"}}  # fmt: skip


@pytest.fixture(scope="module")
def masks_path(coco: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("panoptic_pngs")
    png = Image.open(FIXTURE / "coco_panoptic" / "000000039769.png")
    png.save(folder / "000000039769.png")
    png.resize((800, 800), Image.NEAREST).save(folder / "big.png")
    return folder


def test_values_transformers_publishes(coco: dict) -> None:
    """transformers' tests/models/detr/test_image_processing_detr.py expected values (no transformers needed)."""
    enc = DetrImageProcessor()(images=coco["image"], annotations=coco["det"], return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, 800, 1066)
    torch.testing.assert_close(
        enc["pixel_values"][0, 0, 0, :3], torch.tensor([0.2796, 0.3138, 0.3481]), rtol=1e-4, atol=1e-4
    )
    labels = enc["labels"][0]
    torch.testing.assert_close(labels["area"], torch.tensor([5887.9600, 11250.2061, 489353.8438, 837122.7500,
                                                             147967.5156, 165732.3438]))  # fmt: skip
    torch.testing.assert_close(labels["boxes"][0], torch.tensor([0.5503, 0.2765, 0.0604, 0.2215]), rtol=1e-3, atol=1e-3)
    assert labels["boxes"].shape == (6, 4) and labels["image_id"].tolist() == [39769]
    assert labels["iscrowd"].tolist() == [0] * 6 and labels["class_labels"].tolist() == [75, 75, 63, 65, 17, 17]
    assert labels["orig_size"].tolist() == [480, 640] and labels["size"].tolist() == [800, 1066]

    processor = DetrImageProcessor(format="coco_panoptic")
    enc = processor(images=coco["image"], annotations=coco["pano"], masks_path=FIXTURE / "coco_panoptic",
                    return_tensors="pt")  # fmt: skip
    labels = enc["labels"][0]
    torch.testing.assert_close(labels["area"], torch.tensor([147979.6875, 165527.0469, 484638.5938, 11292.9375,
                                                             5879.6562, 7634.1147]))  # fmt: skip
    torch.testing.assert_close(labels["boxes"][0], torch.tensor([0.2625, 0.5437, 0.4688, 0.8625]), rtol=1e-3, atol=1e-3)
    assert labels["class_labels"].tolist() == [17, 17, 63, 75, 75, 93] and labels["masks"].shape == (6, 800, 1066)
    assert abs(int(labels["masks"].sum()) - 822873) / 822873 < 1e-3  # published for the PIL backend: 822873


CASES = {
    "detection": ({}, {"annotations": "det"}),
    "detection_masks_batch": ({"size": {"shortest_edge": 150, "longest_edge": 250}},
                              {"images": ["image", "image_big"], "annotations": ["det", "det_big"],
                               "return_segmentation_masks": True}),
    "detection_batch_absolute_boxes": ({"size": {"shortest_edge": 96, "longest_edge": 160}},
                                       {"images": ["image", "image_big"], "annotations": ["det", "det_big"],
                                        "do_convert_annotations": False}),
    "panoptic": ({"format": "coco_panoptic", "size": {"shortest_edge": 200, "longest_edge": 400}}, {"annotations": "pano"}),
    "panoptic_batch": ({"format": "coco_panoptic", "size": {"shortest_edge": 120, "longest_edge": 200}},
                       {"images": ["image", "image_big"], "annotations": ["pano", "pano_big"]}),
    "numpy_hwc_pad_size": ({"size": {"shortest_edge": 64, "longest_edge": 100}, "pad_size": {"height": 90, "width": 110}},
                           {"images": "numpy_hwc", "annotations": "det"}),
    "numpy_chw_max_height_width": ({"size": {"max_height": 100, "max_width": 90}, "do_pad": False},
                                   {"images": "numpy_chw"}),
    "float_tensor_no_rescale": ({"size": {"shortest_edge": 50, "longest_edge": 70}, "do_rescale": False},
                                {"images": "float_tensor"}),
    "no_normalize_batch_of_four": ({"size": {"height": 40, "width": 60}, "do_normalize": False},
                                   {"images": "batch_tensor"}),
}  # fmt: skip


def _inputs(coco: dict, call: dict, masks_path: Path) -> dict:
    array = np.array(coco["image"])
    special = {
        "numpy_hwc": array, "numpy_chw": np.ascontiguousarray(array.transpose(2, 0, 1)),
        "float_tensor": torch.from_numpy(array).permute(2, 0, 1).float() / 255,
        "batch_tensor": torch.from_numpy(array).permute(2, 0, 1)[None].repeat(4, 1, 1, 1),
    }  # fmt: skip

    def get(name):
        return special[name] if name in special else coco[name]

    out = {"images": coco["image"], "masks_path": masks_path, "return_tensors": "pt"}
    for key, value in call.items():
        if key in ("images", "annotations"):
            out[key] = [get(v) for v in value] if isinstance(value, list) else get(value)
        else:
            out[key] = value
    return out


def _assert_identical(ours: dict, theirs: dict, where: str) -> None:
    assert list(ours) == list(theirs), (where, list(ours), list(theirs))
    for key, value in ours.items():
        if key == "labels":
            for i, (a, b) in enumerate(zip(value, theirs[key], strict=True)):
                _assert_identical(a, b, f"{where}.labels[{i}]")
            continue
        assert value.dtype == theirs[key].dtype, (where, key, value.dtype, theirs[key].dtype)
        assert torch.equal(value, theirs[key]), (where, key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_identical_to_transformers(case: str, coco: dict, masks_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    init, call = CASES[case]
    kwargs = _inputs(coco, call, masks_path)
    ours = DetrImageProcessor(**init)(**copy.deepcopy(kwargs))
    theirs = transformers.DetrImageProcessor(**init)(**kwargs)
    _assert_identical(ours, theirs, case)


def test_batch_feature_and_config_files(coco: dict, tmp_path: Path) -> None:
    small = {"shortest_edge": 32, "longest_edge": 48}
    enc = DetrImageProcessor(size=small)(coco["image"], annotations=coco["det"], return_tensors="np")
    assert isinstance(enc, BatchFeature) and isinstance(enc.pixel_values, np.ndarray)
    assert enc.pixel_values.shape == (1, 3, 32, 42) and enc.labels[0]["size"].tolist() == [32, 42]
    moved = DetrImageProcessor(size=small)(coco["image"], annotations=coco["det"], return_tensors="pt").to(
        torch.float64
    )
    assert moved.pixel_values.dtype == torch.float64 and moved.labels[0].boxes.dtype == torch.float64
    # a hub preprocessor_config.json of transformers 4 (legacy size + max_size)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "DetrFeatureExtractor", "format": "coco_detection", "size": 800, "max_size": 1333,
         "do_normalize": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))  # fmt: skip
    loaded = DeformableDetrImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == {"shortest_edge": 800, "longest_edge": 1333} and loaded.do_pad
    assert DetrImageProcessor(max_size=600, size=500).size == {"shortest_edge": 500, "longest_edge": 600}


def test_bad_input_is_named(coco: dict, tmp_path: Path) -> None:
    processor = DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 48})
    with pytest.raises(ValueError, match=r"annotations\[0\]: format='coco_detection' needs field\(s\) \['annotations'\].*"
                                         r"pass format='coco_panoptic'"):  # fmt: skip
        processor(coco["image"], annotations=coco["pano"])
    with pytest.raises(ValueError, match="format: 'coco_detect', choose from"):
        DetrImageProcessor(format="coco_detect")
    bad = copy.deepcopy(coco["det"])
    del bad["annotations"][2]["bbox"]
    with pytest.raises(ValueError, match=r"annotations\[0\]\['annotations'\]\[2\]: field 'bbox' is missing"):
        processor(coco["image"], annotations=bad)
    with pytest.raises(ValueError, match=r"number of images \(2\) and annotations \(1\)"):
        processor([coco["image"]] * 2, annotations=[coco["det"]])
    panoptic = DetrImageProcessor(format="coco_panoptic", size={"shortest_edge": 32, "longest_edge": 48})
    with pytest.raises(ValueError, match="needs masks_path"):
        panoptic(coco["image"], annotations=coco["pano"])
    with pytest.raises(
        FileNotFoundError, match=r"annotations\[0\]: field 'file_name': .*000000039769.png does not exist"
    ):
        panoptic(coco["image"], annotations=coco["pano"], masks_path=tmp_path)
    with pytest.raises(ValueError, match="cannot be batched without padding: pass do_pad=True"):
        processor([coco["image"], coco["image_big"]], do_pad=False)
    with pytest.raises(ValueError, match="pass do_convert_rgb=True"):
        processor(coco["image"].convert("L"))
    assert processor(coco["image"].convert("L"), do_convert_rgb=True)["pixel_values"].shape[1] == 3
