"""``PostProcessPanoptic`` on hand-built outputs: threshold and no-object filtering, per-pixel
argmax, merging of stuff queries of one class, removal of tiny segments, resizing to the target
size, empty results; and ``PostProcessSegm``'s shapes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.segmentation import PostProcessPanoptic, PostProcessSegm, rgb2id

# classes 0 and 1 are things, 2 is stuff; logit index 3 is "no object"
THING_MAP = {0: True, 1: True, 2: False}
H = W = 8


def _logits(*entries: tuple[int, float]) -> torch.Tensor:
    """One query per ``(class, probability)``; the rest of the mass on the other classes evenly."""
    rows = []
    for cls, p in entries:
        probs = torch.full((4,), (1 - p) / 3)
        probs[cls] = p
        rows.append(probs.log())
    return torch.stack(rows)[None]


def _run(logits: torch.Tensor, masks: torch.Tensor, size=(H, W), target=None, thing_map=THING_MAP) -> dict:
    outputs = {"pred_logits": logits, "pred_masks": masks[None], "pred_boxes": torch.full((1, len(masks), 4), 0.5)}
    post = PostProcessPanoptic(thing_map, threshold=0.85)
    res = post(outputs, torch.tensor([size]), None if target is None else torch.tensor([target]))
    assert len(res) == 1
    ids = rgb2id(np.asarray(Image.open(io.BytesIO(res[0]["png_string"])).convert("RGB")))
    return {"ids": ids, "segments": res[0]["segments_info"]}


def _mask(region: tuple[slice, slice], inside: float = 10.0, outside: float = -10.0) -> torch.Tensor:
    m = torch.full((H, W), float(outside))
    m[region] = inside
    return m


def test_argmax_assignment_and_threshold() -> None:
    logits = _logits((0, 0.95), (2, 0.9), (1, 0.8), (3, 0.99))  # query 2 below threshold, 3 no-object
    masks = torch.stack(
        [
            _mask((slice(0, 4), slice(0, 4)), 10, -10),
            torch.zeros(H, W),  # stuff: wins wherever the thing is negative
            torch.full((H, W), 50.0),  # would win everywhere but is not kept
            torch.full((H, W), 50.0),
        ]
    )
    r = _run(logits, masks)
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in r["segments"]] == [
        (0, 0, True, 16),
        (1, 2, False, 48),
    ]
    assert (r["ids"][:4, :4] == 0).all() and (r["ids"][4:, :] == 1).all()


def test_stuff_queries_of_one_class_are_merged() -> None:
    logits = _logits((2, 0.9), (0, 0.95), (2, 0.9))
    left = _mask((slice(None), slice(0, 4)), 5, -5)
    right = _mask((slice(None), slice(4, 8)), 5, -5)
    thing = _mask((slice(0, 3), slice(5, 8)), 20, -20)
    r = _run(logits, torch.stack([left, thing, right]))
    # the second stuff query is merged into the first (then dropped as empty): one stuff segment
    assert [(s["category_id"], s["area"]) for s in r["segments"]] == [(2, 64 - 9), (0, 9)]
    assert set(np.unique(r["ids"]).tolist()) == {0, 1}


def test_things_of_one_class_are_not_merged() -> None:
    logits = _logits((0, 0.95), (0, 0.95), (2, 0.9))
    a = _mask((slice(0, 4), slice(0, 4)))
    b = _mask((slice(4, 8), slice(4, 8)))
    r = _run(logits, torch.stack([a, b, torch.zeros(H, W)]))
    assert [(s["category_id"], s["area"]) for s in r["segments"]] == [(0, 16), (0, 16), (2, 32)]


def test_tiny_segments_are_removed() -> None:
    logits = _logits((0, 0.95), (1, 0.95), (2, 0.9))
    tiny = _mask((slice(0, 2), slice(0, 2)), 20, -20)  # 4 pixels: removed (area <= 4)
    big = _mask((slice(4, 8), slice(0, 8)), 20, -20)
    r = _run(logits, torch.stack([tiny, big, torch.zeros(H, W)]))
    assert [(s["id"], s["category_id"], s["area"]) for s in r["segments"]] == [(0, 1, 32), (1, 2, 32)]


def test_resized_to_target_size() -> None:
    logits = _logits((0, 0.95), (2, 0.9))
    masks = torch.stack([_mask((slice(0, 4), slice(0, 4))), torch.zeros(H, W)])
    r = _run(logits, masks, size=(H, W), target=(16, 24))
    assert r["ids"].shape == (16, 24)
    assert [s["area"] for s in r["segments"]] == [int((r["ids"] == 0).sum()), int((r["ids"] == 1).sum())]
    assert sum(s["area"] for s in r["segments"]) == 16 * 24


def test_empty_result() -> None:
    logits = _logits((3, 0.99), (0, 0.5))
    r = _run(logits, torch.zeros(2, H, W), target=(10, 12))
    assert r["segments"] == []
    assert r["ids"].shape == (10, 12) and (r["ids"] == 0).all()


def test_class_missing_from_thing_map_is_dropped() -> None:
    logits = _logits((0, 0.95), (2, 0.9))
    masks = torch.stack([_mask((slice(0, 4), slice(0, 4))), torch.zeros(H, W)])
    r = _run(logits, masks, thing_map={0: True, 1: True})
    assert [s["category_id"] for s in r["segments"]] == [0]


def test_batch_size_mismatch_raises() -> None:
    post = PostProcessPanoptic(THING_MAP)
    outputs = {
        "pred_logits": torch.zeros(2, 3, 4),
        "pred_masks": torch.zeros(2, 3, H, W),
        "pred_boxes": torch.zeros(2, 3, 4),
    }
    with pytest.raises(ValueError):
        post(outputs, torch.tensor([[H, W]]))


def test_postprocess_segm() -> None:
    masks = torch.zeros(2, 3, 4, 5)
    masks[0, 0, :2, :2] = 10.0
    results = [{"scores": torch.zeros(3)} for _ in range(2)]
    out = PostProcessSegm()(
        results, {"pred_masks": masks}, torch.tensor([[32, 40], [20, 20]]), torch.tensor([[16, 20], [10, 10]])
    )
    assert out[0]["masks"].shape == (3, 1, 32, 40) and out[1]["masks"].shape == (3, 1, 20, 20)
    assert out[0]["masks"].dtype == torch.uint8
    assert out[0]["masks"][0, 0, 0, 0] == 1 and out[0]["masks"][0, 0, -1, -1] == 0
