"""Post-processing with Hugging Face transformers' API, for this project's models:
``post_process_object_detection``, ``post_process_semantic_segmentation``,
``post_process_instance_segmentation`` and ``post_process_panoptic_segmentation`` of
``DetrImageProcessor``, and ``post_process_object_detection_sigmoid`` (Deformable DETR's top-k).
Inputs are this project's output dicts or objects with transformers' names (``logits``, ...).

Not in the official code; transformers 5's arguments, return structures and numbers, but for
panoptic segment ids, which are unique here (``_segments``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from util import box_ops

logger = logging.getLogger(__name__)

Sizes = Tensor | Sequence[Sequence[int]] | None  # target_sizes: rows of tensors, tuples or lists in every function


class AttributeDict(dict):
    """A dict whose keys are also attributes (transformers' ``BatchFeature`` / output objects)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _get(outputs: Any, hf_name: str, our_name: str) -> Tensor:
    """``outputs[hf_name]`` / ``outputs.hf_name``, or this project's name for it."""
    for name in (hf_name, our_name):
        value = outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)
        if value is not None:
            return value
    found = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
    raise ValueError(f"outputs: no '{hf_name}' (or '{our_name}') in {found}")


def _check_sizes(batch: int, target_sizes: Sizes) -> None:
    if target_sizes is not None and len(target_sizes) != batch:
        raise ValueError(
            f"target_sizes: {len(target_sizes)} sizes for a batch of {batch} (one (height, width) per image)"
        )


def _size(target_size: Any) -> tuple[int, int]:
    h, w = (int(v) for v in target_size)
    return h, w


def _scale_boxes(boxes: Tensor, target_sizes: Sizes) -> Tensor:
    """``[B, Q, 4]`` normalised xyxy -> absolute pixels of each image's (height, width)."""
    if target_sizes is None:
        return boxes
    if isinstance(target_sizes, Tensor):
        img_h, img_w = target_sizes.unbind(1)
    else:
        img_h = torch.Tensor([s[0] for s in target_sizes])
        img_w = torch.Tensor([s[1] for s in target_sizes])
    scale = torch.stack([img_w, img_h, img_w, img_h], dim=1).to(boxes.device)
    return boxes * scale[:, None, :]


def _keep_above(scores: Tensor, labels: Tensor, boxes: Tensor, threshold: float) -> list[dict[str, Tensor]]:
    results = []
    for s, lab, b in zip(scores, labels, boxes):
        keep = s > threshold
        results.append({"scores": s[keep], "labels": lab[keep], "boxes": b[keep]})
    return results


@torch.no_grad()
def post_process_object_detection(
    outputs: Any, threshold: float = 0.5, target_sizes: Sizes = None
) -> list[dict[str, Tensor]]:
    """DETR (softmax): per image the ``scores``, ``labels`` and xyxy ``boxes`` (pixels with
    ``target_sizes [B, 2]`` (h, w), else normalised) of the queries whose best non-"no-object"
    probability exceeds ``threshold``."""
    logits, boxes = _get(outputs, "logits", "pred_logits"), _get(outputs, "pred_boxes", "pred_boxes")
    _check_sizes(len(logits), target_sizes)
    scores, labels = F.softmax(logits, -1)[..., :-1].max(-1)
    return _keep_above(scores, labels, _scale_boxes(box_ops.box_cxcywh_to_xyxy(boxes), target_sizes), threshold)


@torch.no_grad()
def post_process_object_detection_sigmoid(
    outputs: Any, threshold: float = 0.5, target_sizes: Sizes = None, top_k: int = 100
) -> list[dict[str, Tensor]]:
    """Deformable DETR (sigmoid): the ``top_k`` best (query, class) pairs over the whole image,
    then those above ``threshold``; same return structure as ``post_process_object_detection``."""
    logits, boxes = _get(outputs, "logits", "pred_logits"), _get(outputs, "pred_boxes", "pred_boxes")
    _check_sizes(len(logits), target_sizes)
    prob = logits.sigmoid().view(logits.shape[0], -1)
    scores, index = torch.topk(prob, min(top_k, prob.shape[1]), dim=1)
    query = torch.div(index, logits.shape[2], rounding_mode="floor")
    labels = index % logits.shape[2]
    boxes = torch.gather(box_ops.box_cxcywh_to_xyxy(boxes), 1, query.unsqueeze(-1).repeat(1, 1, 4))
    return _keep_above(scores, labels, _scale_boxes(boxes, target_sizes), threshold)


@torch.no_grad()
def post_process_semantic_segmentation(
    outputs: Any, target_sizes: Sizes = None, return_segmentation_scores: bool = False
) -> list[Tensor] | list[AttributeDict]:
    """Per image the class of every pixel ``[H, W]``: mask probabilities weighted by the queries'
    class probabilities (no-object dropped), resized (bilinear) to ``target_sizes``. With
    ``return_segmentation_scores``: objects with ``segmentation`` and ``segmentation_scores [C, H, W]``."""
    logits, masks = _get(outputs, "logits", "pred_logits"), _get(outputs, "pred_masks", "pred_masks")
    _check_sizes(len(logits), target_sizes)
    classes = logits.softmax(dim=-1)[..., :-1]
    scores = torch.einsum("bqc, bqhw -> bchw", classes, masks.sigmoid())
    results = []
    for i in range(len(logits)):
        image_scores = scores[i]
        if target_sizes is not None:
            image_scores = F.interpolate(image_scores[None], size=_size(target_sizes[i]), mode="bilinear",
                                         align_corners=False)[0]  # fmt: skip
        results.append(AttributeDict(segmentation=image_scores.argmax(dim=0), segmentation_scores=image_scores))
    return results if return_segmentation_scores else [r.segmentation for r in results]


