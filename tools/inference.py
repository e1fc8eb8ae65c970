"""What the after-training tools (``predict``, ``visualize``, ``visualize_attention``, ``export``) share.

A detector from a checkpoint or a ``hubconf`` entry with its class names (``load_detector``,
``add_model_arguments``), the input images (files, folders, glob patterns) read and preprocessed
exactly as ``main.py --eval`` reads them (``read_image``, ``eval_transform``), and output files
written atomically. Unlike the official notebooks' recipe (``Image.open`` + ``T.Resize(800)``), the
EXIF orientation is applied and the checkpoint's own ``--val_size``/``--max_size`` are used.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

from datasets.coco import transforms_from_args
from datasets.coco_names import COCO_NUM_CLASSES, COCO_PANOPTIC_NAMES
from tools.arguments import add_model_arguments
from util.checkpoint import CheckpointError, default_file_mode
from util.misc import NestedTensor, nested_tensor_from_tensor_list

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class UnreadableImageError(ValueError):
    """An input image that cannot be opened or decoded; the message names the file."""


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------


def load_from_arguments(args: argparse.Namespace, **overrides: Any) -> Any:
    """``load_detector`` for the flags of ``add_model_arguments`` (``overrides``: more flags)."""
    if args.pretrained and not args.hub:
        raise ValueError("--pretrained goes with --hub")
    overrides.update({k: getattr(args, k) for k in ("val_size", "max_size") if getattr(args, k) is not None})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_detector(args.checkpoint, args.hub, args.pretrained, device, overrides)


# Errors the tools report in one line (``error: ...``, exit status 1) instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, FileNotFoundError, OSError, ValueError)


def run_command(
    function: Callable[[argparse.Namespace], Any],
    args: argparse.Namespace,
    more_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """``function(args)``; the errors of ``USER_ERRORS`` and ``more_errors`` become
    ``SystemExit("error: ...")``."""
    try:
        function(args)
    except USER_ERRORS + more_errors as e:
        raise SystemExit(f"error: {e}") from e
    return 0


def hub_entries() -> dict[str, Callable[..., Any]]:
    """The model entry points of ``hubconf`` (functions taking ``pretrained``), by name."""
    import hubconf

    names = getattr(hubconf, "__all__", dir(hubconf))
    entries = {}
    for name in names:
        fn = getattr(hubconf, name, None)
        if inspect.isfunction(fn) and "pretrained" in inspect.signature(fn).parameters:
            entries[name] = fn
    return entries


def core_model(model: nn.Module) -> nn.Module:
    """The detector inside a segmentation wrapper (``DETRsegm.detr``), else ``model``."""
    return getattr(model, "detr", model)


def is_deformable(model: nn.Module) -> bool:
    """Deformable DETR or DINO: sigmoid class scores, no no-object logit."""
    from models.deformable_detr import DeformableDETR
    from models.dino import DINO

    return isinstance(core_model(model), (DeformableDETR, DINO))


def load_detector(
    checkpoint: str | None = None,
    hub: str | None = None,
    pretrained: bool = False,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
) -> Any:
    """A ``models.loading.LoadedModel`` (model in eval mode, post-processors, settings, class names)
    from ``checkpoint`` (any checkpoint ``models.loading.build_model_from_checkpoint`` reads)
    or from the ``hubconf`` entry ``hub`` (random weights unless ``pretrained``). ``overrides``
    (flag -> value, e.g. ``val_size``) win over the checkpoint's flags. Raises ``CheckpointError``
    naming the file, or ``ValueError`` for an unknown hub entry."""
    from models.loading import LoadedModel, build_model_from_checkpoint
    from util import config

    if (checkpoint is None) == (hub is None):
        raise ValueError("pass exactly one of checkpoint or hub")
    if checkpoint is not None:
        return build_model_from_checkpoint(checkpoint, overrides=overrides, device=device)
    entries = hub_entries()
    if hub not in entries:
        raise ValueError(f"--hub: unknown entry '{hub}'; hubconf has {', '.join(sorted(entries))}")
    model = entries[hub](pretrained=pretrained)
    model = model[0] if isinstance(model, tuple) else model
    args = config.default_args(**(overrides or {}))
    args.model = "deformable_detr" if is_deformable(model) else "detr"
    args.masks = hasattr(model, "mask_head")
    args.num_classes = num_classes_of(model)
    args.device = device
    args = config.resolve(args)
    postprocessors = hub_postprocessors(model)
    args.panoptic_is_thing_map = getattr(postprocessors.get("panoptic"), "is_thing_map", None)
    source = f"hub:{hub}" + (" (pretrained)" if pretrained else " (random weights)")
    return LoadedModel(model.to(device).eval(), postprocessors, args, {}, source)


def num_classes_of(model: nn.Module) -> int:
    """The ``num_classes`` flag of a built model (DETR's class head has one more, no-object, logit)."""
    core = core_model(model)
    head = core.class_embed[0] if isinstance(core.class_embed, nn.ModuleList) else core.class_embed
    return head.out_features - (0 if is_deformable(model) else 1)


def hub_postprocessors(model: nn.Module) -> dict[str, nn.Module]:
    """Post-processors of a hub model: boxes, and for a COCO panoptic model the panoptic PNGs
    (category ids <= 90 are things, as in the official hub entries)."""
    if is_deformable(model):
        from models.deformable_detr import PostProcess as DeformablePostProcess

        return {"bbox": DeformablePostProcess()}
    from models.detr import PostProcess

    post: dict[str, nn.Module] = {"bbox": PostProcess()}
    if hasattr(model, "mask_head") and num_classes_of(model) == COCO_NUM_CLASSES["panoptic"]:
        from models.segmentation import PostProcessPanoptic

        post["panoptic"] = PostProcessPanoptic({i: i <= 90 for i in range(COCO_NUM_CLASSES["panoptic"])})
    return post


def class_names(loaded: Any) -> dict[int, str]:
    """Category id -> name: the checkpoint's ``id2label``; for a model without names (official
    checkpoints, hub models) with the class count of the COCO models (91 or 250), the COCO names;
    else empty (ids are shown as ``class <id>``)."""
    if loaded.id2label:
        return dict(loaded.id2label)
    if getattr(loaded.args, "num_classes", None) in COCO_NUM_CLASSES.values():
        return dict(COCO_PANOPTIC_NAMES)
    return {}


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def collect_images(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """The image files named by ``inputs`` (files, folders, glob patterns such as ``photos/*.jpg``
    or ``data/**/*.png``), in order, without duplicates. A folder contributes its files with an
    image suffix (not recursively); a file named explicitly is taken whatever its suffix. Returns
    the files and notes on what was left out (counted). Raises ``FileNotFoundError`` for an input
    that does not exist or a pattern that matches nothing."""
    files: list[Path] = []
    notes = []
    for item in inputs:
        if glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"input pattern '{item}' matches no file")
            files += [p for p in matches if p.is_file()]
        elif Path(item).is_dir():
            entries = sorted(p for p in Path(item).iterdir() if p.is_file())
            images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
            other = len(entries) - len(images)
            if other:
                notes.append(f"{item}: ignored {other} file(s) without an image suffix")
            if not images:
                notes.append(f"{item}: no image files")
            files += images
        elif Path(item).is_file():
            files.append(Path(item))
        else:
            raise FileNotFoundError(f"input '{item}' does not exist")
    seen: set[Path] = set()
    unique = []
    for p in files:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, notes


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """An RGB image as a viewer shows it (EXIF orientation applied), fully decoded. Raises
    ``UnreadableImageError`` naming the file when it cannot be opened or decoded."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnreadableImageError(f"{path}: cannot read image ({reason})") from e


def eval_transform(args: argparse.Namespace) -> Callable[[Image.Image], Tensor]:
    """The evaluation preprocessing of the model's flags (``val_size``, ``max_size``; official
    800/1333 when unset): resize, to tensor, ImageNet normalisation. ``PIL image -> [3, H, W]``."""
    transform = transforms_from_args("val", args)

    def apply(image: Image.Image) -> Tensor:
        return transform(image, None)[0]

    return apply


def batch_images(images: list[Image.Image], transform: Callable[[Image.Image], Tensor]) -> tuple[NestedTensor, Tensor]:
    """Preprocess and pad ``images`` into a ``NestedTensor [B, 3, H, W]`` (+ padding mask), and the
    processed sizes ``[B, 2]`` (h, w before padding)."""
    tensors = [transform(img) for img in images]
    sizes = torch.tensor([t.shape[-2:] for t in tensors])
    return nested_tensor_from_tensor_list(tensors), sizes


def original_sizes(images: list[Image.Image]) -> Tensor:
    """``[B, 2]`` (h, w) of the images as read."""
    return torch.tensor([[img.height, img.width] for img in images])


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[Any], None]) -> Path:
    """Write ``data`` (bytes, text, or a function writing to a binary file object) to ``path``
    through a temporary file in the same folder and a rename: ``path`` is complete or absent."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """``image`` as a PNG at ``path``, atomically."""
    return atomic_write(path, lambda f: image.save(f, format="PNG", optimize=True))


def prepare_output_folder(folder: str | os.PathLike[str]) -> bool:
    """Create ``folder`` (parents too) and check that a file can be written in it. Returns whether
    it was created here (so that a run writing nothing can remove it again). Raises
    ``PermissionError``/``OSError`` with a message naming the folder."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"output folder {folder} cannot be written ({e.strerror or e})") from e
    return created


