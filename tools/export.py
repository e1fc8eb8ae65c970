"""Export a trained DETR or Deformable DETR to ONNX or to a ``torch.export`` program, and check it.

    python tools/export.py --checkpoint outputs/demo/checkpoint.pth --format onnx --output model.onnx --image img.jpg
    python tools/export.py --checkpoint outputs/demo/checkpoint.pth --format torch_export --output model.pt2

The graph (``ExportableDetector``) maps normalised images ``[B, 3, H, W]`` (dynamic batch and size)
to ``pred_logits``, ``pred_boxes`` and, for segmentation models, ``pred_masks``; the preprocessing
is stored in the file's metadata. Every export is compared with PyTorch before it is kept
(``export_checked``). ONNX needs the optional ``onnx``, ``onnxscript`` and ``onnxruntime``. The
official code has no export command, and TorchScript, which it supported, is left out (PyTorch deprecates it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as ``python tools/export.py``
    import _repo_root  # noqa: F401

from tools.arguments import add_model_arguments  # noqa: E402

# Each format and the packages it needs beyond torch.
FORMATS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torch_export": ()}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export DETR / Deformable DETR to ONNX or torch.export, checked.")
    add_model_arguments(parser)
    parser.add_argument("--format", default="onnx", choices=sorted(FORMATS))
    parser.add_argument("--output", required=True, help="file to write (model.onnx, model.pt2)")
    parser.add_argument("--image", default=None, help="image for the check (default: a generated picture)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed box difference")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    return parser


if __name__ == "__main__":
    get_parser().parse_args()  # --help and bad arguments answered before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from models.ops import MSDeformAttn  # noqa: E402
from tools.inference import (  # noqa: E402
    class_names,
    core_model,
    default_file_mode,
    eval_transform,
    is_deformable,
    load_from_arguments,
    prepare_output_folder,
    read_image,
    run_command,
)

OUTPUT_NAMES = ("pred_logits", "pred_boxes", "pred_masks")


class MissingPackageError(RuntimeError):
    """An optional package the chosen format needs is not installed; the message names it."""


class ExportCheckError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


class ExportableDetector(nn.Module):
    """The detector as a graph of tensors: ``images [B, 3, H, W]`` (normalised) -> ``pred_logits``,
    ``pred_boxes`` (and ``pred_masks`` for segmentation models); auxiliary and two-stage encoder
    outputs are left out. The images are resized and normalised as ``main.py --eval`` does (shorter
    side ``val_size``, ImageNet mean/std). Images of a batch share one size: there is no padding-mask
    input (pad, and padding is seen as image). Deformable DETR goes through its PyTorch
    deformable-attention path (``grid_sample``), never Triton. ``min_side``: the smallest image
    side the export takes (its coarsest feature map then has at least 2 pixels a side; ``None``
    for a stand-in model without a backbone: ``torch.export`` infers it). The
    auxiliary outputs are switched off in ``model`` (with one decoder layer their empty list made
    an ``aten.unbind`` that ``torch.export`` cannot load back)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.output_names = OUTPUT_NAMES if hasattr(model, "mask_head") else OUTPUT_NAMES[:2]
        detector = core_model(model)
        if hasattr(detector, "aux_loss"):
            detector.aux_loss = False
        self.min_side = coarsest_stride(detector) + 1 if hasattr(detector, "backbone") else None

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[k] for k in self.output_names)


def require_packages(fmt: str) -> None:
    """Raise ``MissingPackageError`` naming the packages ``fmt`` needs that are not installed."""
    missing = []
    for name in FORMATS[fmt]:
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # a module set to None in sys.modules (how tests hide a package)
            found = False
        if not found or (name in sys.modules and sys.modules[name] is None):
            missing.append(name)
    if missing:
        raise MissingPackageError(
            f"--format {fmt} needs the package(s) {', '.join(missing)}: pip install {' '.join(missing)} "
            "(or pip install -r requirements-extra.txt)"
        )


def coarsest_stride(detector: nn.Module) -> int:
    """The stride of a DETR / Deformable DETR's coarsest feature map: the backbone's last stage,
    halved again by each level Deformable DETR adds beyond the backbone's."""
    strides = list(detector.backbone.strides)
    extra = detector.num_feature_levels - len(strides) if is_deformable(detector) else 0
    return max(strides) * 2 ** max(0, extra)


