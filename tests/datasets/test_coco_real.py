"""Loading the real 16-image COCO train2017 sample (polygons and one crowd RLE), if available."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datasets.coco import CocoDetection, convert_coco_poly_to_mask, make_coco_transforms
from datasets.coco_json import validate_coco_file
from util.box_ops import masks_to_boxes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ANN = "instances_train2017_small.json"
IMAGES = "train_2017_small"


def test_validate_real_sample(real_sample: Path) -> None:
    stats = validate_coco_file(real_sample / ANN, num_classes=91)
    assert stats["num_images"] == 16 and stats["num_annotations"] == 197
    assert stats["num_crowd"] == 1 and stats["max_category_id"] <= 90
    assert stats["num_images_without_annotations"] == 0


@pytest.mark.parametrize("return_masks", [False, True])
def test_every_sample_loads(real_sample: Path, return_masks: bool) -> None:
    data = json.loads((real_sample / ANN).read_text())
    crowd_ids = {a["image_id"] for a in data["annotations"] if a["iscrowd"]}
    ds = CocoDetection(real_sample / IMAGES, real_sample / ANN, transforms=None, return_masks=return_masks)
    assert len(ds) == 16
    total = 0
    for idx in range(len(ds)):
        image, target = ds[idx]
        image_id = ds.ids[idx]
        w, h = image.size
        non_crowd = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        n = len(target["boxes"])
        assert n == len(non_crowd) - sum(a["id"] in ds.degenerate_ann_ids for a in non_crowd)
        total += n
        assert target["orig_size"].tolist() == [h, w]
        assert target["iscrowd"].sum() == 0
        boxes = target["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes[:, 2].max() <= w and boxes[:, 3].max() <= h
        assert target["labels"].max() <= 90
        if return_masks:
            masks = target["masks"]
            assert masks.shape == (n, h, w) and masks.dtype == torch.uint8
            assert masks.flatten(1).any(1).all()
            # polygon extents agree with the annotated boxes within a few pixels
            diff = (masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0]) - boxes).abs()
            assert diff.max() < 8.0
        else:
            assert "masks" not in target
        if image_id in crowd_ids:
            crowd_box = [a["bbox"] for a in data["annotations"] if a["iscrowd"]][0]
            x, y, bw, bh = crowd_box
            crowd_xyxy = torch.tensor([x, y, x + bw, y + bh])
            assert not (boxes - crowd_xyxy).abs().sum(1).lt(1e-3).any()
    assert total == 196


def test_crowd_rle_decodes(real_sample: Path) -> None:
    data = json.loads((real_sample / ANN).read_text())
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    image = next(i for i in data["images"] if i["id"] == crowd["image_id"])
    mask = convert_coco_poly_to_mask([crowd["segmentation"]], image["height"], image["width"])
    assert mask.shape == (1, image["height"], image["width"])
    # foreground = odd run lengths of the uncompressed RLE (the sample's "area" field is not that count)
    assert int(mask.sum()) == sum(crowd["segmentation"]["counts"][1::2])
    x, y, bw, bh = crowd["bbox"]
    box = masks_to_boxes(mask)[0] + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(box, torch.tensor([x, y, x + bw, y + bh], dtype=torch.float32), atol=1.0, rtol=0)


def test_real_sample_through_train_transforms(real_sample: Path) -> None:
    ds = CocoDetection(
        real_sample / IMAGES,
        real_sample / ANN,
        transforms=make_coco_transforms("train", max_size=200, scales=[96, 128]),
        return_masks=True,
    )
    torch.manual_seed(0)
    for idx in range(len(ds)):
        image, target = ds[idx]
        assert max(image.shape[-2:]) <= 200
        assert target["masks"].shape == (len(target["boxes"]), *image.shape[-2:])
        assert target["boxes"].numel() == 0 or (target["boxes"].min() >= 0 and target["boxes"].max() <= 1 + 1e-5)
