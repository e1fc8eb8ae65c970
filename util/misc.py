"""Nested (padded) image batches, collation, accuracy and interpolation helpers, and the one
TorchScript refusal the models share.

``NestedTensor`` and ``nested_tensor_from_tensor_list`` behave as in the official DETR
``util/misc.py`` (padding to the largest image, ``True`` in the mask marks padding). The
distributed and logging helpers that the official module also held now live in
``util.distributed`` and ``util.logging``; they are re-exported here so old imports keep working.
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch
import torchvision
from torch import Tensor

from util.distributed import (  # noqa: F401  (re-exported for official imports)
    all_gather,
    get_rank,
    get_world_size,
    init_distributed_mode,
    is_dist_avail_and_initialized,
    is_main_process,
    reduce_dict,
    setup_for_distributed,
)
from util.logging import MetricLogger, SmoothedValue  # noqa: F401


class NestedTensor:
    """A padded batch ``tensors [B, C, H, W]`` with its padding ``mask [B, H, W]`` (True = pad)."""

    def __init__(self, tensors: Tensor, mask: Tensor | None) -> None:
        self.tensors = tensors
        self.mask = mask

    def to(self, device: torch.device | str, non_blocking: bool = False) -> NestedTensor:
        mask = self.mask.to(device, non_blocking=non_blocking) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def decompose(self) -> tuple[Tensor, Tensor | None]:
        return self.tensors, self.mask

    def __repr__(self) -> str:
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={self.mask is not None})"


def _max_by_axis(shapes: list[list[int]]) -> list[int]:
    maxes = list(shapes[0])
    for sub in shapes[1:]:
        for i, item in enumerate(sub):
            maxes[i] = max(maxes[i], item)
    return maxes


def nested_tensor_from_tensor_list(tensor_list: list[Tensor] | tuple[Tensor, ...]) -> NestedTensor:
    """Pad a list of ``[C, H_i, W_i]`` images to ``[B, C, max H, max W]`` (top-left aligned).

    The mask is ``True`` on padded pixels. Only 3-D tensors are supported, as officially.
    """
    if len(tensor_list) == 0:
        raise ValueError("nested_tensor_from_tensor_list: got an empty list of images")
    if any(t.ndim != 3 for t in tensor_list):
        shapes = [tuple(t.shape) for t in tensor_list]
        raise ValueError(f"nested_tensor_from_tensor_list expects [C, H, W] images, got shapes {shapes}")
    max_size = _max_by_axis([list(img.shape) for img in tensor_list])
    b = len(tensor_list)
    c, h, w = max_size
    first = tensor_list[0]
    tensor = torch.zeros((b, c, h, w), dtype=first.dtype, device=first.device)
    mask = torch.ones((b, h, w), dtype=torch.bool, device=first.device)
    for img, pad_img, m in zip(tensor_list, tensor, mask):
        pad_img[: img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensor, mask)


def to_nested_tensor(samples: NestedTensor | Tensor | list[Tensor] | tuple[Tensor, ...]) -> NestedTensor:
    """Accept a ``NestedTensor``, a ``[B, C, H, W]`` batch (no padding) or a list of ``[C, H, W]``."""
    if isinstance(samples, NestedTensor):
        return samples
    if isinstance(samples, Tensor) and samples.ndim == 4:
        b, _, h, w = samples.shape
        return NestedTensor(samples, torch.zeros((b, h, w), dtype=torch.bool, device=samples.device))
    if isinstance(samples, (list, tuple, Tensor)):
        return nested_tensor_from_tensor_list(list(samples))
    raise TypeError(f"expected a NestedTensor, a 4-D tensor or a list of 3-D tensors, got {type(samples).__name__}")


# Tensors up to this size travel from DataLoader workers inside the pickle (by value) rather than
# through shared memory: a shared tensor costs a file descriptor passed over a socket each.
_BY_VALUE_BYTES = 1 << 16
_NUMPY_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_NUMPY_DTYPES += (torch.float16, torch.float32, torch.float64)


class _SmallTensor:
    """A small CPU tensor's values as a numpy array, for pickling (see ``Targets``)."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SmallTensor, (self.array,))


def _by_value(value: Any) -> Any:
    if (
        isinstance(value, Tensor)
        and value.device.type == "cpu"
        and value.dtype in _NUMPY_DTYPES
        and not value.requires_grad
        and value.numel() * value.element_size() <= _BY_VALUE_BYTES
    ):
        return _SmallTensor(value.numpy())
    return value


def _rebuild_targets(packed: tuple[dict[str, Any], ...]) -> Targets:
    unpack = [
        {k: torch.from_numpy(v.array) if isinstance(v, _SmallTensor) else v for k, v in t.items()} for t in packed
    ]
    return Targets(unpack)


class Targets(tuple):
    """A batch's targets: a tuple of dicts, as the official ``collate_fn`` returns.

    Differs only in how it is pickled, which is how a ``DataLoader`` worker hands a batch to the
    training process: the dicts' small tensors (boxes, labels, sizes, ids: about seven per image)
    go by value inside the pickle instead of one shared-memory file descriptor each. The values
    and dtypes are the same; unpickling 100 descriptors took about 45 ms of the training process's
    time per batch of 16 images (10-15% of a demo iteration), by value well under 1 ms. Large
    tensors (masks) still go through shared memory.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        if not all(isinstance(t, dict) for t in self):
            return (Targets, (tuple(self),))
        return (_rebuild_targets, (tuple({k: _by_value(v) for k, v in t.items()} for t in self),))


def collate_fn(batch: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Collate ``(image, target)`` pairs into ``(NestedTensor, tuple of targets)`` (``Targets``,
    a tuple that DataLoader workers hand over quickly)."""
    columns: list[Any] = list(zip(*batch))
    columns[0] = nested_tensor_from_tensor_list(columns[0])
    columns[1:] = [Targets(c) for c in columns[1:]]
    return tuple(columns)


@torch.no_grad()
def accuracy(output: Tensor, target: Tensor, topk: tuple[int, ...] = (1,)) -> list[Tensor]:
    """Top-k accuracy in percent of ``output [N, C]`` against ``target [N]``."""
    if target.numel() == 0:
        return [torch.zeros([], device=output.device)]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0) * (100.0 / batch_size) for k in topk]


def interpolate(
    input: Tensor,
    size: list[int] | tuple[int, int] | None = None,
    scale_factor: float | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
) -> Tensor:
    """``torch.nn.functional.interpolate`` (kept for official imports; empty batches work)."""
    return torchvision.ops.misc.interpolate(input, size, scale_factor, mode, align_corners)


def refuse_torchscript(module: object) -> NoReturn:
    """The models' ``__prepare_scriptable__`` (which ``torch.jit.script`` calls first): one clear
    error instead of a failure deep in the TorchScript compiler. TorchScript is deprecated by
    PyTorch and not supported here; ``torch.export`` and ONNX are."""
    raise RuntimeError(
        f"{type(module).__name__}: torch.jit.script is not supported (TorchScript is deprecated by PyTorch); "
        "export with torch.export.export(model, ...) or to ONNX with tools/export.py"
    )
