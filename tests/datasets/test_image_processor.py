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
    with pytest.raises(
        ValueError, match=r"^coco_detect is not a valid AnnotationFormat, please select one of \['coco_detection'"
    ):
        DetrImageProcessor(format="coco_detect")(coco["image"])  # when called, as transformers
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


SETTINGS = {
    "defaults": ({}, "DetrImageProcessor"),
    "legacy_size_max_size": ({"size": 500, "max_size": 600, "pad_and_return_pixel_mask": False}, "DetrImageProcessor"),
    "panoptic_pad_size_rgb_scalar_mean": ({"format": "coco_panoptic", "size": {"max_height": 100, "max_width": 90},
                                           "pad_size": {"height": 120, "width": 100}, "do_convert_rgb": True,
                                           "image_mean": 0.5, "resample": 3}, "DeformableDetrImageProcessor"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_saved_and_loaded_as_transformers(case: str, coco: dict, tmp_path: Path) -> None:
    """to_dict / to_json_string as transformers writes them; each side's save_pretrained read by
    the other's from_pretrained (and AutoImageProcessor), with the same outputs after the trip."""
    transformers = pytest.importorskip("transformers")
    init, name = SETTINGS[case]
    ours_cls = DetrImageProcessor if name == "DetrImageProcessor" else DeformableDetrImageProcessor
    ours, theirs = ours_cls(**init), getattr(transformers, name)(**init)
    assert ours.to_json_string() == theirs.to_json_string()
    assert ours.to_dict() == json.loads(theirs.to_json_string()) and repr(ours).startswith(f"{name} {{")
    assert ours.save_pretrained(tmp_path / "ours") == [str(tmp_path / "ours" / "preprocessor_config.json")]
    theirs.save_pretrained(tmp_path / "theirs")
    assert (tmp_path / "ours" / "preprocessor_config.json").read_text() == (
        tmp_path / "theirs" / "preprocessor_config.json"
    ).read_text()
    read_by_them = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert type(read_by_them).__name__ == name and read_by_them.to_json_string() == theirs.to_json_string()
    read_by_us = ours_cls.from_pretrained(tmp_path / "theirs")
    assert read_by_us.to_json_string() == ours.to_json_string()
    assert ours_cls.from_json_file(tmp_path / "theirs" / "preprocessor_config.json").to_dict() == ours.to_dict()
    ours.to_json_file(tmp_path / "one.json")
    assert ours_cls.from_pretrained(tmp_path / "one.json").to_dict() == ours.to_dict()
    kwargs = {"images": coco["image"], "return_tensors": "pt", "do_pad": True}
    _assert_identical(read_by_us(**kwargs), read_by_them(**kwargs), case)


def test_from_dict_as_transformers_tests_it(tmp_path: Path) -> None:
    """transformers' test_image_processor_from_dict_with_kwargs, and return_unused_kwargs."""
    settings = {"do_resize": True, "size": {"shortest_edge": 18, "longest_edge": 1333}, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                "do_pad": True}  # fmt: skip
    processor = DetrImageProcessor.from_dict(settings)
    assert processor.size == {"shortest_edge": 18, "longest_edge": 1333} and processor.do_pad
    processor = DetrImageProcessor.from_dict(settings, size=42, max_size=84, pad_and_return_pixel_mask=False)
    assert processor.size == {"shortest_edge": 42, "longest_edge": 84} and not processor.do_pad
    processor, unused = DetrImageProcessor.from_dict(settings, do_pad=False, foo=1, return_unused_kwargs=True)
    assert unused == {"foo": 1} and not processor.do_pad
    assert DetrImageProcessor.from_pretrained(_saved(processor, tmp_path), do_resize=False).do_resize is False
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json holds a list, not an object"):
        DetrImageProcessor.from_json_file(tmp_path / "bad.json")
    with pytest.raises(NotADirectoryError, match=r"bad\.json is a file"):
        processor.save_pretrained(tmp_path / "bad.json")


def _saved(processor: DetrImageProcessor, folder: Path) -> Path:
    processor.save_pretrained(folder)
    return folder


def test_pad_as_transformers(coco: dict) -> None:
    """``pad(image, padded_size, annotation, update_bboxes, fill)``: single images and stacked
    batches, with the labels ``__call__`` returns, the same tensors as transformers 5's."""
    transformers = pytest.importorskip("transformers")
    init = {"size": {"shortest_edge": 40, "longest_edge": 60}, "do_pad": False}
    ours, theirs = DetrImageProcessor(**init), transformers.DetrImageProcessor(**init)
    enc = ours(coco["image"], annotations=coco["det"], return_segmentation_masks=True, return_tensors="pt")
    image, labels = enc["pixel_values"][0], dict(enc["labels"][0])
    for args in ((image, (50, 70)), (image, (50, 70), labels), (image, (50, 70), [labels], False, 7),
                 (enc["pixel_values"].repeat(2, 1, 1, 1), (40, 64)), (image, tuple(image.shape[-2:]), labels)):  # fmt: skip
        a = ours.pad(*copy.deepcopy(args))
        b = theirs.pad(*copy.deepcopy(args))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].dtype == b[1].dtype
        if len(args) > 2:
            for x, y in zip(a[2] if isinstance(a[2], list) else [a[2]], b[2] if isinstance(b[2], list) else [b[2]]):
                assert x.keys() == y.keys() and all(
                    torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x
                )
    array, mask, _ = ours.pad(image.numpy(), (50, 70))
    assert isinstance(array, np.ndarray) and array.shape == (3, 50, 70) and mask.sum() == 40 * 53
    with pytest.raises(ValueError, match=r"pad: padded_size \(30, 70\) is smaller than the image \(40, 53\)"):
        ours.pad(image, (30, 70))


def test_panoptic_png_of_an_image_resized_before(coco: dict, masks_path: Path) -> None:
    """transformers' test_batched_coco_panoptic_annotations: the 800x800 copy of image 39769 with
    its original 480x640 PNG. The masks are resized with the image, as transformers does (the same
    masks); boxes and areas are in the image's scale (transformers leaves the boxes in the PNG's)."""
    transformers = pytest.importorskip("transformers")
    init = {"format": "coco_panoptic", "size": {"shortest_edge": 120, "longest_edge": 200}}
    pano = [coco["pano"], coco["pano"]]  # the same PNG for both images
    kwargs = {"images": [coco["image"], coco["image_big"]], "annotations": pano, "masks_path": masks_path,
              "return_tensors": "pt"}  # fmt: skip
    ours = DetrImageProcessor(**init)(**copy.deepcopy(kwargs))
    theirs = transformers.DetrImageProcessor(**init)(**kwargs)
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    for key in ("masks", "class_labels", "iscrowd", "size", "orig_size", "image_id"):
        for a, b in zip(ours["labels"], theirs["labels"], strict=True):
            assert torch.equal(a[key], b[key]), key
    torch.testing.assert_close(ours["labels"][0]["boxes"], theirs["labels"][0]["boxes"], rtol=0, atol=0)
    scale = torch.tensor([800 / 640, 800 / 480] * 2)
    torch.testing.assert_close(ours["labels"][1]["boxes"], theirs["labels"][1]["boxes"] * scale)
    torch.testing.assert_close(ours["labels"][1]["area"], theirs["labels"][1]["area"] * (800 / 640 * 800 / 480))
    # the same image and PNG at the same size give the same boxes: the PNG is read at its image's scale
    same = DetrImageProcessor(**init)(**{**kwargs, "annotations": [coco["pano"], coco["pano_big"]]})
    torch.testing.assert_close(ours["labels"][1]["boxes"], same["labels"][1]["boxes"], atol=2e-3, rtol=0)
    unresized = DetrImageProcessor(format="coco_panoptic", do_resize=False)(
        coco["image_big"], annotations=coco["pano"], masks_path=masks_path
    )
    assert unresized["labels"][0]["masks"].shape == (6, 800, 800)


def test_format_errors_where_and_as_transformers_raises_them(coco: dict, masks_path: Path) -> None:
    """transformers' test_valid_coco_detection_annotations (and the panoptic counterpart): the same
    legal forms, the same ValueError prefix and message, before any work is done."""
    transformers = pytest.importorskip("transformers")
    target = coco["det"]["annotations"]
    params = {"image_id": 39769, "annotations": target}
    size = {"shortest_edge": 24, "longest_edge": 32}
    for processor in (DetrImageProcessor(size=size), transformers.DetrImageProcessor(size=size)):
        for images, anns in ((coco["image"], params), (coco["image"], [params]), ([coco["image"]], params),
                                    ([coco["image"]] * 3, [params] * 3)):  # fmt: skip
            assert len(processor(images=images, annotations=anns, return_tensors="pt")["labels"]) in (1, 3)
        for bad in ({"annotations": target}, {"image_id": 1, "annotations": target[0]}):
            with pytest.raises(ValueError) as e:
                processor(images=coco["image"], annotations=bad, return_tensors="pt")
            assert str(e.value).startswith("Invalid COCO detection annotations"), str(e.value)
        with pytest.raises(ValueError) as e:
            processor(images=[coco["image"]] * 5, annotations=[params] * 4, return_tensors="pt")
        assert str(e.value) == "The number of images (5) and annotations (4) do not match."
    panoptic = {"format": "coco_panoptic", "size": size}
    for processor in (DetrImageProcessor(**panoptic), transformers.DetrImageProcessor(**panoptic)):
        with pytest.raises(ValueError) as e:
            processor(images=coco["image"], annotations=coco["det"], masks_path=masks_path, return_tensors="pt")
        assert str(e.value).startswith("Invalid COCO panoptic annotations"), str(e.value)
    for cls in (DetrImageProcessor, transformers.DetrImageProcessor):  # test_should_raise_if_annotation_format_invalid
        processor = cls(size=size, format="_INVALID_FORMAT_")
        with pytest.raises(ValueError, match="^_INVALID_FORMAT_ is not a valid AnnotationFormat"):
            processor(images=coco["image"], annotations=params, return_tensors="pt")


def test_hub_name_read_from_the_hub_cache(tmp_path: Path) -> None:
    """``from_pretrained("facebook/detr-resnet-50")`` reads what transformers cached (here a cache
    laid out as huggingface_hub lays it out), as transformers offline does; nothing is downloaded."""
    transformers = pytest.importorskip("transformers")
    snapshot = tmp_path / "models--facebook--detr-resnet-50" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--facebook--detr-resnet-50" / "refs").mkdir()
    (tmp_path / "models--facebook--detr-resnet-50" / "refs" / "main").write_text("0123abcd")
    (snapshot / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "DetrFeatureExtractor", "format": "coco_detection", "size": 800, "max_size": 1333,
         "do_normalize": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))  # fmt: skip
    ours = DetrImageProcessor.from_pretrained("facebook/detr-resnet-50", cache_dir=tmp_path)
    theirs = transformers.DetrImageProcessor.from_pretrained("facebook/detr-resnet-50", cache_dir=tmp_path,
                                                             local_files_only=True)  # fmt: skip
    assert ours.to_json_string() == theirs.to_json_string()
    with pytest.raises(FileNotFoundError, match="reads local folders and the hub's cache, and downloads nothing"):
        DetrImageProcessor.from_pretrained("facebook/detr-resnet-101", cache_dir=tmp_path)
