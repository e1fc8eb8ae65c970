"""Data sets for DETR: the builder table, the typed data configuration, and what ``main.py`` needs
to know about a data set (its pycocotools ground truth, class names, largest category id).

Mirrors the official DETR ``datasets/__init__.py`` (``build_dataset``, ``get_coco_api_from_dataset``).
Differences: ``build_dataset(image_set, args)`` turns the flags into a ``DataConfig``
(``data_config_from_args``, the one place where ``args`` is read) and calls the builder named by
``dataset_file`` in the ``DATASET_BUILDERS`` dict (``coco``, ``coco_panoptic``, ``voc``, ``yolo``; each
builder takes ``(image_set, cfg)``); an unknown ``dataset_file`` raises ``ValueError`` listing the
known ones. Every builder checks its split before returning it (``datasets.check``) and raises one
``DatasetError`` listing every problem found.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from datasets.config import DataConfig, data_config_from_args
from datasets.problems import DatasetError, Problem, raise_if_problems

if TYPE_CHECKING:
    import torch.utils.data
    from pycocotools.coco import COCO


def _builder(module: str) -> Callable[[str, DataConfig], torch.utils.data.Dataset]:
    """``datasets.<module>.build``, imported on first use: importing the package (as ``python -m
    datasets.coco_eval`` does) loads neither torch nor torchvision."""

    def build(image_set: str, cfg: DataConfig) -> torch.utils.data.Dataset:
        return importlib.import_module(f"datasets.{module}").build(image_set, cfg)

    build.__qualname__ = f"{module}.build"
    return build


# dataset_file -> builder(image_set, cfg)
DATASET_BUILDERS: dict[str, Callable[[str, DataConfig], torch.utils.data.Dataset]] = {
    name: _builder(name) for name in ("coco", "coco_panoptic", "voc", "yolo")
}


def build_dataset(image_set: str, args: Any) -> torch.utils.data.Dataset:
    """Build split ``image_set`` (``"train"`` / ``"val"``) of the data set named by ``args.dataset_file``
    (``args``: ``main.py``'s flags, or a ``DataConfig``)."""
    cfg = args if isinstance(args, DataConfig) else data_config_from_args(args)
    if cfg.dataset_file not in DATASET_BUILDERS:
        raise ValueError(f"unknown dataset_file {cfg.dataset_file!r}; known: {sorted(DATASET_BUILDERS)}")
    return DATASET_BUILDERS[cfg.dataset_file](image_set, cfg)


def build_datasets(args: Any, splits: Sequence[str] = ("train", "val")) -> dict[str, torch.utils.data.Dataset]:
    """Build every split of ``splits`` (``build_dataset``), checking all of them before failing: the
    problems of every split are raised together as one ``DatasetError``."""
    built, problems, messages = {}, [], []
    for split in splits:
        try:
            built[split] = build_dataset(split, args)
        except DatasetError as e:
            problems += e.problems or [Problem(split, str(e))]
            messages.append(str(e))
    if len(messages) == 1:
        raise DatasetError(messages[0], problems)
    if messages:
        raise DatasetError("\n".join(messages), problems)
    return built


def _unwrap(dataset: Any) -> Any:
    import torch.utils.data

    from datasets.sampling import SeededDataset

    while isinstance(dataset, (torch.utils.data.Subset, SeededDataset)):
        dataset = dataset.dataset
    return dataset


def get_coco_api_from_dataset(dataset: torch.utils.data.Dataset) -> COCO | None:
    """The ``pycocotools`` ``COCO`` object behind ``dataset`` (through any ``Subset`` wrappers), else None."""
    return getattr(_unwrap(dataset), "coco", None)


def small_images_warning(dataset: torch.utils.data.Dataset, train_scales: Sequence[int], max_size: int) -> str | None:
    """One line when training would upscale the images of ``dataset`` (sizes from its ground truth)
    at least twice, even at the smallest of ``train_scales`` (the longer side capped at
    ``max_size``): their sizes, the upscaling, and the flags that fit them. ``None`` otherwise."""
    coco_api = get_coco_api_from_dataset(dataset)
    sizes = [(img.get("width"), img.get("height")) for img in (coco_api.imgs.values() if coco_api else [])]
    sizes = [(min(w, h), max(w, h)) for w, h in sizes if _positive(w) and _positive(h)]
    if not sizes:
        return None
    sizes.sort()
    short, long = sizes[len(sizes) // 2]  # the median image

    def upscale(scale: int) -> float:
        return min(scale / short, max_size / long)

    if upscale(min(train_scales)) < 2:
        return None
    longest = round(max(s[1] for s in sizes))
    fit = sorted({max(1, round(short * f)) for f in (0.6, 0.8, 1.0)})
    return (
        f"the training images are much smaller than --train_scales {min(train_scales)}..{max(train_scales)} "
        f"(--max_size {max_size}): shorter sides {round(sizes[0][0])}-{round(sizes[-1][0])} px (median "
        f"{round(short)}), upscaled {upscale(min(train_scales)):.1f}-{upscale(max(train_scales)):.1f}x, which "
        f"costs time and adds no detail; for images this size pass --train_scales {' '.join(map(str, fit))} "
        f"--val_size {round(short)} --max_size {longest}"
    )


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def dataset_id2label(dataset: torch.utils.data.Dataset) -> dict[int, str]:
    """``{category id: class name}`` of a data set built here (for checkpoints and predictions)."""
    return dict(getattr(_unwrap(dataset), "id2label", {}))


def max_category_id(dataset: torch.utils.data.Dataset) -> int:
    """The largest category id of a data set's categories and annotations (-1 when it has none)."""
    return int(getattr(_unwrap(dataset), "max_category_id", -1))


def max_objects_per_image(dataset: torch.utils.data.Dataset) -> int:
    """The most objects (non-crowd annotations; panoptic: segments) any image of a data set has."""
    return int(getattr(_unwrap(dataset), "stats", {}).get("max_objects_per_image", 0))


def warn_objects_beyond_queries(num_queries: int, splits: Mapping[str, torch.utils.data.Dataset | None]) -> None:
    """Warn when an image of a split has more objects than the model has queries (each query
    predicts one object: the rest can never be matched, and count as missed)."""
    for split, ds in splits.items():
        most = max_objects_per_image(ds) if ds is not None else 0
        if most > num_queries:
            print(
                f"warning: {split}: an image has {most} objects, more than --num_queries {num_queries}: "
                f"at most {num_queries} of them can be predicted (raise --num_queries)",
                flush=True,
            )


def check_num_classes(num_classes: int, source: str, splits: Mapping[str, torch.utils.data.Dataset | None]) -> None:
    """Stop before training when a split (``{"train": ds, "val": ds}``; ``None`` entries skipped) has a
    category id >= ``num_classes`` (which came from ``source``): one ``DatasetError`` naming each."""
    problems = []
    for name, ds in splits.items():
        if ds is None:
            continue
        top = max_category_id(ds)
        if top >= num_classes:
            where = getattr(_unwrap(ds), "ann_file", name)
            what = (
                f"has category id {top} in the {name} split, but num_classes is {num_classes} (from {source}); "
                f"pass --num_classes {top + 1} or more"
            )
            problems.append(Problem(str(where), what))
    raise_if_problems(problems, "num_classes")


__all__ = [
    "DATASET_BUILDERS",
    "DataConfig",
    "DatasetError",
    "build_dataset",
    "build_datasets",
    "check_num_classes",
    "data_config_from_args",
    "dataset_id2label",
    "get_coco_api_from_dataset",
    "max_category_id",
    "max_objects_per_image",
    "warn_objects_beyond_queries",
]


def resolve_num_classes(num_classes: int | None, source: str, splits: dict[str, Any]) -> tuple[int, str]:
    """``num_classes`` (which came from ``source``), else the training split's (without one: the
    validation split's) max category id + 1; then checked against every split (``{name: data
    set}``), so that a category only the validation set uses stops the run before training.
    Returns ``(num_classes, where it came from)``; raises ``DatasetError``."""
    if num_classes is None:
        name = "train" if "train" in splits else "val"
        num_classes = max_category_id(splits[name]) + 1
        source = f"max category id of {getattr(splits[name], 'ann_file', name)}"
    check_num_classes(num_classes, source, splits)
    return num_classes, source
