"""Box conversions, IoU, GIoU and masks_to_boxes against torchvision's independent implementations."""

import pytest
import torch
import torchvision.ops as tvops

from util import box_ops


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_conversions_round_trip():
    boxes = _random_boxes(20, 0)
    cxcywh = box_ops.box_xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(cxcywh, tvops.box_convert(boxes, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_ops.box_cxcywh_to_xyxy(cxcywh), boxes)


def test_iou_and_giou_match_torchvision():
    a, b = _random_boxes(7, 1), _random_boxes(5, 2)
    iou, union = box_ops.box_iou(a, b)
    torch.testing.assert_close(iou, tvops.box_iou(a, b))
    torch.testing.assert_close(box_ops.generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))
    assert union.shape == (7, 5)
    # identical boxes: GIoU 1; disjoint far boxes: GIoU < 0
    assert torch.allclose(torch.diag(box_ops.generalized_box_iou(a, a)), torch.ones(7))
    far = torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[10.0, 10, 11, 11]])
    assert box_ops.generalized_box_iou(*far).item() < 0


def test_giou_rejects_degenerate_boxes_with_a_clear_error():
    good = _random_boxes(2, 3)
    bad = torch.tensor([[5.0, 5, 4, 8]])
    with pytest.raises(ValueError, match="degenerate"):
        box_ops.generalized_box_iou(good, bad)


def test_masks_to_boxes_matches_torchvision():
    masks = torch.zeros(3, 20, 30)
    masks[0, 2:5, 3:9] = 1
    masks[1, 10:19, 0:1] = 1
    masks[2, 0:20, 29:30] = 1
    torch.testing.assert_close(box_ops.masks_to_boxes(masks), tvops.masks_to_boxes(masks.bool()).float())
    assert box_ops.masks_to_boxes(torch.zeros(0, 4, 4)).shape == (0, 4)