def refuse_overwriting_inputs(
    inputs: list[Path], outputs: list[Path] = (), folder: str | os.PathLike[str] | None = None
) -> None:
    """Raise ``ValueError`` when an output would replace an input: one of ``outputs`` is an input
    file, or ``folder`` (a tool's output folder, whose files are named after the inputs) holds
    inputs, whose drawings would replace or mix with them."""
    resolved = {p.resolve(): p for p in inputs}
    if folder is not None:
        inside = [str(p) for r, p in resolved.items() if r.parent == Path(folder).resolve()]
        if inside:
            raise ValueError(
                f"--output {folder} holds input images ({', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''}): "
                "the outputs would replace or mix with them; choose another folder"
            )
    for out in outputs:
        if out.resolve() in resolved:
            raise ValueError(f"output {out} would replace the input {resolved[out.resolve()]}: choose another --output")


def remove_if_empty(folder: str | os.PathLike[str]) -> None:
    """Remove ``folder`` and its empty sub-folders when no file was written in them."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def unique_stem(path: Path, taken: set[str]) -> str:
    """``path``'s stem, with ``_2``, ``_3``... appended when another input had the same one."""
    stem, n = path.stem, 1
    while (stem if n == 1 else f"{stem}_{n}") in taken:
        n += 1
    name = stem if n == 1 else f"{stem}_{n}"
    taken.add(name)
    return name


