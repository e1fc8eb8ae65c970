"""The backbone on each image at its own size (``--backbone_per_image``), for ``models.backbone``
and ``models.timm_backbone`` alike.

``features_per_image(body, images, mask)`` runs a backbone body on the images of a padded batch
one size at a time and pads its feature maps to a batch again, with exact masks; ``image_sizes``
reads the sizes from the padding mask. Not in the official code, which convolves the padded batch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from util.misc import NestedTensor


def image_sizes(mask: Tensor) -> list[tuple[int, int]]:
    """``(height, width)`` of each image of a padded batch, from its padding mask ``[B, H, W]``
    (True on padding; each image at the top left, as ``nested_tensor_from_tensor_list`` puts it)."""
    valid = ~mask
    heights = valid[:, :, 0].sum(1).tolist()
    widths = valid[:, 0, :].sum(1).tolist()
    return list(zip(heights, widths, strict=True))


def features_per_image(
    body: Callable[[Tensor], Mapping[str, Tensor]], images: Tensor, mask: Tensor
) -> dict[str, NestedTensor]:
    """``body`` run on each image at its own size (images of one size together), its feature maps
    zero-padded to a batch again: ``images [B, 3, H, W]``, ``mask [B, H, W]`` -> per level
    ``[B, C, h, w]`` and a mask that is False exactly on the features computed from an image.

    The official backbone runs the padded batch: no convolution is spared on the padding, and the
    features near an image's bottom and right borders depend on the other images of the batch
    (the padding's activations after the first layer are not zero). Here they do not, which
    changes those border features: an option, for CPUs and large images, where a convolution
    costs about the same per pixel at any batch size; small images lose more to the smaller
    convolutions than they save (figures in docs/results.md). Needs BatchNorm that does not learn
    from the batch (the official frozen one)."""
    sizes = image_sizes(mask)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    per_image: dict[str, list[Tensor]] = {}
    for (h, w), indices in groups.items():
        for name, x in body(images[indices, :, :h, :w]).items():  # copies the crops only
            level = per_image.setdefault(name, [images.new_empty(0)] * len(sizes))
            for j, i in enumerate(indices):
                level[i] = x[j]
    out: dict[str, NestedTensor] = OrderedDict()
    for name, level in per_image.items():
        height, width = max(x.shape[-2] for x in level), max(x.shape[-1] for x in level)
        padded = torch.stack([F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2])) for x in level])
        level_mask = torch.ones(len(level), height, width, dtype=torch.bool, device=mask.device)
        for i, x in enumerate(level):
            level_mask[i, : x.shape[-2], : x.shape[-1]] = False
        out[name] = NestedTensor(padded, level_mask)
    return out
