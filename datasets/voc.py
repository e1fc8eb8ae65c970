"""PASCAL VOC detection data: ``VOCdevkit`` XML annotations read into the COCO-format pipeline.

``--dataset_file voc --voc_path VOCdevkit [--voc_years 2007,2012] [--train_split trainval]
[--val_split val|test] [--remove_difficult]``: ``voc_to_coco`` reads each year's split list, XML
annotations and JPEG images into one in-memory COCO dict, and ``build`` passes it through
``datasets.coco.build_detection`` (the same checks, targets, transforms and COCO-style AP), with
``datasets.voc_eval`` for the devkit's mAP. Not in the official code, which reads only COCO.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from datasets.coco import as_config, build_detection
from datasets.config import DataConfig
from datasets.problems import DatasetError, Problem
from datasets.values import MAX_IMAGE_SIDE, coordinate_range, number_problem

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
DEFAULT_SPLITS = {"train": "trainval", "val": "val"}


# --------------------------------------------------------------------------------------------
# A minimal XML tree that keeps line numbers (ElementTree does not)
# --------------------------------------------------------------------------------------------


@dataclass
class XmlNode:
    """An XML element: ``tag``, the ``line`` it starts on, its direct ``children`` and ``text``."""

    tag: str
    line: int
    children: list[XmlNode] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> XmlNode | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[XmlNode]:
        return [c for c in self.children if c.tag == tag]

    def findtext(self, tag: str) -> str | None:
        child = self.find(tag)
        return child.text.strip() if child is not None else None


class XmlError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse_xml(data: bytes) -> XmlNode:
    """Parse ``data`` into ``XmlNode``s; ``XmlError`` (with the line) when it is not well-formed."""
    parser = expat.ParserCreate()
    stack: list[XmlNode] = []
    root: list[XmlNode] = []

    def start(tag: str, _attrs: dict[str, str]) -> None:
        node = XmlNode(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def text(chars: str) -> None:
        if stack:
            stack[-1].text += chars

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise XmlError(e.lineno, f"is not well-formed XML ({expat.ErrorString(e.code)}, column {e.offset})") from e
    if not root:
        raise XmlError(1, "has no XML element")
    return root[0]


# --------------------------------------------------------------------------------------------
# VOC -> COCO dict
# --------------------------------------------------------------------------------------------


def _number(node: XmlNode | None, tag: str) -> tuple[float | None, str | None]:
    """``(value, text)`` of ``<tag>`` under ``node``: ``(None, None)`` when absent, ``(None, text)``
    when not a number (``1e400`` is ``inf`` and ``nan`` is NaN: ``datasets.values`` checks them)."""
    text = node.findtext(tag) if node is not None else None
    try:
        return (float(text), text) if text is not None else (None, None)
    except ValueError:
        return None, text


def _value_problem(value: float | None, text: str | None, tag: str, **bounds: Any) -> str | None:
    if value is None:
        return f"'<{tag}>' is {text!r}, expected a number" if text is not None else f"has no <{tag}>"
    return number_problem(value, f"<{tag}>", **bounds)


def read_voc_xml(
    path: Path, image_id: int, next_ann_id: int, class_ids: dict[str, int]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Problem]]:
    """One annotation file -> (its partial COCO image entry, its annotations, its problems).

    VOC's ``xmin..xmax`` are one-based inclusive pixel indices: the box covers ``[xmin - 1, xmax]``
    in continuous coordinates, so COCO ``bbox = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin +
    1]`` (as detectron2 converts them; ``datasets.voc_eval`` converts back to score). Difficult
    objects keep ``"difficult": 1``. The XML ``<size>`` becomes ``width``/``height`` (checked against
    the image; a missing or zero size is read from the image). Problems, each with its line: an XML
    that does not parse, an object whose class is not one of ``class_ids``, a box without numeric
    ``xmin/ymin/xmax/ymax``, a size, coordinate or ``<difficult>`` that is not a plausible number
    (``datasets.values``: NaN, ``1e400``, beyond 100x the image size, a difficult flag not 0 or 1).
    """
    try:
        root = parse_xml(path.read_bytes())
    except FileNotFoundError:
        return {}, [], [Problem(str(path), "is missing (the image is listed in the split)")]
    except XmlError as e:
        return {}, [], [Problem(str(path), str(e), line=e.line)]
    if root.tag != "annotation":
        return {}, [], [Problem(str(path), f"has root element <{root.tag}>, expected <annotation>", line=root.line)]
    image: dict[str, Any] = {}
    annotations, problems = [], []
    size = root.find("size")
    sides = {}
    for key in ("width", "height"):
        value, text = _number(size, key)
        if text is None or value == 0:
            continue  # read from the image file
        what = _value_problem(value, text, key, integer=True, low=1, high=MAX_IMAGE_SIDE)
        if what is not None:
            problems.append(Problem(str(path), what, line=(size.find(key) or size).line))  # type: ignore[union-attr]
        else:
            sides[key] = int(value)  # type: ignore[arg-type]
    if len(sides) == 2:
        image.update(sides)
    low, high = coordinate_range(sides.get("width"), sides.get("height"))
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_ids:
            what = f"is not one of the {len(class_ids)} VOC classes ({', '.join(class_ids)})"
            problems.append(Problem(str(path), what, f"object '{name}'", line=obj.line))
            continue
        box = obj.find("bndbox")
        if box is None:
            what = "has no <bndbox> with numeric xmin, ymin, xmax, ymax"
            problems.append(Problem(str(path), what, f"object '{name}'", line=obj.line))
            continue
        parsed = {k: _number(box, k) for k in ("xmin", "ymin", "xmax", "ymax")}
        bad = [_value_problem(v, t, k, low=low, high=high) for k, (v, t) in parsed.items()]
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            bad.append(f"'<difficult>' is {difficult!r}, expected 0 or 1")
        bad = [what for what in bad if what is not None]
        if bad:
            problems += [Problem(str(path), what, f"object '{name}'", line=box.line) for what in bad]
            continue
        xmin, ymin, xmax, ymax = (float(v) for v, _ in parsed.values())  # type: ignore[arg-type]
        w, h = xmax - xmin + 1, ymax - ymin + 1
        annotations.append(
            {
                "id": next_ann_id + len(annotations),
                "image_id": image_id,
                "category_id": class_ids[name],
                "bbox": [xmin - 1, ymin - 1, w, h],
                "area": max(w, 0.0) * max(h, 0.0),
                "iscrowd": 0,
                "difficult": int(difficult),
            }
        )
    return image, annotations, problems


def voc_years(root: Path, years: tuple[str, ...] | None) -> list[str]:
    """The years to read: ``years`` as given, else every ``VOC<year>`` folder under ``root``."""
    if years:
        return list(years)
    found = sorted(p.name[3:] for p in root.glob("VOC*") if p.is_dir() and p.name[3:].isdigit())
    if not found:
        raise DatasetError(f"--voc_path {root}: no VOC<year> folder (e.g. VOC2007, VOC2012) in it")
    return found


def voc_to_coco(
    root: str | os.PathLike[str],
    years: tuple[str, ...] | None,
    split: str,
    remove_difficult: bool = False,
    class_names: tuple[str, ...] = VOC_CLASSES,
) -> tuple[dict[str, Any], list[Problem], list[str]]:
    """``(COCO dict, problems, log notes)`` of split ``split`` of ``years`` under the VOCdevkit ``root``.
    ``file_name``s are relative to ``root`` (``VOC2007/JPEGImages/000001.jpg``).

    For each year: ``VOC<year>/ImageSets/Main/<split>.txt`` (image names), ``Annotations/<name>.xml``
    and ``JPEGImages/<name>.jpg``. The classes get category ids 0..``len(class_names) - 1`` in the
    devkit's order, so ``num_classes`` = max id + 1 = 20, with DETR's no-object logit added on top by
    the model (the popular VOC fork's ``num_classes=22`` came from one-based ids plus a spare; a
    model built with 22 still trains on these ids). Image ids are 1..N in the order of the split
    lists (years in the given order), the VOC name kept as ``voc_id`` (``"2012/2007_000027"``).
    ``remove_difficult`` drops difficult objects (``build`` asks it for the training split only: VOC
    evaluation needs them; in the COCO-style numbers they count as ordinary ground truth).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--voc_path {root} does not exist")
    class_ids = {name: i for i, name in enumerate(class_names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for year in voc_years(root, years):
        folder = root / f"VOC{year}"
        missing = [sub for sub in ("Annotations", "ImageSets/Main", "JPEGImages") if not (folder / sub).is_dir()]
        if missing:
            what = f"is not a VOC year folder: it has no {', '.join(m + '/' for m in missing)}"
            problems.append(Problem(str(folder), what))
            continue
        list_file = folder / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            available = sorted(p.stem for p in list_file.parent.glob("*.txt") if "_" not in p.stem)
            problems.append(Problem(str(list_file), f"is missing (split lists there: {available})"))
            continue
        names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        for name in names:
            image_id = len(images) + 1
            image, anns, xml_problems = read_voc_xml(
                folder / "Annotations" / f"{name}.xml", image_id, len(annotations) + 1, class_ids
            )
            problems += xml_problems
            images.append(
                {"id": image_id, "file_name": f"VOC{year}/JPEGImages/{name}.jpg", "voc_id": f"{year}/{name}", **image}
            )
            annotations += anns
    notes = []
    if remove_difficult:
        kept = [a for a in annotations if not a["difficult"]]
        if len(kept) < len(annotations):
            notes.append(f"--remove_difficult: dropped {len(annotations) - len(kept)} difficult object(s)")
        annotations = kept
    categories = [{"id": i, "name": n, "supercategory": "none"} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}, problems, notes


def build(image_set: str, cfg: DataConfig | Any) -> Any:
    """The checked ``"train"`` / ``"val"`` split of a VOCdevkit (``cfg``: a ``DataConfig`` or ``args``)."""
    cfg = as_config(cfg)
    split = cfg.split_name(image_set, DEFAULT_SPLITS)
    if not cfg.voc_path:
        raise DatasetError("dataset_file 'voc' needs --voc_path (the VOCdevkit folder)")
    data, problems, notes = voc_to_coco(
        cfg.voc_path, cfg.voc_years, split, remove_difficult=cfg.remove_difficult and image_set == "train"
    )
    years = "+".join(sorted({img["voc_id"].split("/")[0] for img in data["images"]})) or "?"
    source = f"{cfg.voc_path} (VOC{years} {split})"
    ds = build_detection(data, cfg.voc_path, source, image_set, cfg, problems=problems, notes=notes)
    ds.voc_use_07_metric = years == "2007" and split == "test"
    return ds


__all__ = ["VOC_CLASSES", "XmlNode", "build", "parse_xml", "read_voc_xml", "voc_to_coco"]
