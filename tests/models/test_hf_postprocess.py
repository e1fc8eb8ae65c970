"""``models.hf_postprocess`` (the image processors' post-processing methods): the same results as
the installed transformers for all four DETR post-processors and Deformable DETR's, from this
project's output dicts and from transformers' output objects; unique panoptic segment ids."""

from __future__ import annotations

import pytest
import torch

from datasets.image_processor import DeformableDetrImageProcessor, DetrImageProcessor

B, Q, C, H, W = 2, 10, 5, 24, 32
SIZES = [(48, 64), (40, 50)]


def _outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Queries owning square blobs (so that segments pass the overlap test), some of them no-object."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randn(B, Q, H, W, generator=g) - 6
    for b in range(B):
        for q in range(Q):
            y, x = (q // 4) * 8, (q % 4) * 8
            masks[b, q, y : y + 7 + b, x : x + 6] = 8 + torch.rand(1, generator=g)
    labels = torch.randint(0, C + 1, (B, Q), generator=g)
    logits = torch.randn(B, Q, C + 1, generator=g)
    logits.scatter_(2, labels[..., None], 7.0)
    return {"pred_logits": logits, "pred_boxes": torch.rand(B, Q, 4, generator=g) * 0.5 + 0.2, "pred_masks": masks}


def _same(ours, theirs) -> None:
    if isinstance(ours, torch.Tensor):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    elif isinstance(ours, dict):
        assert list(ours) == list(theirs)
        for k in ours:
            _same(ours[k], theirs[k])
    elif isinstance(ours, list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _same(a, b)
    else:
        assert ours == theirs


CALLS = {
    "object_detection": ("post_process_object_detection", {"threshold": 0.3}),
    "object_detection_sizes": ("post_process_object_detection", {"threshold": 0.3, "target_sizes": torch.tensor(SIZES)}),
    "semantic": ("post_process_semantic_segmentation", {}),
    "semantic_sizes_scores": ("post_process_semantic_segmentation", {"target_sizes": SIZES,
                                                                     "return_segmentation_scores": True}),
    "instance": ("post_process_instance_segmentation", {"threshold": 0.5}),
    "instance_sizes_rle": ("post_process_instance_segmentation", {"target_sizes": SIZES, "return_coco_annotation": True,
                                                                  "mask_threshold": 0.4}),
    "instance_nothing_found": ("post_process_instance_segmentation", {"threshold": 0.9999}),
    "panoptic": ("post_process_panoptic_segmentation", {"threshold": 0.5, "label_ids_to_fuse": set()}),
    "panoptic_fused_sizes": ("post_process_panoptic_segmentation", {"threshold": 0.5, "target_sizes": SIZES,
                                                                    "label_ids_to_fuse": {3},
                                                                    "overlap_mask_area_threshold": 0.6}),
}  # fmt: skip


@pytest.mark.parametrize("call", sorted(CALLS))
def test_identical_to_transformers(call: str) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.detr.modeling_detr import DetrSegmentationOutput

    method, kwargs = CALLS[call]
    out = _outputs()
    hf_out = DetrSegmentationOutput(
        logits=out["pred_logits"], pred_boxes=out["pred_boxes"], pred_masks=out["pred_masks"]
    )
    theirs = getattr(transformers.DetrImageProcessor(), method)(hf_out, **kwargs)
    if "instance" in method or "panoptic" in method:  # there are segments to compare (or none, on purpose)
        assert bool(sum(len(r["segments_info"]) for r in theirs)) != (call == "instance_nothing_found")
    for outputs in (out, hf_out):  # this project's dict and transformers' object
        ours = getattr(DetrImageProcessor(), method)(outputs, **kwargs)
        if kwargs.get("return_segmentation_scores"):
            ours = [dict(r) for r in ours]
            theirs = [{k: r[k] for k in ("segmentation", "segmentation_scores")} for r in theirs]
        if "panoptic" in method:
            ours = [_with_their_ids(a, b) for a, b in zip(ours, theirs)]
        _same(ours, theirs)


def _with_their_ids(ours: dict, theirs: dict) -> dict:
    """Our panoptic result with our segment ids renamed to transformers' ids (one to one when
    transformers' ids are unique: then the result must not change)."""
    rename = {s["id"]: t["id"] for s, t in zip(ours["segments_info"], theirs["segments_info"], strict=True)}
    if len(set(rename.values())) == len(rename):
        assert all(k == v for k, v in rename.items())
    return {"segmentation": ours["segmentation"].clone().apply_(lambda v: rename.get(v, v)),
            "segments_info": [{**s, "id": rename[s["id"]]} for s in ours["segments_info"]]}  # fmt: skip


def test_deformable_sigmoid_top_k_identical_to_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    out = _outputs(1)
    logits = out["pred_logits"][..., :C]
    hf_out = {"logits": logits, "pred_boxes": out["pred_boxes"]}
    for kwargs in ({"threshold": 0.3}, {"threshold": 0.1, "top_k": 7, "target_sizes": SIZES}, {"top_k": 500}):
        ours = DeformableDetrImageProcessor().post_process_object_detection(
            {"pred_logits": logits, "pred_boxes": out["pred_boxes"]}, **kwargs
        )
        theirs = transformers.DeformableDetrImageProcessor().post_process_object_detection(
            transformers.utils.ModelOutput(hf_out), **kwargs
        )
        _same(ours, theirs)
        assert all(len(r["scores"]) <= kwargs.get("top_k", 100) for r in ours)


def test_panoptic_ids_are_unique() -> None:
    """A fused class seen again must not make a later segment reuse an id (transformers does; then
    its map equals ours with our ids renamed to its ids)."""
    out = _outputs()
    labels = torch.tensor([[1, 2, 1, 4] + [C] * (Q - 4)] * B)  # fused 1, 2, fused 1 again, 4
    logits = torch.full((B, Q, C + 1), -5.0).scatter_(2, labels[..., None], 7.0)
    outputs = {**out, "pred_logits": logits}
    ours = DetrImageProcessor().post_process_panoptic_segmentation(outputs, label_ids_to_fuse={1})
    for result in ours:
        ids = [s["id"] for s in result["segments_info"]]
        assert ids == [1, 2, 1, 3] and set(result["segmentation"].unique().tolist()) == {1, 2, 3}
        assert [s["was_fused"] for s in result["segments_info"]] == [True, False, True, False]
    transformers = pytest.importorskip("transformers")
    theirs = transformers.DetrImageProcessor().post_process_panoptic_segmentation(
        transformers.utils.ModelOutput({"logits": logits, "pred_masks": out["pred_masks"]}), label_ids_to_fuse={1}
    )
    for a, b in zip(ours, theirs):
        assert [s["id"] for s in b["segments_info"]] == [1, 2, 1, 2]  # 2 twice
        _same(_with_their_ids(a, b), b)


def test_errors() -> None:
    processor = DetrImageProcessor()
    with pytest.raises(ValueError, match=r"no 'logits' \(or 'pred_logits'\)"):
        processor.post_process_object_detection({"boxes": torch.zeros(1, 2, 4)})
    with pytest.raises(ValueError, match="target_sizes: 1 sizes for a batch of 2"):
        processor.post_process_object_detection(_outputs(), target_sizes=[(10, 10)])
