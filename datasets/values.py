"""Annotation values checked where they are read, before anything reaches pycocotools' C code.

Each ``*_problem`` function returns what is wrong with one value (a predicate such as ``"'width' is
'abc', expected a number"``) or ``None``; the readers of ``datasets/`` (COCO, panoptic, VOC) put it
in a ``Problem`` naming the file and the image / annotation. Numbers must be numbers (not strings,
not booleans), finite and in a plausible range: a coordinate at most ``PLAUSIBLE_FACTOR`` times the
image size away from it. Polygon and RLE areas are computed here in numpy on checked values
(pycocotools allocates without bound for a coordinate of 1e30 and writes past its buffer for RLE
counts that do not add up to the image size). Not in the official code, which trusts every value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# A coordinate further than this many image sizes from the image is a broken value, not a box.
PLAUSIBLE_FACTOR = 100
# The largest image side accepted in an annotation file (larger sizes are unit mix-ups).
MAX_IMAGE_SIDE = 1 << 17
# An RLE mask may be stored for another size than its image's, up to this many times its pixels.
RLE_AREA_FACTOR = 16
# Used as the image size when it is not known yet (read from the image file later).
_UNKNOWN_SIDE = 10_000


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_number(value: Any) -> bool:
    """A JSON number (int or float, not a bool), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number_problem(
    value: Any, field: str, *, integer: bool = False, low: float | None = None, high: float | None = None
) -> str | None:
    """What is wrong with ``value`` as the number ``field`` (``None`` when it is fine): a string, a
    bool, NaN, infinite, not whole when ``integer``, outside ``[low, high]``."""
    kind = "an integer" if integer else "a number"
    if value is None:
        return f"'{field}' is missing or null, expected {kind}"
    if isinstance(value, str):
        return f"'{field}' is the string {_describe(value)}, expected {kind}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"'{field}' is {_describe(value)} ({type(value).__name__}), expected {kind}"
    if not math.isfinite(value):
        return f"'{field}' is {value}, expected a finite number"
    if integer and value != int(value):
        return f"'{field}' is {value}, expected {kind}"
    if low is not None and value < low or high is not None and value > high:
        bounds = (
            f"[{low:g}, {high:g}]"
            if low is not None and high is not None
            else f">= {low:g}"
            if low is not None
            else f"<= {high:g}"
        )
        return f"'{field}' is {value:g}, outside the plausible range {bounds}"
    return None


def name_problem(value: Any, field: str) -> str | None:
    """A file name: a non-empty string."""
    if isinstance(value, str) and value:
        return None
    return f"'{field}' is {_describe(value)}, expected a file name"


def side_problem(value: Any, field: str) -> str | None:
    """An image ``width`` / ``height``: a whole number of pixels in ``[1, MAX_IMAGE_SIDE]``."""
    return number_problem(value, field, integer=True, low=1, high=MAX_IMAGE_SIDE)


def flag_problem(value: Any, field: str) -> str | None:
    """A 0/1 flag (``iscrowd``, VOC ``difficult``): the integer 0 or 1 (or a JSON bool)."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return None
    if isinstance(value, str):
        return f"'{field}' is the string {_describe(value)}, expected the number 0 or 1"
    return f"'{field}' is {_describe(value)}, expected 0 or 1"


def coordinate_range(width: Any, height: Any) -> tuple[float, float]:
    """``(low, high)`` of a plausible coordinate in an image of ``width`` x ``height`` (an unknown
    size counts as ``_UNKNOWN_SIDE``)."""
    side = max(float(v) if is_number(v) and v > 0 else _UNKNOWN_SIDE for v in (width, height))
    return -PLAUSIBLE_FACTOR * side, (PLAUSIBLE_FACTOR + 1) * side


def bbox_problem(bbox: Any, width: Any, height: Any) -> str | None:
    """A COCO ``bbox`` ``[x, y, w, h]``: 4 finite numbers, plausible for the image size."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"has an invalid bbox {_describe(bbox)} (expected 4 finite numbers x, y, w, h)"
    low, high = coordinate_range(width, height)
    for name, v in zip(("x", "y", "w", "h"), bbox):
        what = number_problem(v, name, low=low, high=high)
        if what is not None:
            return f"has an invalid bbox {_describe(list(bbox))} ({what})"
    return None