def _segments(
    mask_probs: Tensor, scores: Tensor, labels: Tensor, mask_threshold: float, overlap_mask_area_threshold: float,
    label_ids_to_fuse: Iterable[int], target_size: tuple[int, int] | None,
) -> tuple[Tensor, list[dict[str, Any]]]:  # fmt: skip
    """One image: ``mask_probs [K, h, w]`` of the kept queries -> segment-id map ``[H, W]`` (int32,
    0 = none) and one info dict per segment. Every pixel goes to the query with the highest
    score-weighted mask probability; a query becomes a segment when it wins pixels and keeps more than
    ``overlap_mask_area_threshold`` of its own mask (score-weighted probability >= ``mask_threshold``).

    Segment ids are unique, unlike transformers': after a fused class (``label_ids_to_fuse``)
    reappears, transformers restarts its counter at that class's id, so a later segment can reuse
    an id already given to another one (two segments merged in the map). Wherever transformers'
    ids are unique the results are identical; otherwise they are identical up to that renumbering."""
    if target_size is not None:
        mask_probs = F.interpolate(mask_probs[None], size=target_size, mode="bilinear", align_corners=False)[0]
    height, width = mask_probs.shape[1:]
    segmentation = torch.zeros((height, width), dtype=torch.int32, device=mask_probs.device)
    mask_probs = mask_probs * scores.view(-1, 1, 1)
    owner = mask_probs.argmax(0)
    fuse = set(label_ids_to_fuse)
    fused_ids: dict[int, int] = {}
    segments: list[dict[str, Any]] = []
    last_id = 0
    for k in range(labels.shape[0]):
        label = int(labels[k])
        mask_k = owner == k
        area, own_area = mask_k.sum(), (mask_probs[k] >= mask_threshold).sum()
        if not (area > 0 and own_area > 0 and (area / own_area).item() > overlap_mask_area_threshold):
            continue
        if label in fused_ids:
            segment_id = fused_ids[label]
        else:
            last_id += 1
            segment_id = last_id
        segmentation[mask_k] = segment_id
        segments.append({"id": segment_id, "label_id": label, "was_fused": label in fuse,
                         "score": round(scores[k].item(), 6)})  # fmt: skip
        if label in fuse:
            fused_ids[label] = segment_id
    return segmentation, segments


def _segment_images(
    outputs: Any, threshold: float, mask_threshold: float, overlap_mask_area_threshold: float,
    label_ids_to_fuse: Iterable[int], target_sizes: Sizes, rle: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    logits, masks = _get(outputs, "logits", "pred_logits"), _get(outputs, "pred_masks", "pred_masks")
    _check_sizes(len(logits), target_sizes)
    no_object = logits.shape[-1] - 1
    mask_probs = masks.sigmoid()
    scores, labels = F.softmax(logits, dim=-1).max(-1)
    results: list[dict[str, Any]] = []
    for i in range(len(logits)):
        keep = labels[i].ne(no_object) & (scores[i] > threshold)
        target_size = _size(target_sizes[i]) if target_sizes is not None else None
        if not bool(keep.any()):
            height, width = target_size if target_size is not None else mask_probs.shape[2:]
            results.append({"segmentation": torch.zeros((height, width)) - 1, "segments_info": []})
            continue
        segmentation, segments = _segments(
            mask_probs[i][keep], scores[i][keep], labels[i][keep], mask_threshold, overlap_mask_area_threshold,
            label_ids_to_fuse, target_size,
        )  # fmt: skip
        if rle:
            segmentation = [_rle(torch.where(segmentation == v, 1, 0)) for v in torch.unique(segmentation)]
        results.append({"segmentation": segmentation, "segments_info": segments})
    return results


def _rle(mask: Tensor) -> list[int]:
    """COCO's uncompressed run-length encoding of a binary ``[H, W]`` mask (row-major, as transformers)."""
    pixels = np.concatenate([[0], mask.flatten().cpu().numpy(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return list(runs)


@torch.no_grad()
def post_process_instance_segmentation(
    outputs: Any, threshold: float = 0.5, mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
    target_sizes: Sizes = None, return_coco_annotation: bool | None = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per image ``segmentation`` (segment id per pixel, ``-1`` everywhere when nothing is found;
    RLE per segment with ``return_coco_annotation``) and ``segments_info`` (``id``, ``label_id``,
    ``was_fused``, ``score``) of the queries above ``threshold``; no class is fused."""
    return _segment_images(outputs, threshold, mask_threshold, overlap_mask_area_threshold, (), target_sizes,
                           rle=bool(return_coco_annotation))  # fmt: skip


@torch.no_grad()
def post_process_panoptic_segmentation(
    outputs: Any, threshold: float = 0.5, mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: Iterable[int] | None = None, target_sizes: Sizes = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """As ``post_process_instance_segmentation``; all instances of a class in ``label_ids_to_fuse``
    (stuff classes) form one segment."""
    if label_ids_to_fuse is None:
        logger.warning("post_process_panoptic_segmentation: label_ids_to_fuse unset, no instance will be fused")
        label_ids_to_fuse = set()
    return _segment_images(outputs, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse,
                           target_sizes)  # fmt: skip
