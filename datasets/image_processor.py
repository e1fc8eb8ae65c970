"""transformers' ``DetrImageProcessor`` and ``DeformableDetrImageProcessor``, implemented with this project's code.

For users of transformers: the same constructor arguments and defaults, the same call
(``processor(images=..., annotations=..., masks_path=..., return_tensors="pt")``), the same outputs
(``pixel_values``, ``pixel_mask``, ``labels``) and numbers as transformers 5, its ``pad`` and
``preprocessor_config.json`` (``save_pretrained`` / ``from_pretrained`` both ways), and the
post-processors of ``models.hf_postprocess`` as methods. Not in the official code (its pipeline is
``datasets/transforms.py``); unlike transformers, crowd annotations are dropped before their masks are made.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as tvF

from datasets.coco import convert_coco_poly_to_mask
from datasets.coco_panoptic import rgb2id
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from models import hf_postprocess
from models.hf_postprocess import AttributeDict
from util.box_ops import box_xyxy_to_cxcywh, masks_to_boxes

FORMATS = ("coco_detection", "coco_panoptic")
PROCESSOR_CONFIG = "preprocessor_config.json"  # transformers' file name
# Arguments of transformers 4 that the constructor still takes (and hub config files still hold).
_LEGACY_ARGUMENTS = {"max_size", "pad_and_return_pixel_mask", "image_processor_type", "feature_extractor_type",
                     "processor_class"}  # fmt: skip
# PIL resampling codes (what transformers' configs store) -> torchvision, as transformers maps them.
_RESAMPLE = {
    0: tvF.InterpolationMode.NEAREST_EXACT,
    1: tvF.InterpolationMode.LANCZOS,
    2: tvF.InterpolationMode.BILINEAR,
    3: tvF.InterpolationMode.BICUBIC,
    4: tvF.InterpolationMode.BOX,
    5: tvF.InterpolationMode.HAMMING,
}
_SIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"longest_edge"},
              {"max_height", "max_width"})  # fmt: skip


def _per_channel(value: float | Sequence[float] | None, default: Sequence[float]) -> float | list[float]:
    """``image_mean`` / ``image_std``: a list per channel, a single number kept, None the default."""
    if value is None:
        return list(default)
    return list(value) if isinstance(value, Sequence) else value


def _hub_cached(name: str, cache: Mapping[str, Any]) -> Path | None:
    """The hub cache's ``preprocessor_config.json`` of the model ``name`` (``org/model``), if there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(name, PROCESSOR_CONFIG, **cache)
    except ValueError:  # not a valid repository name
        return None
    return Path(found) if isinstance(found, str) else None


class BatchFeature(AttributeDict):
    """transformers' ``BatchFeature``: a dict with attribute access and ``.to(device)``."""

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        def move(v: Any) -> Any:
            if isinstance(v, Tensor):
                return v.to(*args, **kwargs)
            if isinstance(v, list):
                return [move(x) for x in v]
            return v.to(*args, **kwargs) if isinstance(v, BatchFeature) else v

        return BatchFeature({k: move(v) for k, v in self.items()})


def _as_type(value: Any, return_tensors: str | None) -> Any:
    """A value as ``return_tensors`` asks: ``"pt"`` tensors, ``"np"`` arrays, None unchanged."""
    if return_tensors in ("pt", "np") and not isinstance(value, Tensor | np.ndarray):
        value = torch.tensor(value)
    if return_tensors == "np" and isinstance(value, Tensor):
        value = value.numpy()
    return value


def _batch_feature(data: Mapping[str, Any], return_tensors: str | None) -> BatchFeature:
    if return_tensors not in (None, "pt", "np"):
        raise ValueError(f"return_tensors: '{return_tensors}', choose from 'pt', 'np' or None")
    return BatchFeature({k: _as_type(v, return_tensors) for k, v in data.items()})


def size_dict(size: Any, max_size: int | None = None) -> dict[str, int]:
    """transformers' size forms -> a dict: an int is the shortest edge (with ``max_size`` as the
    longest), a pair is (height, width), a dict must have one of the known key sets."""
    if isinstance(size, int):
        return {"shortest_edge": size, **({"longest_edge": max_size} if max_size is not None else {})}
    if isinstance(size, list | tuple):
        return {"height": int(size[0]), "width": int(size[1])}
    if isinstance(size, Mapping):
        out = {k: v for k, v in size.items() if v is not None}
        if set(out) in _SIZE_KEYS:
            return dict(out)
    raise ValueError(f"size: {size!r}; use an int or a dict with keys in {[sorted(k) for k in _SIZE_KEYS]}")


