"""DINO's contrastive denoising queries (Zhang et al., 2023; CDN): ground-truth boxes and labels,
noised, fed to the decoder beside the matching queries in groups of one positive (small box noise,
to be reconstructed) and one negative (larger noise, to be rejected) copy of every target.

``make_cdn_queries`` builds them for a batch of targets, ``DenoisingQueries`` holds them (noised
labels and boxes per image and slot, and the self-attention mask that keeps the groups and the
matching queries apart), ``dn_match_indices`` gives the criterion each positive query's target.
Differs from the official ``prepare_for_cdn``: the noise comes from a generator passed in (the run's
seeded, checkpointed one by default) and the queries are data, so a recorded set can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DenoisingQueries:
    """``labels [B, P]``: noised class ids, -1 in padding slots; ``boxes [B, P, 4]``: noised
    normalised cxcywh boxes; ``attn_mask [P + Q, P + Q]``: True where a query may not attend;
    ``num_groups``: the groups, each ``P / num_groups`` slots: positives then negatives of every
    target of the image, padded to the batch's largest target count."""

    labels: Tensor
    boxes: Tensor
    attn_mask: Tensor
    num_groups: int

    @property
    def pad_size(self) -> int:
        return self.labels.shape[1]

    @property
    def valid(self) -> Tensor:
        """``[B, P]``: the slots that hold a target's copy."""
        return self.labels >= 0


def num_dn_groups(dn_number: int, max_targets: int) -> int:
    """The official group count: with ``2 * dn_number >= 100`` (DINO's 100), as many groups as fit
    ``2 * dn_number`` queries for the image with most targets, else ``2 * dn_number`` groups; at least 1."""
    groups = dn_number * 2
    if max_targets == 0:
        return 1
    if groups >= 100:
        groups = groups // (max_targets * 2)
    return max(groups, 1)


def dn_attn_mask(pad_size: int, num_groups: int, num_queries: int, device: torch.device | None = None) -> Tensor:
    """``[P + Q, P + Q]`` bool: the matching queries see no denoising query, and each group sees
    only itself (and the matching queries)."""
    size = pad_size + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad_size:, :pad_size] = True
    group = torch.arange(pad_size, device=device) // (pad_size // num_groups)
    mask[:pad_size, :pad_size] = group[:, None] != group[None, :]
    return mask


def make_cdn_queries(
    targets: list[dict[str, Tensor]],
    dn_number: int,
    label_noise_ratio: float,
    box_noise_scale: float,
    num_classes: int,
    num_queries: int,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """The denoising queries of a batch (None when it has no target). Labels are replaced by a
    random class with probability ``label_noise_ratio / 2``; box corners move by up to
    ``box_noise_scale`` of the half size (positives) or between 1 and 2 times that (negatives),
    clamped to the image. ``generator``: where the noise comes from (None: torch's default one,
    which checkpoints save and restore)."""
    counts = [len(t["labels"]) for t in targets]
    max_targets = max(counts, default=0)
    if max_targets == 0:
        return None
    device = targets[0]["boxes"].device
    groups = num_dn_groups(dn_number, max_targets)
    copies = 2 * groups  # a positive and a negative copy per group
    labels = torch.cat([t["labels"] for t in targets]).repeat(copies)
    boxes = torch.cat([t["boxes"] for t in targets]).repeat(copies, 1)
    n = sum(counts)

    if label_noise_ratio > 0:
        p = torch.rand(labels.shape, generator=generator, device=device)
        chosen = torch.nonzero(p < label_noise_ratio * 0.5).view(-1)
        new_label = torch.randint(0, num_classes, chosen.shape, generator=generator, device=device)
        labels = labels.scatter(0, chosen, new_label.to(labels.dtype))
    if box_noise_scale > 0:
        xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
        half = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:] / 2], 1)
        sign = torch.randint(0, 2, boxes.shape, generator=generator, device=device).float() * 2.0 - 1.0
        part = torch.rand(boxes.shape, generator=generator, device=device)
        negative = (torch.arange(len(boxes), device=device) // n) % 2 == 1
        part = (part + negative[:, None].float()) * sign
        xyxy = (xyxy + part * half * box_noise_scale).clamp(min=0.0, max=1.0)
        boxes = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)

    pad_size = max_targets * copies
    image = torch.cat([torch.full((c,), i, device=device) for i, c in enumerate(counts)]).repeat(copies)
    slot = torch.cat([torch.arange(c, device=device) for c in counts])
    slot = torch.cat([slot + max_targets * i for i in range(copies)])
    dn_labels = torch.full((len(targets), pad_size), -1, dtype=torch.long, device=device)
    dn_boxes = torch.zeros(len(targets), pad_size, 4, device=device)
    dn_labels[image, slot] = labels.long()
    dn_boxes[image, slot] = boxes
    return DenoisingQueries(dn_labels, dn_boxes, dn_attn_mask(pad_size, groups, num_queries, device), groups)


def dn_match_indices(targets: list[dict[str, Tensor]], pad_size: int, num_groups: int) -> list[tuple[Tensor, Tensor]]:
    """Per image, ``(query index, target index)`` of every positive denoising query: target ``j``'s
    copy in group ``g`` is slot ``g * P / num_groups + j``."""
    group_size = pad_size // num_groups
    indices = []
    for t in targets:
        device = t["labels"].device
        tgt = torch.arange(len(t["labels"]), device=device).repeat(num_groups)
        offset = (torch.arange(num_groups, device=device) * group_size).repeat_interleave(len(t["labels"]))
        indices.append((offset + tgt, tgt))
    return indices
