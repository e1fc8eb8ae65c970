"""Joint image/target augmentations for detection: crop, flip, resize, pad, normalize, and ``Compose``.

Every transform maps ``(image, target)`` to ``(image, target)``: ``image`` a PIL image or a
``[C, H, W]`` tensor, ``target`` ``None`` or a dict of ``boxes [N, 4]`` (absolute xyxy pixels until
``Normalize`` makes them normalised cxcywh), ``labels``, ``area``, ``iscrowd``, ``masks [N, H, W]``,
``image_id``, ``orig_size`` / ``size`` = ``(h, w)``. The semantics (geometry, rounding, boxes dropped
after a crop) are the official ``datasets/transforms.py``'s; beyond it, tensor images and
``target=None`` are accepted and ``RandomSizeCrop`` takes images smaller than its ``min_size``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from torch import Tensor

from util.box_ops import box_xyxy_to_cxcywh
from util.misc import interpolate

Image = PIL.Image.Image | Tensor
Target = dict[str, Any]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Per-instance fields that are filtered together when a crop removes objects.
_INSTANCE_FIELDS = ("labels", "area", "iscrowd")


def image_size(image: Image) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or of a ``[..., H, W]`` tensor."""
    if isinstance(image, Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    w, h = image.size
    return int(w), int(h)


def crop(image: Image, target: Target | None, region: tuple[int, int, int, int]) -> tuple[Image, Target | None]:
    """Crop ``region = (top, left, height, width)``.

    Boxes are shifted, clipped to the crop and their ``area`` recomputed (as the official code,
    ``area`` becomes the clipped box area); ``masks [N, H, W]`` are sliced. Instances whose clipped
    box has zero width or height (or, without boxes, whose mask is empty) are removed from
    ``labels``, ``area``, ``iscrowd``, ``boxes`` and ``masks``. ``size`` becomes ``(height, width)``.
    """
    cropped = F.crop(image, *region)
    if target is None:
        return cropped, None
    target = target.copy()
    top, left, h, w = region
    target["size"] = torch.tensor([h, w])
    fields = [f for f in _INSTANCE_FIELDS if f in target]

    if "boxes" in target:
        boxes = target["boxes"]
        limit = torch.as_tensor([w, h], dtype=torch.float32)
        shifted = boxes - torch.as_tensor([left, top, left, top], dtype=boxes.dtype)
        shifted = torch.min(shifted.reshape(-1, 2, 2), limit).clamp(min=0)  # [N, 2 corners, (x, y)]
        target["boxes"] = shifted.reshape(-1, 4)
        target["area"] = (shifted[:, 1, :] - shifted[:, 0, :]).prod(dim=1)
        if "area" not in fields:
            fields.append("area")
        fields.append("boxes")

    if "masks" in target:
        target["masks"] = target["masks"][:, top : top + h, left : left + w]
        fields.append("masks")

    if "boxes" in target or "masks" in target:
        if "boxes" in target:
            corners = target["boxes"].reshape(-1, 2, 2)
            keep = torch.all(corners[:, 1, :] > corners[:, 0, :], dim=1)
        else:
            keep = target["masks"].flatten(1).ne(0).any(1)
        for field in fields:
            target[field] = target[field][keep]
    return cropped, target


def hflip(image: Image, target: Target | None) -> tuple[Image, Target | None]:
    """Mirror left-right; ``x0' = w - x1``, ``x1' = w - x0``; masks are flipped on the last axis."""
    flipped = F.hflip(image)
    if target is None:
        return flipped, None
    w, _ = image_size(image)
    target = target.copy()
    if "boxes" in target:
        boxes = target["boxes"]
        target["boxes"] = boxes[:, [2, 1, 0, 3]] * torch.as_tensor([-1, 1, -1, 1], dtype=boxes.dtype) + torch.as_tensor(
            [w, 0, w, 0], dtype=boxes.dtype
        )
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return flipped, target


def get_size_with_aspect_ratio(image_size: tuple[int, int], size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output ``(h, w)`` so that the shorter side is ``size`` and the longer at most ``max_size``.

    ``image_size`` is ``(w, h)``. The rounding is the official one: when the longer side would
    exceed ``max_size``, ``size = int(round(max_size * short / long))``; the longer output side is
    then truncated with ``int(size * long / short)``; an image whose shorter side already equals
    ``size`` keeps its size.
    """
    w, h = image_size
    if max_size is not None:
        short, long = float(min(w, h)), float(max(w, h))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def get_size(image_size: tuple[int, int], size: int | Sequence[int], max_size: int | None = None) -> tuple[int, int]:
    """Output ``(h, w)``: an int ``size`` is the shorter side; a pair is taken as ``(w, h)`` (official)."""
    if isinstance(size, (list, tuple)):
        w_out, h_out = size
        return int(h_out), int(w_out)
    return get_size_with_aspect_ratio(image_size, int(size), max_size)


def resize(
    image: Image, target: Target | None, size: int | Sequence[int], max_size: int | None = None
) -> tuple[Image, Target | None]:
    """Resize so the shorter side is ``size`` (longer side capped at ``max_size``).

    Boxes are scaled by the per-axis ratios, ``area`` by their product; ``masks`` are resized with
    nearest neighbour and thresholded at 0.5 (they become bool); ``size`` is set to the new ``(h, w)``.
    Resizing to the image's own size returns the image as it is (no resampling, no box scaling by
    1.0): the same values without the cost, for small data sets trained at their native size.
    """
    out_h, out_w = get_size(image_size(image), size, max_size)
    if (out_w, out_h) == image_size(image):  # nothing to resample (the official code copies the image)
        if target is None:
            return image, None
        target = target.copy()
        target["size"] = torch.tensor([out_h, out_w])
        if "masks" in target:  # bool, as after a real resize
            target["masks"] = target["masks"] > 0.5
        return image, target
    if isinstance(image, Tensor):
        rescaled = F.resize(image, [out_h, out_w], antialias=True)
    else:
        rescaled = F.resize(image, [out_h, out_w])
    if target is None:
        return rescaled, None

    new_w, new_h = image_size(rescaled)
    old_w, old_h = image_size(image)
    ratio_w, ratio_h = float(new_w) / float(old_w), float(new_h) / float(old_h)
    target = target.copy()
    if "boxes" in target:
        boxes = target["boxes"]
        target["boxes"] = boxes * torch.as_tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype)
    if "area" in target:
        target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor([out_h, out_w])
    if "masks" in target:
        masks = target["masks"]
        if masks.shape[0] == 0:
            target["masks"] = torch.zeros((0, out_h, out_w), dtype=torch.bool, device=masks.device)
        else:
            target["masks"] = interpolate(masks[:, None].float(), (out_h, out_w), mode="nearest")[:, 0] > 0.5
    return rescaled, target


def pad(image: Image, target: Target | None, padding: tuple[int, int]) -> tuple[Image, Target | None]:
    """Pad ``padding = (pad_x, pad_y)`` zero pixels on the right and bottom; boxes are unchanged.
    Masks of any dtype, bool included, are padded by copying (``torch.nn.functional.pad`` is avoided)."""
    pad_x, pad_y = int(padding[0]), int(padding[1])
    padded = F.pad(image, [0, 0, pad_x, pad_y])
    if target is None:
        return padded, None
    target = target.copy()
    w, h = image_size(padded)
    target["size"] = torch.tensor([h, w])
    if "masks" in target:
        masks = target["masks"]
        n, mh, mw = masks.shape
        out = torch.zeros((n, mh + pad_y, mw + pad_x), dtype=masks.dtype, device=masks.device)
        out[:, :mh, :mw] = masks
        target["masks"] = out
    return padded, target


class RandomCrop:
    """Crop a random ``size = (h, w)`` region (``torchvision.transforms.RandomCrop.get_params``)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, img: Image, target: Target | None) -> tuple[Image, Target | None]:
        region = T.RandomCrop.get_params(img, self.size)
        return crop(img, target, region)