def resized_hw(image_hw: tuple[int, int], size: Mapping[str, int]) -> tuple[int, int]:
    """The (height, width) an image of ``image_hw`` is resized to, as transformers computes it."""
    height, width = image_hw
    if "shortest_edge" in size and "longest_edge" in size:
        short, longest = size["shortest_edge"], size["longest_edge"]
        raw = None
        lo, hi = float(min(height, width)), float(max(height, width))
        if hi / lo * short > longest:
            raw = longest * lo / hi
            short = int(round(raw))
        if (height <= width and height == short) or (width <= height and width == short):
            return height, width
        if width < height:
            return int((raw if raw is not None else short) * height / width), short
        return short, int((raw if raw is not None else short) * width / height)
    if "max_height" in size and "max_width" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    raise ValueError(f"size must have 'height' and 'width', 'shortest_edge' and 'longest_edge', or 'max_height' and "
                     f"'max_width'; got {size}")  # fmt: skip


def _channel_first(image: Tensor, index: int, data_format: str | None) -> Tensor:
    if image.ndim == 2:
        return image[None]
    if image.ndim != 3:
        raise ValueError(
            f"images[{index}]: expected a [H, W], [C, H, W] or [H, W, C] image, got shape {tuple(image.shape)}"
        )
    if data_format in ("channels_first", "channels_last"):
        return image if data_format == "channels_first" else image.permute(2, 0, 1)
    if data_format is not None:
        raise ValueError(f"input_data_format: '{data_format}', choose 'channels_first' or 'channels_last'")
    if image.shape[0] in (1, 3, 4):  # as transformers: channels first when ambiguous
        return image
    if image.shape[-1] in (1, 3, 4):
        return image.permute(2, 0, 1)
    raise ValueError(
        f"images[{index}]: cannot tell the channel axis of shape {tuple(image.shape)} (1, 3 or 4 channels)"
    )


def to_tensor_images(
    images: Any, do_convert_rgb: bool | None = None, input_data_format: str | None = None
) -> list[Tensor]:
    """PIL images, numpy arrays (HWC or CHW) or tensors, one or a list or a 4-D batch -> ``[C, H, W]``
    tensors in their own dtype (uint8 for PIL)."""
    if isinstance(images, np.ndarray | Tensor) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, list | tuple):
        images = [images]
    out = []
    for i, image in enumerate(images):
        if isinstance(image, PIL.Image.Image):
            if do_convert_rgb and image.mode != "RGB":  # transparency over white, as transformers
                rgba = image.convert("RGBA")
                image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255)), rgba)
                image = image.convert("RGB")
            image = torch.from_numpy(np.array(image))
            out.append(_channel_first(image, i, "channels_last" if image.ndim == 3 else None))
            continue
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        if not isinstance(image, Tensor):
            raise TypeError(f"images[{i}]: expected a PIL image, numpy array or tensor, got {type(image).__name__}")
        image = _channel_first(image, i, input_data_format)
        if do_convert_rgb and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        out.append(image.contiguous())
    return out


