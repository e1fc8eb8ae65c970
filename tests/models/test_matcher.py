"""The Hungarian matcher finds the minimum-cost assignment: checked against brute force."""

import itertools

import pytest
import torch

from models.matcher import HungarianMatcher
from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


def _cost(matcher, logits, boxes, labels, tboxes):
    prob = logits.softmax(-1)
    c = (
        -matcher.cost_class * prob[:, labels]
        + matcher.cost_bbox * torch.cdist(boxes, tboxes, p=1)
        - matcher.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tboxes))
    )
    return c


def _random_case(q, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(q, k, generator=g)
    boxes = torch.cat([torch.rand(q, 2, generator=g) * 0.6 + 0.2, torch.rand(q, 2, generator=g) * 0.3 + 0.05], 1)
    labels = torch.randint(0, k - 1, (n,), generator=g)
    tboxes = torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1)
    return logits, boxes, labels, tboxes


@pytest.mark.parametrize("q,n,seed", [(4, 2, 0), (5, 3, 1), (6, 4, 2), (5, 5, 3), (3, 1, 4)])
def test_matches_brute_force(q, n, seed):
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    logits, boxes, labels, tboxes = _random_case(q, n, 6, seed)
    out = {"pred_logits": logits[None], "pred_boxes": boxes[None]}
    ((i, j),) = matcher(out, [{"labels": labels, "boxes": tboxes}])
    cost = _cost(matcher, logits, boxes, labels, tboxes)
    ours = cost[i, j].sum()
    best = min(sum(cost[p[t], t] for t in range(n)) for p in itertools.permutations(range(q), n))
    torch.testing.assert_close(ours, best)
    assert len(i) == n and len(set(i.tolist())) == n and sorted(j.tolist()) == list(range(n))


def test_batch_with_an_empty_image():
    matcher = HungarianMatcher(1, 5, 2)
    logits, boxes, labels, tboxes = _random_case(4, 2, 5, 7)
    out = {"pred_logits": torch.stack([logits, logits]), "pred_boxes": torch.stack([boxes, boxes])}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    res = matcher(out, [empty, {"labels": labels, "boxes": tboxes}])
    assert len(res[0][0]) == 0 and len(res[1][0]) == 2
    res = matcher(out, [empty, empty])
    assert all(len(i) == 0 for i, _ in res)


def test_all_zero_costs_rejected():
    with pytest.raises(ValueError, match="can't be 0"):
        HungarianMatcher(0, 0, 0)
