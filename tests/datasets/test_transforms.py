"""Boxes, masks, areas and sizes stay consistent through the detection transforms."""

from __future__ import annotations

import random

import numpy as np
import PIL.Image
import pytest
import torch

import datasets.transforms as T
from datasets.coco import make_coco_transforms
from util.box_ops import box_cxcywh_to_xyxy, masks_to_boxes

# (x0, y0, x1, y1) pixel boxes, x1/y1 exclusive, in a 100 (w) x 80 (h) image.
BOXES = [(10, 5, 40, 30), (50, 40, 95, 78), (0, 0, 20, 80)]
W, H = 100, 80


def make_sample() -> tuple[PIL.Image.Image, dict]:
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8))
    masks = torch.zeros((len(BOXES), H, W), dtype=torch.uint8)
    for k, (x0, y0, x1, y1) in enumerate(BOXES):
        masks[k, y0:y1, x0:x1] = 1
    boxes = torch.tensor(BOXES, dtype=torch.float32)
    target = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 3]),
        "masks": masks,
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "iscrowd": torch.zeros(3, dtype=torch.int64),
        "image_id": torch.tensor([7]),
        "orig_size": torch.tensor([H, W]),
        "size": torch.tensor([H, W]),
    }
    return image, target


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of masks with an exclusive x1/y1, like the targets."""
    return masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])


def test_hflip_boxes_match_masks() -> None:
    image, target = make_sample()
    flipped, out = T.hflip(image, target)
    assert flipped.size == image.size
    torch.testing.assert_close(out["boxes"], mask_boxes(out["masks"]))
    torch.testing.assert_close(out["boxes"][0], torch.tensor([60.0, 5.0, 90.0, 30.0]))
    # pixels move too
    assert np.array_equal(np.asarray(flipped)[:, ::-1], np.asarray(image))
    assert target["boxes"][0, 0] == 10  # input target untouched


@pytest.mark.parametrize("size", [40, 160, (50, 30)])
def test_resize_scales_boxes_area_masks(size: int | tuple[int, int]) -> None:
    image, target = make_sample()
    resized, out = T.resize(image, target, size)
    w, h = resized.size
    assert out["size"].tolist() == [h, w]
    assert out["masks"].shape == (3, h, w) and out["masks"].dtype == torch.bool
    rw, rh = w / W, h / H
    torch.testing.assert_close(out["boxes"], target["boxes"] * torch.tensor([rw, rh, rw, rh]))
    torch.testing.assert_close(out["area"], target["area"] * rw * rh)
    assert (mask_boxes(out["masks"]) - out["boxes"]).abs().max() <= max(rw, rh, 1.0) + 1e-4


def test_resize_to_own_size_changes_nothing() -> None:
    """The no-resampling shortcut: same pixels, boxes and areas; masks bool as after a real resize."""
    image, target = make_sample()
    for img in (image, torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)):
        same, out = T.resize(img, target, H, max_size=1000)
        assert same is img and torch.equal(out["boxes"], target["boxes"]) and torch.equal(out["area"], target["area"])
        assert out["size"].tolist() == [H, W] and out["masks"].dtype == torch.bool
        assert torch.equal(out["masks"], target["masks"].bool()) and target["masks"].dtype == torch.uint8
    # Pillow's own resize to the same size is an exact copy: the official path gives the same values
    assert np.array_equal(np.asarray(image.resize((W, H), PIL.Image.BILINEAR)), np.asarray(image))


def test_get_size_official_rounding() -> None:
    # shorter side to `size`, longer side truncated
    assert T.get_size_with_aspect_ratio((640, 480), 800, 1333) == (800, 1066)
    # longer side would exceed max_size: size = round(1333 * 500 / 2000) = 333, long = int(333 * 4) = 1332
    assert T.get_size_with_aspect_ratio((2000, 500), 800, 1333) == (333, 1332)
    # shorter side already equal to size: unchanged
    assert T.get_size_with_aspect_ratio((800, 1000), 800, 1333) == (1000, 800)
    # a pair is (w, h)
    assert T.get_size((640, 480), (300, 200)) == (200, 300)


def test_crop_clips_and_drops() -> None:
    image, target = make_sample()
    region = (0, 30, 50, 50)  # top, left, height, width: x in [30, 80), y in [0, 50)
    cropped, out = T.crop(image, target, region)
    assert cropped.size == (50, 50)
    assert out["size"].tolist() == [50, 50]
    # box 2 (x < 20) is outside the crop and removed from every per-instance field
    assert out["labels"].tolist() == [1, 2]
    for key in ("boxes", "masks", "area", "iscrowd"):
        assert len(out[key]) == 2, key
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 5.0, 10.0, 30.0], [20.0, 40.0, 50.0, 50.0]]))
    torch.testing.assert_close(out["area"], torch.tensor([250.0, 300.0]))
    torch.testing.assert_close(out["boxes"], mask_boxes(out["masks"]))
    assert out["image_id"].item() == 7


def test_crop_masks_only_drops_empty() -> None:
    image, target = make_sample()
    del target["boxes"]
    _, out = T.crop(image, target, (0, 30, 50, 50))
    assert out["labels"].tolist() == [1, 2]
    assert out["masks"].flatten(1).any(1).all()


def test_center_crop_and_random_crop() -> None:
    image, target = make_sample()
    out_img, out = T.CenterCrop((40, 60))(image, target)
    assert out_img.size == (60, 40)
    torch.testing.assert_close(out["boxes"], mask_boxes(out["masks"]))
    random.seed(0)
    for _ in range(10):
        out_img, out = T.RandomCrop((30, 30))(image, target)
        assert out_img.size == (30, 30)
        if len(out["boxes"]):
            torch.testing.assert_close(out["boxes"], mask_boxes(out["masks"]))


def test_random_size_crop_on_small_image() -> None:
    image, target = make_sample()
    random.seed(1)
    for _ in range(10):
        out_img, out = T.RandomSizeCrop(384, 600)(image, target)  # larger than the image: whole sides
        assert out_img.size == (W, H)
        out_img, out = T.RandomSizeCrop(20, 60)(image, target)
        assert 20 <= out_img.size[0] <= 60 and 20 <= out_img.size[1] <= 60


def test_pad_keeps_boxes_and_pads_masks() -> None:
    image, target = make_sample()
    target["masks"] = target["masks"].bool()
    padded, out = T.pad(image, target, (7, 3))
    assert padded.size == (W + 7, H + 3)
    assert out["size"].tolist() == [H + 3, W + 7]
    assert out["masks"].shape == (3, H + 3, W + 7) and out["masks"].dtype == torch.bool
    torch.testing.assert_close(out["boxes"], target["boxes"])
    torch.testing.assert_close(out["boxes"], mask_boxes(out["masks"]))
    random.seed(0)
    padded, out = T.RandomPad(5)(image, target)
    assert out["masks"].shape[-2:] == (padded.size[1], padded.size[0])


def test_normalize_gives_relative_cxcywh() -> None:
    image, target = make_sample()
    tensor, out = T.Compose([T.ToTensor(), T.Normalize()])(image, target)
    assert tensor.shape == (3, H, W)
    boxes = out["boxes"]
    assert boxes.min() >= 0 and boxes.max() <= 1 + 1e-5
    torch.testing.assert_close(boxes[0], torch.tensor([25 / W, 17.5 / H, 30 / W, 25 / H]))
    torch.testing.assert_close(box_cxcywh_to_xyxy(boxes) * torch.tensor([W, H, W, H]), target["boxes"])
    expected = (torch.from_numpy(np.array(image)).permute(2, 0, 1) / 255.0 - 0.485) / 0.229
    torch.testing.assert_close(tensor[0], expected[0])


def test_target_none_and_tensor_images() -> None:
    image, target = make_sample()
    tensor = T.ToTensor()(image, None)[0]
    for transform in (T.RandomHorizontalFlip(1.0), T.RandomResize([40]), T.RandomSizeCrop(10, 50), T.RandomPad(3)):
        out_img, out = transform(tensor, None)
        assert out is None and out_img.ndim == 3
    out_img, out = T.resize(tensor, target, 40)
    assert out_img.shape[-2:] == (40, 50) and out["size"].tolist() == [40, 50]
    _, out = T.hflip(tensor, target)
    torch.testing.assert_close(out["boxes"], mask_boxes(out["masks"]))
    erased, _ = T.RandomErasing(p=1.0)(tensor, target)
    assert erased.shape == tensor.shape


def test_random_select_and_compose_repr() -> None:
    image, target = make_sample()
    select = T.RandomSelect(T.RandomHorizontalFlip(1.0), T.RandomHorizontalFlip(0.0), p=1.0)
    _, out = select(image, target)
    assert out["boxes"][0, 0] == 60
    assert "RandomHorizontalFlip" in repr(T.Compose([T.RandomHorizontalFlip()]))


def test_train_pipeline_keeps_masks_and_boxes_consistent() -> None:
    transforms = make_coco_transforms("train", max_size=160, scales=[64, 80, 96, 112])
    random.seed(0)
    torch.manual_seed(0)
    for _ in range(30):
        image, target = make_sample()
        tensor, out = transforms(image, target)
        h, w = tensor.shape[-2:]
        assert max(h, w) <= 160 and out["size"].tolist() == [h, w]
        assert out["masks"].shape == (len(out["labels"]), h, w)
        boxes = out["boxes"]
        assert boxes.numel() == 0 or (boxes.min() >= 0 and boxes.max() <= 1 + 1e-5)
        abs_boxes = box_cxcywh_to_xyxy(boxes) * torch.tensor([w, h, w, h])
        if len(abs_boxes):
            scale = max(w / W, h / H, 1.0)
            assert (mask_boxes(out["masks"]) - abs_boxes).abs().max() <= scale + 1.0


def test_val_pipeline_size() -> None:
    image, target = make_sample()
    tensor, out = make_coco_transforms("val", max_size=1333, val_size=40)(image, target)
    assert tensor.shape[-2:] == (40, 50)
    with pytest.raises(ValueError):
        make_coco_transforms("test")