def dynamic_shapes(min_side: int | None) -> tuple[dict[int, Any], ...]:
    """``images`` of any batch and of any height and width from ``min_side`` on, named ``batch``,
    ``height`` and ``width`` (the ONNX file's dimension names). A feature map of one pixel would
    be specialised to a constant by ``torch.export``, hence ``min_side``. ``None``: unnamed
    dimensions whose ranges ``torch.export`` infers."""
    dim = torch.export.Dim
    if min_side is None:
        return ({0: dim.DYNAMIC, 2: dim.DYNAMIC, 3: dim.DYNAMIC},)
    return ({0: dim("batch"), 2: dim("height", min=min_side), 3: dim("width", min=min_side)},)


def export_onnx(wrapper: ExportableDetector, example: Tensor, path: Path, metadata: dict[str, str],
                opset: int = 18) -> None:  # fmt: skip
    """``torch.onnx.export`` (the ``torch.export``-based exporter) with dynamic batch and image size,
    the weights inside the file and ``metadata`` in the model's ``metadata_props``. The exporter's
    graph optimisation is off: onnxscript 0.7 makes an invalid graph of Deformable DETR with box
    refinement, and onnxruntime optimises the graph itself when it loads it."""
    import warnings

    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracing chatter
        program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=opset, optimize=False,
                                    input_names=["images"], output_names=list(wrapper.output_names),
                                    dynamic_shapes=dynamic_shapes(wrapper.min_side), verbose=False)  # fmt: skip
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def export_torch(wrapper: ExportableDetector, example: Tensor, path: Path, metadata: dict[str, str]) -> None:
    """``torch.export.export`` with dynamic batch and image size, saved with ``metadata`` as the
    extra file ``metadata.json`` (``torch.export.load(path).module()`` runs it; AOTInductor can compile it)."""
    program = torch.export.export(wrapper, (example,), dynamic_shapes=dynamic_shapes(wrapper.min_side))
    torch.export.save(program, str(path), extra_files={"metadata.json": json.dumps(metadata)})