def polygon_problem(segmentation: list[Any], width: Any, height: Any) -> str | None:
    """A COCO polygon list ``[[x1, y1, x2, y2, ...], ...]``: each polygon an even number (at least 6)
    of finite numbers, each within ``coordinate_range``."""
    low, high = coordinate_range(width, height)
    for k, poly in enumerate(segmentation):
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            size = f"{len(poly)} values" if isinstance(poly, list) else _describe(poly)
            return f"has a malformed polygon {k} in 'segmentation' ({size}; expected x, y pairs, at least 3 points)"
        for v in poly:
            what = number_problem(v, f"segmentation polygon {k} coordinate", low=low, high=high)
            if what is not None:
                return what
    return None


def rle_counts(rle: dict[str, Any]) -> np.ndarray | None:
    """The run lengths of an RLE (``counts`` a list, or COCO's compressed string), decoded in numpy
    as pycocotools does; ``None`` when they cannot be (bad characters, a truncated value)."""
    counts = rle.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            return None
        return np.asarray(counts, dtype=np.int64)
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if not isinstance(counts, bytes):
        return None
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (c < 0).any() or (c > 63).any():
        return None
    more = (c & 0x20) != 0
    if more[-1]:
        return None
    ends = np.flatnonzero(~more)
    group = np.concatenate([[0], np.cumsum(~more)[:-1]])
    starts = np.concatenate([[0], ends[:-1] + 1])
    position = np.arange(c.size) - starts[group]
    if position.max() > 6:  # more than 35 bits: beyond any run length pycocotools stores
        return None
    values = np.zeros(len(ends), dtype=np.int64)
    np.add.at(values, group, (c & 0x1F) << (5 * position))
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[ends][negative] + 1))
    # Runs after the second are stored as differences to the run two before.
    out = values.copy()
    out[3::2] = values[1] + np.cumsum(values[3::2]) if len(values) > 3 else out[3::2]
    out[4::2] = values[2] + np.cumsum(values[4::2]) if len(values) > 4 else out[4::2]
    return out


def rle_problem(rle: dict[str, Any], width: Any = None, height: Any = None) -> str | None:
    """A COCO RLE ``{"size": [h, w], "counts": ...}``: a plausible size (at most
    ``RLE_AREA_FACTOR`` times the image's pixels: the mask is decoded at that size) and run lengths
    that are non-negative and add up to ``h * w``."""
    size = rle.get("size")
    if not isinstance(size, list) or len(size) != 2:
        return f"has an RLE 'segmentation' whose 'size' is {_describe(size)}, expected [height, width]"
    for name, v in zip(("height", "width"), size):
        what = side_problem(v, f"segmentation size {name}")
        if what is not None:
            return f"has an RLE {what}"
    known = all(is_number(v) and v > 0 for v in (width, height))
    if size[0] * size[1] > (RLE_AREA_FACTOR * width * height if known else _UNKNOWN_SIDE**2):
        image = f"its {width}x{height} image" if known else "an image"
        return f"has an RLE 'segmentation' of size {size[1]}x{size[0]} (width x height), implausible for {image}"
    counts = rle_counts(rle)
    if counts is None:
        return "has an RLE 'segmentation' whose 'counts' cannot be decoded"
    if (counts < 0).any() or counts.sum() != size[0] * size[1]:
        return f"has an RLE 'segmentation' whose runs do not cover its {size[0]}x{size[1]} size"
    return None


def segmentation_problem(segmentation: Any, width: Any, height: Any) -> str | None:
    """A COCO ``segmentation``: a polygon list (``polygon_problem``) or an RLE (``rle_problem``)."""
    if isinstance(segmentation, list):
        return polygon_problem(segmentation, width, height)
    if isinstance(segmentation, dict):
        return rle_problem(segmentation, width, height)
    return f"has a 'segmentation' of type {type(segmentation).__name__}, expected polygons or an RLE"


def polygon_area(segmentation: list[list[float]]) -> float:
    """The area of checked polygons (shoelace formula; overlapping polygons counted twice)."""
    total = 0.0
    for poly in segmentation:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        total += 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return total


def segmentation_area(segmentation: Any, width: Any, height: Any) -> float | None:
    """The area of a COCO segmentation, or ``None`` when it is malformed (reported by the check)."""
    if segmentation_problem(segmentation, width, height) is not None or not segmentation:
        return None
    if isinstance(segmentation, list):
        return polygon_area(segmentation)
    counts = rle_counts(segmentation)
    return float(counts[1::2].sum()) if counts is not None else None


__all__ = [
    "MAX_IMAGE_SIDE",
    "PLAUSIBLE_FACTOR",
    "RLE_AREA_FACTOR",
    "bbox_problem",
    "coordinate_range",
    "flag_problem",
    "is_number",
    "name_problem",
    "number_problem",
    "polygon_area",
    "polygon_problem",
    "rle_counts",
    "rle_problem",
    "segmentation_area",
    "segmentation_problem",
    "side_problem",
]
