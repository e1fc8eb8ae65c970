"""Broken and unusual data for the data set tests: image files with faults (truncated, corrupt,
EXIF-rotated, 16-bit), messy COCO files, and tiny VOC / YOLO folders written from scratch."""

from __future__ import annotations

import io
import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

VOC_XML = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>{name}.jpg</filename>
\t<size>
\t\t<width>{width}</width>
\t\t<height>{height}</height>
\t\t<depth>3</depth>
\t</size>
{objects}</annotation>
"""
VOC_OBJECT = """\t<object>
\t\t<name>{cls}</name>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox>
\t\t\t<xmin>{box[0]}</xmin>
\t\t\t<ymin>{box[1]}</ymin>
\t\t\t<xmax>{box[2]}</xmax>
\t\t\t<ymax>{box[3]}</ymax>
\t\t</bndbox>
\t</object>
"""


def noise_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save_jpeg(path: Path, array: np.ndarray, **kw: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path, format="JPEG", quality=95, **kw)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corrupt_png_data(path: Path) -> Path:
    """Scramble the bytes inside the PNG's first IDAT chunk (lengths kept: the header check passes,
    decoding fails)."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    for k in range(start + 2, start + length):
        data[k] = (data[k] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    return path


def cut_png_pixels(path: Path, keep: float = 1 / 3) -> Path:
    """Cut a PNG's first IDAT chunk short, its length and CRC rewritten: the chunk chain still
    reaches IEND (the header check passes), the pixel data ends early (decoding fails)."""
    data = path.read_bytes()
    start = data.index(b"IDAT")
    length = int.from_bytes(data[start - 4 : start], "big")
    kept = data[start + 4 : start + 4 + length][: int(length * keep)]
    chunk = len(kept).to_bytes(4, "big") + b"IDAT" + kept + zlib.crc32(b"IDAT" + kept).to_bytes(4, "big")
    path.write_bytes(data[: start - 4] + chunk + data[start + 8 + length :])
    return path


def exif_rotated_jpeg(path: Path, displayed: np.ndarray, orientation: int = 6) -> Path:
    """A JPEG whose stored pixels must be turned by EXIF ``orientation`` (6: 90 degrees clockwise)
    to show ``displayed`` ([H, W, 3])."""
    assert orientation == 6
    stored = PIL.Image.fromarray(displayed).transpose(PIL.Image.Transpose.ROTATE_90)
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, format="JPEG", quality=95, exif=exif)
    return path


def png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit grayscale PNG with ``values`` ([H, W] uint16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(values.astype(np.uint16)).save(path, format="PNG")
    return path


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def copy_coco(src: Path, dst: Path) -> Path:
    """A writable copy of a synthetic COCO folder."""
    shutil.copytree(src, dst)
    return dst


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def make_voc(root: Path, year: str, split: str, images: dict[str, list[tuple[str, tuple[int, ...], int]]]) -> Path:
    """A ``VOCdevkit/VOC<year>`` with 64x48 JPEGs and one XML per image: ``{name: [(class, (xmin,
    ymin, xmax, ymax), difficult), ...]}``, listed in ``ImageSets/Main/<split>.txt``."""
    folder = root / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for k, (name, objects) in enumerate(images.items()):
        save_jpeg(folder / "JPEGImages" / f"{name}.jpg", noise_image(64, 48, seed=k))
        xml_objects = "".join(VOC_OBJECT.format(cls=c, box=b, difficult=d) for c, b, d in objects)
        (folder / "Annotations" / f"{name}.xml").write_text(
            VOC_XML.format(name=name, width=64, height=48, objects=xml_objects)
        )
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in images))
    return root


def make_yolo(root: Path, names: Any, splits: dict[str, dict[str, list[str] | None]], yaml_extra: str = "") -> Path:
    """A YOLO folder: ``root/data.yaml`` and, per split, ``images/<split>/<name>.png`` (64x48) with
    ``labels/<split>/<name>.txt`` holding the given lines (``None``: no label file)."""
    for split, images in splits.items():
        for k, (name, lines) in enumerate(images.items()):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(noise_image(64, 48, seed=k)).save(root / "images" / split / f"{name}.png")
            if lines is not None:
                (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                (root / "labels" / split / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    keys = "".join(f"{split}: images/{split}\n" for split in splits)
    (root / "data.yaml").write_text(f"{yaml_extra}{keys}names: {json.dumps(names)}\n")
    return root
