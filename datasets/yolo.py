"""YOLO-format detection data (the layout Ultralytics and Roboflow export), read into the COCO pipeline.

``--dataset_file yolo --yolo_path DIR`` (``DIR/data.yaml``, or the yaml file itself):
``read_yolo_split`` reads the yaml, the images of a split and their ``labels/*.txt`` into one
in-memory COCO dict, and ``build`` passes it through ``datasets.coco.build_detection`` (the same
checks, targets, transforms and COCO evaluation as COCO data; ``id2label`` holds the names). PyYAML
is an optional dependency, imported only here. Not in the official code, which reads only COCO.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.coco import as_config, build_detection
from datasets.config import DataConfig
from datasets.images import ImageCache, ImageInfo
from datasets.problems import DatasetError, Problem
from datasets.split_check import probe_images

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")
DEFAULT_SPLITS = {"train": "train", "val": "val"}
# Coordinates this close outside [0, 1] are float rounding (1.0000001 from exporters): clipped, counted.
ROUNDING = 1e-6


def load_data_yaml(path: Path) -> dict[str, Any]:
    """Parse ``data.yaml`` (``DatasetError`` naming the file and line when it cannot be used)."""
    try:
        import yaml
    except ImportError as e:
        raise DatasetError("dataset_file 'yolo' reads data.yaml with PyYAML: pip install pyyaml") from e
    if not path.is_file():
        raise DatasetError(f"YOLO data file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DatasetError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with 'names' and 'train'/'val', got {type(data).__name__}")
    return data


def class_names(data: dict[str, Any], path: Path) -> dict[int, str]:
    """``{class index: name}`` from ``names`` (a list or an ``{index: name}`` mapping), checked against ``nc``."""
    names = data.get("names")
    if isinstance(names, list):
        out = {i: str(n) for i, n in enumerate(names)}
    elif isinstance(names, dict) and all(isinstance(k, int) and k >= 0 for k in names):
        out = {int(k): str(v) for k, v in sorted(names.items())}
    else:
        raise DatasetError(f"{path}: 'names' must be a list of class names or a {{index: name}} mapping, got {names!r}")
    if not out:
        raise DatasetError(f"{path}: 'names' is empty")
    if "nc" in data and data["nc"] != len(out):
        raise DatasetError(f"{path}: nc is {data['nc']} but 'names' has {len(out)} entries")
    return out


def _root(data: dict[str, Any], yaml_path: Path) -> Path:
    root = Path(str(data["path"])) if data.get("path") else Path(".")
    return root if root.is_absolute() else (yaml_path.parent / root)


def split_images(entry: Any, root: Path, yaml_path: Path, key: str) -> tuple[list[Path], list[Problem]]:
    """Image paths of a split entry (folder, ``.txt`` list, or a list of those), sorted."""
    images: list[Path] = []
    problems: list[Problem] = []
    for item in entry if isinstance(entry, list) else [entry]:
        path = Path(os.path.abspath(root / str(item)))
        if not path.exists() and str(item).startswith("../"):
            path = Path(os.path.abspath(root / str(item)[3:]))
        if path.is_dir():
            images += [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif path.is_file() and path.suffix == ".txt":
            for line in path.read_text().splitlines():
                if line.strip():
                    listed = Path(line.strip())
                    images.append(Path(os.path.abspath(path.parent / listed)))
        else:
            problems.append(Problem(str(yaml_path), f"'{key}: {item}' points to {path}, which does not exist"))
    return sorted(set(images)), problems


def label_path(image: Path) -> Path:
    """``.../images/.../a.jpg`` -> ``.../labels/.../a.txt`` (the last ``images`` folder replaced)."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_file(
    path: Path, names: dict[int, str]
) -> tuple[list[tuple[int, list[float], int]], list[Problem], list[int]]:
    """``[(class, [x0, y0, x1, y1] normalised, line number)]``, the problems of one label file (a
    line with a wrong number of fields or non-numbers, a class index beyond ``names``, a coordinate
    outside ``[0, 1]`` by more than ``ROUNDING``), each with its line, and the numbers of the lines
    whose coordinates were clipped to ``[0, 1]`` (within ``ROUNDING`` of it: exporters' float rounding)."""
    objects, problems, clipped = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            what = f"has {len(fields)} fields: expected 'class cx cy w h' (5) or 'class x1 y1 x2 y2 x3 y3 ...'"
            problems.append(Problem(str(path), what, line=number))
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.append(Problem(str(path), f"has a field that is not a number: {line.strip()!r}", line=number))
            continue
        cls = values[0]
        if not cls.is_integer() or int(cls) not in names:
            what = f"has class index {fields[0]}, which is not in the {len(names)} names of data.yaml"
            problems.append(Problem(str(path), what, line=number))
            continue
        coords = values[1:]
        if not all(math.isfinite(c) and -ROUNDING <= c <= 1.0 + ROUNDING for c in coords):
            problems.append(Problem(str(path), f"has a coordinate outside [0, 1]: {line.strip()!r}", line=number))
            continue
        if not all(0.0 <= c <= 1.0 for c in coords):
            coords = [min(max(c, 0.0), 1.0) for c in coords]
            clipped.append(number)
        if len(coords) == 4:
            cx, cy, w, h = coords
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        else:
            xs, ys = coords[0::2], coords[1::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        objects.append((int(cls), box, number))
    return objects, problems, clipped


@dataclass
class YoloSplit:
    """One split read into the COCO pipeline's inputs: ``data`` (COCO dict), ``root`` (the folder its
    ``file_name``s are relative to), ``problems`` and log ``notes`` of the reading, ``infos`` (image
    path -> probe) and the ``--cache_mode`` ``cache``."""

    data: dict[str, Any]
    root: Path
    problems: list[Problem]
    notes: list[str]
    infos: dict[str, ImageInfo | None]
    cache: ImageCache | None = None


def read_yolo_split(yaml_file: Path, split_key: str, cfg: DataConfig | None = None) -> YoloSplit:
    """Read split ``split_key`` of the YOLO data set described by ``yaml_file``::

        path: .                  # optional dataset root; default: the yaml's folder
        train: images/train      # a folder (searched recursively), a .txt list of images, or a list of those
        val: images/val
        test: images/test        # optional; --val_split test evaluates on it
        nc: 3                    # optional; must equal the number of names
        names: [cat, dog, bird]  # or {0: cat, 1: dog, 2: bird}

    Split entries are relative to ``path`` (itself relative to the yaml's folder); a missing
    ``../x`` entry is also tried as ``x``, as Ultralytics does (Roboflow writes ``../train/images``).
    Each image's labels are in ``label_path(image)``, one object per line: ``class cx cy w h``,
    normalised to ``[0, 1]`` by the displayed image size (EXIF orientation applied, as Ultralytics
    does); segmentation lines ``class x1 y1 x2 y2 ...`` (three points or more) are read as the box
    around the polygon; an image without a label file, or with an empty one, has no objects. The
    COCO dict has absolute ``[x, y, w, h]`` boxes, image ids 1..N in sorted path order, category id
    = class index and ``name`` from ``names``.

    Image sizes are needed for the boxes: headers are probed (``cfg.check_images``, at least
    ``header``, so even with ``--check_images none``), from the in-memory files with ``cfg.cache_mode``."""
    cfg = cfg or DataConfig()
    data = load_data_yaml(yaml_file)
    names = class_names(data, yaml_file)
    if split_key not in data or data[split_key] in (None, ""):
        raise DatasetError(f"{yaml_file}: no '{split_key}' entry (keys: {sorted(data)})")
    paths, problems = split_images(data[split_key], _root(data, yaml_file), yaml_file, split_key)
    names_of = [str(p) for p in paths]
    cache = ImageCache(names_of, cfg.rank, cfg.world_size) if cfg.cache_mode and paths else None
    probe_cfg = dataclasses.replace(cfg, check_images="header") if cfg.check_images == "none" else cfg
    infos = dict(zip(names_of, probe_images(names_of, probe_cfg, cache, label=f"data: {split_key}: ")))
    root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else yaml_file.parent
    images, annotations, unlabelled, clipped = [], [], 0, []
    for image_id, image in enumerate(paths, start=1):
        entry: dict[str, Any] = {"id": image_id, "file_name": os.path.relpath(image, root)}
        info = infos.get(str(image))
        if info is not None and info.error is None:
            entry["width"], entry["height"] = info.width, info.height
        images.append(entry)
        labels = label_path(image)
        if not labels.is_file():
            unlabelled += 1
            continue
        objects, label_problems, clipped_lines = parse_label_file(labels, names)
        problems += label_problems
        clipped += [f"{labels}:{number}" for number in clipped_lines]
        if "width" not in entry:  # unreadable image: reported by the image check
            continue
        w, h = entry["width"], entry["height"]
        for cls, (x0, y0, x1, y1), number in objects:
            bbox = [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                    "label_line": f"{labels}:{number}",
                }
            )
    notes = [f"{unlabelled} image(s) without a label file: no objects"] if unlabelled else []
    if clipped:
        notes.append(
            f"{len(clipped)} label line(s) with a coordinate within {ROUNDING:g} outside [0, 1] (float rounding): "
            f"clipped to [0, 1] (first: {clipped[0]})"
        )
    if cache is not None:
        notes.append(cache.describe())
    categories = [{"id": i, "name": n} for i, n in names.items()]
    coco_dict = {"images": images, "annotations": annotations, "categories": categories}
    return YoloSplit(coco_dict, root, problems, notes, infos, cache)


def build(image_set: str, cfg: DataConfig | Any) -> Any:
    """The checked ``"train"`` / ``"val"`` split of a YOLO data set (``cfg``: ``DataConfig`` or ``args``)."""
    cfg = as_config(cfg)
    key = cfg.split_name(image_set, DEFAULT_SPLITS)
    if not cfg.yolo_path:
        raise DatasetError("dataset_file 'yolo' needs --yolo_path (a folder with data.yaml, or the yaml file)")
    yaml_file = Path(cfg.yolo_path)
    if yaml_file.is_dir():
        yaml_file = yaml_file / "data.yaml"
    split = read_yolo_split(yaml_file, key, cfg)
    return build_detection(
        split.data,
        split.root,
        f"{yaml_file} ({key})",
        image_set,
        cfg,
        problems=split.problems,
        notes=split.notes,
        infos=split.infos,
        cache=split.cache,
    )


__all__ = [
    "IMAGE_SUFFIXES",
    "ROUNDING",
    "YoloSplit",
    "build",
    "class_names",
    "label_path",
    "load_data_yaml",
    "parse_label_file",
    "read_yolo_split",
]