def run_exported(fmt: str, path: Path) -> Any:
    """A function ``images [B, 3, H, W] -> tuple of output tensors`` running the exported file."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: tuple(torch.from_numpy(o) for o in session.run(None, {name: x.cpu().numpy()}))
    module = torch.export.load(str(path)).module()
    return lambda x: tuple(t.detach() for t in module(x))


def resized(x: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def check_inputs(image: Image.Image, transform: Any, min_side: int) -> list[Tensor]:
    """The image at the evaluation size (each side at least ``min_side``, height and width made to
    differ so that ``torch.export`` does not tie them), batch 1; then batch 2 (it and its mirror
    image) at about 3/4 of that size; then batch 1 far larger (shorter side at least 800 and twice
    the first). The first is also the example the export traces."""
    x = transform(image)
    h, w = _untied(*x.shape[-2:], min_side)
    x = resized(x, (h, w)) if (h, w) != tuple(x.shape[-2:]) else x
    small = resized(x, _untied(round(h * 0.75), round(w * 0.75), min_side))
    scale = max(2.0, 800 / min(h, w))
    large = resized(x, _untied(round(h * scale), round(w * scale), min_side))
    return [x[None], torch.stack([small, small.flip(-1)]), large[None]]


def _untied(h: int, w: int, min_side: int) -> tuple[int, int]:
    """``(h, w)`` raised to ``min_side``, the width made one larger when both are equal."""
    h, w = max(min_side, h), max(min_side, w)
    return h, w + (h == w)


@torch.no_grad()
def compare(wrapper: ExportableDetector, run: Any, inputs: list[Tensor]) -> list[dict[str, float]]:
    """Largest absolute difference per output between PyTorch and the exported model, per input."""
    diffs = []
    for x in inputs:
        expected, got = wrapper(x), run(x)
        diffs.append({n: float((e.float() - g.float()).abs().max()) for n, e, g in zip(wrapper.output_names, expected,
                                                                                    got)})  # fmt: skip
    return diffs


def generated_picture(size: int = 480) -> Image.Image:
    """A deterministic test picture (smooth gradients and a few shapes) for the check when no
    ``--image`` is given."""
    y, x = np.mgrid[0:size, 0 : size * 4 // 3].astype(np.float32) / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    for cx, cy, r in ((0.4, 0.4, 0.15), (0.9, 0.6, 0.2), (1.1, 0.3, 0.1)):
        rgb[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = (0.9, 0.2, 0.2)
    return Image.fromarray((rgb * 255).clip(0, 255).astype(np.uint8))


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Run the command; returns ``{"output", "seconds", "diffs"}``."""
    require_packages(args.format)
    output = Path(args.output)
    image = read_image(args.image) if args.image else generated_picture()
    args.device = args.device or "cpu"
    loaded = load_from_arguments(args, attn_impl="pytorch")  # the portable deformable-attention path
    for module in loaded.model.modules():  # also for hub models: the portable path, never Triton
        if isinstance(module, MSDeformAttn):
            module.impl = "pytorch"
    wrapper = ExportableDetector(loaded.model).eval()
    transform = eval_transform(loaded.args)
    inputs = check_inputs(image, transform, wrapper.min_side)
    example = torch.cat([inputs[0], inputs[0].flip(-1)])  # batch 2: torch.export fixes dimensions of size 1
    metadata = {
        "source": str(loaded.source),
        "model": loaded.args.model,
        "outputs": ",".join(wrapper.output_names),
        "box_format": "cxcywh normalised to [0, 1]",
        "scores": "sigmoid" if is_deformable(loaded.model) else "softmax over classes + no-object (last)",
        "val_size": str(loaded.args.val_size or 800),
        "max_size": str(loaded.args.max_size or 1333),
        "min_side": str(wrapper.min_side),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "id2label": json.dumps({str(k): v for k, v in class_names(loaded).items()}),
    }
    prepare_output_folder(output.parent)  # created as predict.py and visualize.py create theirs
    result = export_checked(wrapper, example, inputs, args.format, output, metadata, args.tolerance, args.opset)
    size_mb = output.stat().st_size / 2**20
    print(f"wrote {output} ({args.format}, {size_mb:.1f} MiB, exported in {result['seconds']:.1f} s); input 'images' "
          f"[B, 3, H, W] normalised, shorter side {metadata['val_size']} (max {metadata['max_size']}), "
          f"sides at least {wrapper.min_side}")  # fmt: skip
    return result


def export_checked(wrapper: ExportableDetector, example: Tensor, inputs: list[Tensor], fmt: str, output: Path,
                   metadata: dict[str, str], tolerance: float = 1e-3, opset: int = 18) -> dict[str, Any]:  # fmt: skip
    """Export ``wrapper`` (traced on ``example``) in ``fmt`` to a temporary file beside ``output``,
    compare it with PyTorch on each of ``inputs`` (printing the largest differences), and rename it
    to ``output`` when the boxes differ by at most ``tolerance``; else delete it and raise
    ``ExportCheckError``. Returns ``{"output", "seconds", "diffs"}``. (The official ``test_all.py``
    exports the hub model with the TorchScript-based ONNX exporter at one fixed size and compares it
    in onnxruntime: ported in ``tests/tools/test_export.py``.)"""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=f".tmp{output.suffix}", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        start = time.time()
        if fmt == "onnx":
            export_onnx(wrapper, example, tmp, metadata, opset)
        else:
            export_torch(wrapper, example, tmp, metadata)
        seconds = time.time() - start
        diffs = compare(wrapper, run_exported(fmt, tmp), inputs)
        for x, d in zip(inputs, diffs):
            shape = "x".join(str(s) for s in x.shape)
            print(f"max abs diff vs PyTorch on {shape}: " + ", ".join(f"{k} {v:.2e}" for k, v in d.items()))
        worst = max(d["pred_boxes"] for d in diffs)
        if not worst <= tolerance:  # also catches NaN
            raise ExportCheckError(
                f"exported boxes differ from PyTorch by {worst:.2e} > --tolerance {tolerance:g}; nothing written"
            )
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {"output": str(output), "seconds": seconds, "diffs": diffs}


def main(argv: list[str] | None = None) -> int:
    return run_command(export, get_parser().parse_args(argv), (MissingPackageError, ExportCheckError))


if __name__ == "__main__":
    sys.exit(main())