class RandomSizeCrop:
    """Crop a random region with sides drawn uniformly in ``[min_size, min(image side, max_size)]``.

    If the image side is below ``min_size`` the crop side is the whole image side (the official
    code raises ``ValueError`` from ``random.randint`` in that case); large images behave exactly as
    officially.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, img: Image, target: Target | None) -> tuple[Image, Target | None]:
        img_w, img_h = image_size(img)
        hi_w, hi_h = min(img_w, self.max_size), min(img_h, self.max_size)
        w = random.randint(min(self.min_size, hi_w), hi_w)
        h = random.randint(min(self.min_size, hi_h), hi_h)
        region = T.RandomCrop.get_params(img, [h, w])
        return crop(img, target, region)


class CenterCrop:
    """Crop the central ``size = (h, w)`` region (offsets rounded as officially)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, img: Image, target: Target | None) -> tuple[Image, Target | None]:
        img_w, img_h = image_size(img)
        crop_h, crop_w = self.size
        top = int(round((img_h - crop_h) / 2.0))
        left = int(round((img_w - crop_w) / 2.0))
        return crop(img, target, (top, left, crop_h, crop_w))


class RandomHorizontalFlip:
    """``hflip`` with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image, target: Target | None) -> tuple[Image, Target | None]:
        if random.random() < self.p:
            return hflip(img, target)
        return img, target


class RandomResize:
    """``resize`` to a shorter side drawn uniformly from ``sizes``, longer side capped at ``max_size``."""

    def __init__(self, sizes: Sequence[int | Sequence[int]], max_size: int | None = None) -> None:
        if not isinstance(sizes, (list, tuple)) or len(sizes) == 0:
            raise ValueError(f"RandomResize expects a non-empty list of sizes, got {sizes!r}")
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, img: Image, target: Target | None = None) -> tuple[Image, Target | None]:
        size = random.choice(self.sizes)
        return resize(img, target, size, self.max_size)


class RandomPad:
    """Pad right and bottom by independent random amounts in ``[0, max_pad]``."""

    def __init__(self, max_pad: int) -> None:
        self.max_pad = max_pad

    def __call__(self, img: Image, target: Target | None) -> tuple[Image, Target | None]:
        pad_x = random.randint(0, self.max_pad)
        pad_y = random.randint(0, self.max_pad)
        return pad(img, target, (pad_x, pad_y))


class RandomSelect:
    """Apply ``transforms1`` with probability ``p``, otherwise ``transforms2``."""

    def __init__(self, transforms1: Callable[..., Any], transforms2: Callable[..., Any], p: float = 0.5) -> None:
        self.transforms1 = transforms1
        self.transforms2 = transforms2
        self.p = p

    def __call__(self, img: Image, target: Target | None) -> tuple[Image, Target | None]:
        if random.random() < self.p:
            return self.transforms1(img, target)
        return self.transforms2(img, target)


class ToTensor:
    """PIL image -> ``[C, H, W]`` float tensor in ``[0, 1]``; uint8 tensors are rescaled, float ones kept."""

    def __call__(self, img: Image, target: Target | None) -> tuple[Tensor, Target | None]:
        if isinstance(img, Tensor):
            return (img.float() / 255.0 if img.dtype == torch.uint8 else img), target
        return F.to_tensor(img), target


class RandomErasing:
    """``torchvision.transforms.RandomErasing`` on the image tensor; the target is untouched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.eraser = T.RandomErasing(*args, **kwargs)

    def __call__(self, img: Tensor, target: Target | None) -> tuple[Tensor, Target | None]:
        return self.eraser(img), target


class Normalize:
    """Normalize a ``[C, H, W]`` tensor with ``mean``/``std`` (default: ImageNet's); boxes become
    normalized ``(cx, cy, w, h)``.

    After this transform ``target["boxes"]`` is ``[N, 4]`` in ``[0, 1]`` relative to the (unpadded)
    image size, the format DETR's matcher and losses expect.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: Tensor, target: Target | None = None) -> tuple[Tensor, Target | None]:
        image = F.normalize(image, mean=self.mean, std=self.std)
        if target is None:
            return image, None
        target = target.copy()
        h, w = image.shape[-2:]
        if "boxes" in target:
            boxes = box_xyxy_to_cxcywh(target["boxes"])
            target["boxes"] = boxes / torch.tensor([w, h, w, h], dtype=boxes.dtype)
        return image, target


class Compose:
    """Apply ``(image, target)`` transforms in sequence."""

    def __init__(self, transforms: Sequence[Callable[..., Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image, target: Target | None) -> tuple[Image, Target | None]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        lines = [f"{self.__class__.__name__}("] + [f"    {t}" for t in self.transforms] + [")"]
        return "\n".join(lines)
