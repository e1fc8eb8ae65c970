"""COCO panoptic PNG encoding: segment ids <-> RGB colours (``rgb2id``, ``id2rgb``), and ``read_panoptic_png``.

A pixel's segment id is ``R + 256 G + 256^2 B`` (0 is void), panopticapi's convention. This is the
one implementation that the data sets, the PQ evaluation, the panoptic post-processor and the tools
share (the official code and panopticapi each carry their own copy); unlike panopticapi's, ``rgb2id``
ignores an alpha channel and ``id2rgb`` refuses ids that do not fit in 24 bits instead of wrapping them.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import PIL.Image

MAX_SEGMENT_ID = 256**3 - 1


def rgb2id(color: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` (C >= 3, uint8 colours; channels after the third are ignored) -> ``[H, W]``
    int64 segment ids ``R + 256 G + 256^2 B``. A ``[H, W]`` array is taken as ids already."""
    c = np.asarray(color)
    if c.ndim == 2:
        return c.astype(np.int64)
    if c.ndim != 3 or c.shape[-1] < 3:
        raise ValueError(f"rgb2id expects [H, W, 3] colours or [H, W] ids, got shape {c.shape}")
    c = c[..., :3].astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """``[H, W]`` segment ids in ``[0, 256^3)`` -> ``[H, W, 3]`` uint8 colours (inverse of ``rgb2id``)."""
    ids = np.asarray(id_map).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"id2rgb: segment ids must lie in [0, {MAX_SEGMENT_ID}], got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_panoptic_png(png: str | os.PathLike[str] | bytes | PIL.Image.Image) -> np.ndarray:
    """A panoptic PNG (path, encoded bytes or opened image; RGB, RGBA or palette) -> ``[H, W]`` int64 ids."""
    image: Any = png
    if isinstance(png, bytes):
        image = PIL.Image.open(io.BytesIO(png))
    elif not isinstance(png, PIL.Image.Image):
        with PIL.Image.open(png) as opened:
            return rgb2id(np.asarray(opened.convert("RGB")))
    return rgb2id(np.asarray(image.convert("RGB")))


__all__ = ["MAX_SEGMENT_ID", "id2rgb", "read_panoptic_png", "rgb2id"]
