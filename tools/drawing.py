"""Readable drawings for the tools: boxes with class names and scores on filled labels, fonts sized
to the picture, small images enlarged before drawing, and a colour map for attention heat maps.

Plain PIL and numpy (matplotlib, which the official notebooks use, is not needed). Nothing here
is in the official code, whose notebooks draw with matplotlib.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours (one per class id, cycling): readable on photos and on dark images.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 225, 25), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128), (255, 215, 180),
)  # fmt: skip

# Anchors of a perceptually ordered dark-to-bright colour map (close to matplotlib's "inferno").
_HEAT_ANCHORS = np.array(
    [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39),
     (252, 255, 164)], dtype=np.float64,
)  # fmt: skip


def colour(index: int) -> tuple[int, int, int]:
    """A distinct colour for class (or head, or point) ``index``."""
    if index < len(PALETTE):
        return PALETTE[index]
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font at ``size`` pixels (Pillow >= 10.1; older Pillow: its fixed bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def font_size_for(width: int, height: int) -> int:
    """Label text height for a ``width x height`` picture: 3% of its longer side, 14-40 px."""
    return int(min(40, max(14, round(0.03 * max(width, height)))))


def enlarge(image: Image.Image, min_side: int = 480) -> tuple[Image.Image, int]:
    """``image`` scaled up by an integer factor (nearest neighbour: pixels stay honest) until its
    longer side is at least ``min_side``; returns the picture and the factor (1: unchanged)."""
    factor = max(1, -(-min_side // max(image.size)))
    if factor == 1:
        return image.copy(), 1
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST), factor


def text_colour(background: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (RGB)."""
    r, g, b = background[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


Box = tuple[float, float, float, float]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    fill: Sequence[int],
    size: int,
    bounds: tuple[int, int] | None = None,
    avoid: list[Box] | None = None,
) -> Box:
    """``text`` on a filled rectangle of colour ``fill`` whose bottom-left corner is at ``xy``,
    moved inside ``bounds = (width, height)`` when it would stick out and, when ``avoid`` (the
    rectangles of labels drawn before) is given, moved down until it covers none of them (the
    new rectangle is appended). Returns the rectangle ``(x0, y0, x1, y1)``."""
    f = font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    pad = max(2, size // 6)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = xy[0], xy[1] - h

    def clamp(x: float, y: float) -> tuple[float, float]:
        if bounds is None:
            return x, y
        return min(max(0, x), max(0, bounds[0] - w)), min(max(0, y), max(0, bounds[1] - h))

    x, y = clamp(x, y)
    for _ in range(20 if avoid else 0):
        hits = [r for r in avoid if _overlaps((x, y, x + w, y + h), r)]
        if not hits:
            break
        x, y = clamp(x, max(r[3] for r in hits) + 1)
    draw.rectangle([x, y, x + w, y + h], fill=tuple(fill))
    draw.text((x + pad - left, y + pad - top), text, fill=text_colour(fill), font=f)
    rect = (x, y, x + w, y + h)
    if avoid is not None:
        avoid.append(rect)
    return rect


def draw_detections(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    names: dict[int, str],
    min_side: int = 480,
) -> Image.Image:
    """``image`` (enlarged when small) with each box ``[x0, y0, x1, y1]`` (pixels of ``image``)
    outlined in its class colour and labelled ``"<name> <score>"`` on a filled background."""
    canvas, k = enlarge(image.convert("RGB"), min_side)
    draw = ImageDraw.Draw(canvas)
    size = font_size_for(*canvas.size)
    width = max(2, size // 6)
    order = sorted(range(len(scores)), key=lambda i: float(scores[i]))  # best drawn last, on top
    for i in order:
        x0, y0, x1, y1 = (float(v) * k for v in boxes[i])
        c = colour(int(labels[i]))
        draw.rectangle([x0, y0, x1, y1], outline=c, width=width)
    placed: list[Box] = []
    for i in reversed(order):  # the best detections' labels first, where they belong
        x0, y0 = float(boxes[i][0]) * k, float(boxes[i][1]) * k
        name = names.get(int(labels[i]), f"class {int(labels[i])}")
        draw_label(draw, (x0 - width // 2, y0), f"{name} {float(scores[i]):.2f}", colour(int(labels[i])), size,
                   bounds=canvas.size, avoid=placed)  # fmt: skip
    return canvas


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in ``[0, 1]`` (any shape) -> RGB ``uint8`` of shape ``values.shape + (3,)``, dark to bright."""
    v = np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_HEAT_ANCHORS) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * _HEAT_ANCHORS[lo] + t * _HEAT_ANCHORS[lo + 1]).round().astype(np.uint8)


def heat_map(values: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A ``[h, w]`` map normalised to its own maximum, coloured and resized (bilinear) to ``size``
    ``(width, height)``."""
    v = values.astype(np.float64)
    v = v - v.min()
    v = v / v.max() if v.max() > 0 else v
    return Image.fromarray(heat_colours(v)).resize(size, Image.BILINEAR)


def titled(panel: Image.Image, title: str, size: int) -> Image.Image:
    """``panel`` with a white band above it holding ``title``."""
    f = font(size)
    band = int(size * 1.6)
    out = Image.new("RGB", (panel.width, panel.height + band), (255, 255, 255))
    out.paste(panel, (0, band))
    draw = ImageDraw.Draw(out)
    left, top, right, _ = draw.textbbox((0, 0), title, font=f)
    draw.text((max(2, (panel.width - (right - left)) // 2) - left, (band - size) // 2 - top), title, fill=(0, 0, 0),
              font=f)  # fmt: skip
    return out


def grid(panels: Sequence[Image.Image], columns: int, gap: int = 8) -> Image.Image:
    """``panels`` tiled row by row on white, ``columns`` per row, ``gap`` pixels apart."""
    if not panels:
        raise ValueError("grid: no panels")
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    w, h = max(p.width for p in panels), max(p.height for p in panels)
    out = Image.new("RGB", (columns * w + (columns + 1) * gap, rows * h + (rows + 1) * gap), (255, 255, 255))
    for i, p in enumerate(panels):
        r, c = divmod(i, columns)
        out.paste(p, (gap + c * (w + gap), gap + r * (h + gap)))
    return out