def _field(annotation: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in annotation:
        raise ValueError(f"{where}: field '{key}' is missing")
    return annotation[key]


def check_annotations(annotations: Sequence[Any], format: str) -> None:  # noqa: A002 (transformers' name)
    """Each annotation must fit ``format``: ``{"image_id", "annotations": [...]}`` for
    coco_detection, ``{"image_id", "file_name", "segments_info": [...]}`` for coco_panoptic.
    A ``ValueError`` starting as transformers' does ("Invalid COCO detection annotations", "Invalid
    COCO panoptic annotations"), then naming the annotation and the field."""
    need = ("image_id", "annotations") if format == "coco_detection" else ("image_id", "file_name", "segments_info")
    listed = need[-1]
    other = "coco_panoptic" if format == "coco_detection" else "coco_detection"
    invalid = f"Invalid COCO {format.split('_')[1]} annotations"
    for i, ann in enumerate(annotations):
        where = f"{invalid}: annotations[{i}]"
        if not isinstance(ann, Mapping):
            raise ValueError(f"{where} is a {type(ann).__name__}, not a dict")
        missing = [k for k in need if k not in ann]
        if missing:
            hint = " (it looks like " + other + ": pass format='" + other + "')" if (
                ("segments_info" in ann) != (format == "coco_panoptic")) else ""  # fmt: skip
            raise ValueError(f"{where}: format='{format}' needs field(s) {missing}; got {sorted(ann)}{hint}")
        items = ann[listed]
        if not isinstance(items, list | tuple) or not all(isinstance(x, Mapping) for x in items):
            raise ValueError(f"{where}: field '{listed}' must be a list of dicts")


def detection_target(
    annotation: Mapping[str, Any], hw: tuple[int, int], index: int, with_masks: bool
) -> dict[str, Any]:
    """A COCO detection annotation -> DETR target at the original size: xyxy ``boxes`` clipped to
    the image, crowd and empty boxes dropped, ``masks`` from the polygons when asked."""
    height, width = hw
    objs = []
    for j, obj in enumerate(annotation["annotations"]):
        where = f"annotations[{index}]['annotations'][{j}]"
        if obj.get("iscrowd", 0) == 0:
            bbox = _field(obj, "bbox", where)
            if not isinstance(bbox, list | tuple) or len(bbox) != 4:
                raise ValueError(f"{where}: field 'bbox' must be [x, y, width, height], got {bbox!r}")
            objs.append((obj, _field(obj, "category_id", where), _field(obj, "area", where), bbox))
    classes = torch.as_tensor([o[1] for o in objs], dtype=torch.int64)
    area = torch.as_tensor([o[2] for o in objs], dtype=torch.float32)
    boxes = torch.as_tensor([o[3] for o in objs], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(min=0, max=width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(min=0, max=height)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    target: dict[str, Any] = {
        "image_id": torch.as_tensor([annotation["image_id"]], dtype=torch.int64),
        "class_labels": classes[keep],
        "boxes": boxes[keep],
        "area": area[keep],
        "iscrowd": torch.zeros_like(classes)[keep],
        "orig_size": torch.as_tensor([height, width], dtype=torch.int64),
    }
    if with_masks:
        segmentations = [_field(o[0], "segmentation", f"annotations[{index}]") for o in objs]
        target["masks"] = convert_coco_poly_to_mask(segmentations, height, width).bool()[keep]
    return target


def panoptic_target(
    annotation: Mapping[str, Any], hw: tuple[int, int], index: int, masks_path: str | os.PathLike[str] | None,
    with_masks: bool,
) -> dict[str, Any]:  # fmt: skip
    """A COCO panoptic annotation and its PNG -> DETR target: one mask per segment, its tight
    box, class, crowd flag and area."""
    height, width = hw
    if masks_path is None:
        raise ValueError("format='coco_panoptic' needs masks_path, the folder of the panoptic PNGs")
    image_id = annotation.get("image_id", annotation.get("id"))
    target: dict[str, Any] = {
        "image_id": torch.as_tensor([image_id], dtype=torch.int64),
        "size": torch.as_tensor([height, width], dtype=torch.int64),
        "orig_size": torch.as_tensor([height, width], dtype=torch.int64),
    }
    path = Path(masks_path) / annotation["file_name"]
    if not path.is_file():
        raise FileNotFoundError(
            f"annotations[{index}]: field 'file_name': {path} does not exist (masks_path={masks_path})"
        )
    with PIL.Image.open(path) as png:
        ids = torch.from_numpy(rgb2id(np.asarray(png.convert("RGB"))))
    segments = annotation["segments_info"]
    where = f"annotations[{index}]['segments_info']"
    seg_ids = torch.as_tensor([_field(s, "id", where) for s in segments], dtype=torch.int64)
    masks = ids == seg_ids[:, None, None]
    if with_masks:  # at the PNG's size: resized once, with the image (see _resize_target)
        target["masks"] = masks
    # An image resized before the processor keeps its PNG: boxes and areas to the image's scale.
    rh, rw = height / ids.shape[0], width / ids.shape[1]
    target["boxes"] = masks_to_boxes(masks) * torch.tensor([rw, rh, rw, rh])
    target["class_labels"] = torch.as_tensor([_field(s, "category_id", where) for s in segments], dtype=torch.int64)
    target["iscrowd"] = torch.as_tensor([s.get("iscrowd", 0) for s in segments], dtype=torch.int64)
    area = torch.as_tensor([_field(s, "area", where) for s in segments], dtype=torch.float32)
    target["area"] = area * (rh * rw) if (rh, rw) != (1, 1) else area
    return target


def _resize_masks(masks: Tensor, size: Sequence[int]) -> Tensor:
    """``[N, h, w]`` boolean masks -> ``[N, *size]`` (nearest, as transformers resizes them)."""
    resized = tvF.resize(masks[:, None], list(size), interpolation=tvF.InterpolationMode.NEAREST_EXACT)
    return resized.to(torch.float32)[:, 0] > 0.5


def _resize_target(target: dict[str, Any], old: tuple[int, int], new: tuple[int, int]) -> dict[str, Any]:
    rh, rw = (n / o for n, o in zip(new, old))
    out: dict[str, Any] = {"size": new}
    for key, value in target.items():
        if key == "boxes":
            value = value * torch.as_tensor([rw, rh, rw, rh], dtype=torch.float32)
        elif key == "area":
            value = value * (rw * rh)
        elif key == "masks":
            value = _resize_masks(value, new)
        elif key == "size":
            continue
        out[key] = value
    return out


class DetrImageProcessor:
    """transformers' ``DetrImageProcessor``: constructor arguments, defaults, ``__call__``, ``pad``,
    saving and loading (``to_dict``, ``from_dict``, ``to_json_string``, ``to_json_file``,
    ``from_json_file``, ``save_pretrained``, ``from_pretrained``: the same
    ``preprocessor_config.json`` as transformers, each side reading the other's) and
    post-processing methods. ``format``: ``"coco_detection"`` or ``"coco_panoptic"``.

    ``labels`` hold normalised cxcywh ``boxes``, ``class_labels``, ``area``, ``iscrowd``,
    ``image_id``, ``orig_size``, ``size`` and, for panoptic, ``masks``. The numbers are those of
    transformers 5's ``DetrImageProcessor`` (its torchvision backend, which is what
    ``DetrImageProcessor`` is in transformers 5): resizing is torchvision's antialiased bilinear on
    uint8 tensors, normalisation fuses the 1/255 rescale into mean and std, batches are padded at the
    bottom and right to the largest image (boxes are then relative to the padded size, ``size`` is
    the padded size, as transformers does). Differences from transformers: crowd annotations are
    dropped before their masks are made (transformers makes masks for them too and misaligns or fails
    on ``masks[keep]``); keypoints are not returned; a panoptic segment absent from its PNG gets a
    zero box (transformers: a box of 1e8); a panoptic PNG of another size than its image (an image
    resized before the processor) gets its masks resized with the image as transformers does, but
    boxes and areas scaled to the image (transformers leaves the boxes in the PNG's scale); bad input
    is one clear error naming the image index, the field and the format (an annotation that does not
    match ``format`` raises transformers' ``ValueError("Invalid COCO detection annotations...")``
    at the same point, followed by what is wrong; a missing ``bbox``/``category_id``/``area``,
    panoptic without ``masks_path`` or with a missing PNG, images of different sizes with
    ``do_pad=False``). ``from_pretrained`` reads local folders and files, and hub names only from
    the hub's cache (nothing is downloaded).
    """

    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(
        self,
        format: str = "coco_detection",  # noqa: A002 (transformers' name)
        do_resize: bool = True,
        size: int | Mapping[str, int] | None = None,
        resample: int | tvF.InterpolationMode = 2,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_annotations: bool | None = None,
        do_pad: bool = True,
        pad_size: Mapping[str, int] | None = None,
        do_convert_rgb: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.format = getattr(format, "value", format)  # checked when called, where transformers checks it
        do_pad = kwargs.pop("pad_and_return_pixel_mask", do_pad)
        max_size = kwargs.pop("max_size", 1333 if size is not None else None)  # transformers' legacy argument
        for key in _LEGACY_ARGUMENTS - {"max_size", "pad_and_return_pixel_mask"}:  # hub config files
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"DetrImageProcessor: unknown argument(s) {sorted(kwargs)}")
        self.do_resize = do_resize
        self.size = size_dict(size, max_size) if size is not None else {"shortest_edge": 800, "longest_edge": 1333}
        self.resample = resample
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = _per_channel(image_mean, IMAGENET_MEAN)
        self.image_std = _per_channel(image_std, IMAGENET_STD)
        self.do_convert_annotations = do_normalize if do_convert_annotations is None else do_convert_annotations
        self.do_pad = do_pad
        self.pad_size = size_dict(pad_size) if pad_size is not None else None
        self.do_convert_rgb = do_convert_rgb

    @staticmethod
    def _check_format(format: Any) -> str:  # noqa: A002
        value = getattr(format, "value", format)
        if value not in FORMATS:
            raise ValueError(
                f"{value} is not a valid AnnotationFormat, please select one of {list(FORMATS)} (argument 'format')"
            )
        return value

    # Saving and loading as transformers' ImageProcessingMixin: the same preprocessor_config.json,
    # so that each side reads what the other writes.

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **kwargs: Any) -> Any:
        """A processor from ``to_dict``'s dict (or a ``preprocessor_config.json``'s); ``kwargs``
        override it. With ``return_unused_kwargs=True``: ``(processor, kwargs it did not take)``."""
        return_unused = kwargs.pop("return_unused_kwargs", False)
        accepted = set(inspect.signature(cls.__init__).parameters) | _LEGACY_ARGUMENTS
        unused = {k: kwargs.pop(k) for k in list(kwargs) if k not in accepted} if return_unused else {}
        processor = cls(**{**config, **kwargs})
        return (processor, unused) if return_unused else processor

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike[str]) -> Any:
        """A processor from a ``preprocessor_config.json`` file."""
        path = Path(json_file)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON ({e})") from e
        if not isinstance(config, dict):
            raise ValueError(f"{path} holds a {type(config).__name__}, not an object of processor settings")
        return cls(**config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """From a local folder's ``preprocessor_config.json`` (transformers' ``save_pretrained`` or
        ours, ``tools/convert_hf.py --to-hf``) or that file itself; ``kwargs`` as ``from_dict``.
        A hub name (``facebook/detr-resnet-50``) is read from the hub's cache when transformers has
        downloaded it there (``cache_dir``, ``revision`` as in transformers); nothing is downloaded."""
        kwargs.pop("local_files_only", None)
        cache = {k: kwargs.pop(k) for k in ("cache_dir", "revision") if k in kwargs}
        path = Path(pretrained_model_name_or_path)
        file = path / PROCESSOR_CONFIG if path.is_dir() else path
        if not file.is_file() and not path.exists():
            file = _hub_cached(str(pretrained_model_name_or_path), cache) or file
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist (from_pretrained reads local folders and the hub's cache, "
                                    "and downloads nothing)")  # fmt: skip
        processor = cls.from_json_file(file)
        return cls.from_dict(processor.to_dict(), **kwargs) if kwargs else processor

    def to_dict(self) -> dict[str, Any]:
        """The settings (those left unset omitted, as transformers omits them) and the class name."""
        out = {k: copy.deepcopy(v) for k, v in vars(self).items() if v is not None}
        if isinstance(out.get("resample"), tvF.InterpolationMode):
            out["resample"] = next(code for code, mode in _RESAMPLE.items() if mode == out["resample"])
        return {**out, "image_processor_type": type(self).__name__}

    def to_json_string(self) -> str:
        """``to_dict`` as transformers writes it: sorted keys, indent 2, a final newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike[str]) -> None:
        """``to_json_string`` written to ``json_file_path`` (complete or not at all)."""
        path = Path(json_file_path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(self.to_json_string(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> list[str]:
        """Write ``save_directory/preprocessor_config.json`` (the folder is created); returns its path.
        Pushing to the hub (``push_to_hub=True``) is not done here: refused."""
        if kwargs.pop("push_to_hub", False):
            raise ValueError(
                "save_pretrained: push_to_hub is not supported here; upload the folder with huggingface_hub"
            )
        if kwargs:
            raise TypeError(f"save_pretrained: unknown argument(s) {sorted(kwargs)}")
        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"save_pretrained: {folder} is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        self.to_json_file(folder / PROCESSOR_CONFIG)
        return [str(folder / PROCESSOR_CONFIG)]

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def _resize(self, image: Tensor, size: Mapping[str, int], resample: Any) -> Tensor:
        mode = resample if isinstance(resample, tvF.InterpolationMode) else _RESAMPLE[int(resample)]
        return tvF.resize(image, list(resized_hw(tuple(image.shape[-2:]), size)), interpolation=mode, antialias=True)

    def _rescale_and_normalize(self, image: Tensor, do_rescale: bool, factor: float, do_normalize: bool,
                               mean: Any, std: Any) -> Tensor:  # fmt: skip
        if do_normalize:
            channels = image.shape[0]
            mean, std = ([float(v)] * channels if isinstance(v, int | float) else list(v) for v in (mean, std))
            if channels != len(mean):
                raise ValueError(f"an image has {channels} channels but image_mean has {len(mean)} values; "
                                 "pass do_convert_rgb=True for grayscale or RGBA images")  # fmt: skip
            if do_rescale:  # fused as transformers does: (x - mean / factor) / (std / factor)
                mean = torch.tensor(mean) * (1.0 / factor)
                std = torch.tensor(std) * (1.0 / factor)
            return tvF.normalize(image.to(torch.float32), mean, std)
        return image * factor if do_rescale else image

    def __call__(
        self,
        images: Any,
        annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        return_segmentation_masks: bool | None = None,
        masks_path: str | os.PathLike[str] | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Resize, rescale, normalise and pad ``images`` (and their ``annotations``). Returns
        ``pixel_values [B, 3, H, W]``, ``pixel_mask [B, H, W]`` (1 = image, 0 = padding) and, with
        annotations, ``labels``: one dict per image (see the class docstring). Any constructor
        argument may be overridden for this call."""
        unknown = set(kwargs) - (set(vars(self)) | {"input_data_format", "resample"})
        if unknown:
            raise TypeError(f"DetrImageProcessor: unknown argument(s) {sorted(unknown)}")
        o = {**vars(self), **kwargs}
        fmt = self._check_format(o["format"])
        size = size_dict(o["size"]) if "size" in kwargs else self.size
        pad_size = size_dict(o["pad_size"]) if kwargs.get("pad_size") is not None else self.pad_size
        tensors = to_tensor_images(images, o["do_convert_rgb"], kwargs.get("input_data_format"))
        if isinstance(annotations, Mapping):
            annotations = [annotations]
        targets: list[dict[str, Any]] | None = None
        if annotations is not None:
            annotations = list(annotations)
            if len(annotations) != len(tensors):
                raise ValueError(
                    f"The number of images ({len(tensors)}) and annotations ({len(annotations)}) do not match."
                )
            check_annotations(annotations, fmt)
            if fmt == "coco_detection":
                with_masks = bool(return_segmentation_masks)
                targets = [detection_target(a, tuple(t.shape[-2:]), i, with_masks)
                           for i, (a, t) in enumerate(zip(annotations, tensors))]  # fmt: skip
            else:
                with_masks = True if return_segmentation_masks is None else return_segmentation_masks
                targets = [panoptic_target(a, tuple(t.shape[-2:]), i, masks_path, with_masks)
                           for i, (a, t) in enumerate(zip(annotations, tensors))]  # fmt: skip

        for i, image in enumerate(tensors):
            if o["do_resize"]:
                old = tuple(image.shape[-2:])
                image = self._resize(image, size, o["resample"])
                if targets is not None:
                    targets[i] = _resize_target(targets[i], old, tuple(image.shape[-2:]))
            masks = targets[i].get("masks") if targets is not None else None
            if masks is not None and masks.shape[-2:] != image.shape[-2:]:  # a PNG of another size, not resized
                targets[i]["masks"] = _resize_masks(masks, image.shape[-2:])
            image = self._rescale_and_normalize(image, o["do_rescale"], o["rescale_factor"], o["do_normalize"],
                                                o["image_mean"], o["image_std"])  # fmt: skip
            if o["do_convert_annotations"] and targets is not None:
                h, w = image.shape[-2:]
                boxes = box_xyxy_to_cxcywh(targets[i]["boxes"])
                targets[i]["boxes"] = boxes / torch.as_tensor([w, h, w, h], dtype=torch.float32)
            tensors[i] = image

        data: dict[str, Any] = {}
        if o["do_pad"]:
            if pad_size is not None:
                padded = (pad_size["height"], pad_size["width"])
            else:
                padded = tuple(max(t.shape[d] for t in tensors) for d in (-2, -1))
            pixel_masks = []
            for i, image in enumerate(tensors):
                h, w = image.shape[-2:]
                if h > padded[0] or w > padded[1]:
                    raise ValueError(
                        f"images[{i}] is {h}x{w} after resizing, larger than pad_size {padded[0]}x{padded[1]}"
                    )
                target = targets[i] if targets is not None else None
                tensors[i], pixel_mask, target = self.pad(image, padded, target, o["do_convert_annotations"])
                if targets is not None:
                    targets[i] = target
                pixel_masks.append(pixel_mask)
            data["pixel_mask"] = torch.stack(pixel_masks)
        elif len({tuple(t.shape) for t in tensors}) > 1:
            raise ValueError(f"images of different sizes {sorted({tuple(t.shape[-2:]) for t in tensors})} cannot be "
                             "batched without padding: pass do_pad=True")  # fmt: skip
        data["pixel_values"] = torch.stack(tensors)
        encoded = _batch_feature(data, return_tensors)
        if targets is not None:
            encoded["labels"] = [_batch_feature(t, return_tensors) for t in targets]
        return encoded

    preprocess = __call__

    def pad(
        self, image: Tensor | np.ndarray, padded_size: tuple[int, int], annotation: Any = None,
        update_bboxes: bool = True, fill: float = 0,
    ) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray, Any]:  # fmt: skip
        """transformers 5's ``pad``: an image ``[C, H, W]`` or a batch ``[B, C, H, W]`` padded at the
        bottom and right to ``padded_size`` (h, w) with ``fill``. Returns ``(image, pixel_mask
        [..., h, w] (1 = image), annotation)``; the annotation (a label dict as ``__call__`` returns,
        or a list of them) gets its masks padded and, with ``update_bboxes``, its normalised boxes
        rescaled to the padded size. numpy in, numpy out."""
        as_numpy = isinstance(image, np.ndarray)
        tensor = torch.from_numpy(image) if as_numpy else image
        h, w = tensor.shape[-2:]
        out_h, out_w = (int(x) for x in padded_size)
        if out_h < h or out_w < w:
            raise ValueError(f"pad: padded_size {(out_h, out_w)} is smaller than the image ({h}, {w})")
        if (h, w) != (out_h, out_w):
            tensor = F.pad(tensor, (0, out_w - w, 0, out_h - h), value=fill)
            if annotation is not None:
                single = isinstance(annotation, Mapping)
                padded = [self._pad_target(dict(a), (h, w), (out_h, out_w), update_bboxes)
                          for a in ([annotation] if single else annotation)]  # fmt: skip
                annotation = padded[0] if single else padded
        pixel_mask = torch.zeros((*tensor.shape[:-3], out_h, out_w), dtype=torch.int64)
        pixel_mask[..., :h, :w] = 1
        if as_numpy:
            return tensor.numpy(), pixel_mask.numpy(), annotation
        return tensor, pixel_mask, annotation

    @staticmethod
    def _pad_target(target: dict[str, Any], old: tuple[int, int], new: tuple[int, int], update_boxes: bool) -> dict:
        out: dict[str, Any] = {"size": new}
        for key, value in target.items():
            if key == "masks":
                value = F.pad(value, (0, new[1] - old[1], 0, new[0] - old[0]), value=False)
            elif key == "boxes" and update_boxes:
                value = value * torch.as_tensor([old[1] / new[1], old[0] / new[0]] * 2)
            elif key == "size":
                continue
            out[key] = value
        return out

    # Post-processing, as transformers' methods (models.hf_postprocess).
    post_process_object_detection = staticmethod(hf_postprocess.post_process_object_detection)
    post_process_semantic_segmentation = staticmethod(hf_postprocess.post_process_semantic_segmentation)
    post_process_instance_segmentation = staticmethod(hf_postprocess.post_process_instance_segmentation)
    post_process_panoptic_segmentation = staticmethod(hf_postprocess.post_process_panoptic_segmentation)


class DeformableDetrImageProcessor(DetrImageProcessor):
    """transformers' ``DeformableDetrImageProcessor``: the same pre-processing; object detection
    post-processing with sigmoid scores and a top-k over (query, class) pairs."""

    post_process_object_detection: Callable[..., list[dict[str, Tensor]]] = staticmethod(
        hf_postprocess.post_process_object_detection_sigmoid
    )


__all__ = ["BatchFeature", "DeformableDetrImageProcessor", "DetrImageProcessor"]