class Progress:
    """One line every ``every`` seconds (and at the end) for inputs of more than ``min_total`` images."""

    def __init__(self, total: int, min_total: int = 20, every: float = 5.0) -> None:
        self.total, self.min_total, self.every = total, min_total, every
        self.start = self.last = time.time()

    def update(self, done: int) -> None:
        now = time.time()
        if self.total < self.min_total or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(f"  {done}/{self.total} images, {rate:.1f} images/s, {eta:.0f} s left", flush=True)


def autocast(device: str, amp: str) -> Any:
    """``torch.autocast`` for ``--amp bf16|fp16`` on ``device``; a no-op context for ``none``."""
    import contextlib

    if amp == "none":
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    return torch.autocast(device_type=torch.device(device).type, dtype=dtypes[amp])


__all__ = [
    "CheckpointError",
    "IMAGE_SUFFIXES",
    "Progress",
    "USER_ERRORS",
    "add_model_arguments",
    "load_from_arguments",
    "run_command",
    "UnreadableImageError",
    "atomic_write",
    "autocast",
    "batch_images",
    "class_names",
    "collect_images",
    "default_file_mode",
    "core_model",
    "eval_transform",
    "hub_entries",
    "is_deformable",
    "load_detector",
    "original_sizes",
    "prepare_output_folder",
    "refuse_overwriting_inputs",
    "read_image",
    "remove_if_empty",
    "save_png",
    "unique_stem",
]
