"""Inference fast paths for DETR, panoptic DETR and Deformable DETR: ``optimize_for_inference``.

The official code evaluates the training graph as it is. Here one entry point prepares a copy of
a trained model for inference (evaluation, ``tools/``, hub models); each step can be switched off:

* ``fold_bn`` (default on): the backbone's BatchNorm layers (frozen, or learning ones in eval
  mode) are folded into the convolution before them (torchvision ResNet's ``convN``/``bnN`` and
  ``downsample`` pairs), computed in float64: one convolution with a bias instead of a
  convolution plus two full passes over the feature map. Exact up to float32 rounding; the
  golden parity tests of the official numbers pass with it on.
* ``channels_last`` (default: on for CPUs, and on GPUs with ``amp``): the backbone's
  convolutions run on NHWC tensors, oneDNN's native layout on CPUs and the tensor cores' on
  GPUs. Exact up to rounding.
* ``amp="bf16"`` (CPUs with AVX512-BF16 / AMX, GPUs) or ``"fp16"`` (GPUs): autocast inside the
  model, outputs returned in float32. Changes the outputs slightly (measured in docs/speed.md):
  opt-in.
* ``compile=True``: ``torch.compile`` with frozen weights (inductor ``freezing``: weights become
  constants, oneDNN prepacks them, convolution + bias + ReLU/add are fused). Pays off for a fixed
  input size (serving, benchmarks); every new input size compiles again.

Attention already runs through PyTorch's fused ``scaled_dot_product_attention`` kernels
(``need_weights=False``, ``models/transformer.py``). The returned ``InferenceModel`` is called like
the model and returns the same outputs; it stays in eval mode and runs without autograd; its
``state_dict`` is not a checkpoint (the BatchNorm layers are gone): save the original model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from models.backbone import FrozenBatchNorm2d

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_RESNET_PARTS = (ResNet, Bottleneck, BasicBlock, IntermediateLayerGetter)


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor, float] | None:
    """``(weight, bias, running_mean, running_var, eps)`` of a foldable BatchNorm, else None."""
    if isinstance(bn, FrozenBatchNorm2d):
        return bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
    if isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_mean is not None:
        ones = torch.ones_like(bn.running_mean)
        weight = bn.weight if bn.weight is not None else ones
        bias = bn.bias if bn.bias is not None else torch.zeros_like(ones)
        return weight, bias, bn.running_mean, bn.running_var, bn.eps
    return None


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.Module) -> bool:
    """Fold ``bn`` into ``conv`` (in float64); False when the pair cannot be folded."""
    affine = _bn_affine(bn)
    if not isinstance(conv, nn.Conv2d) or affine is None or conv.out_channels != affine[0].numel():
        return False
    weight, bias, mean, var, eps = (t.double() if isinstance(t, Tensor) else t for t in affine)
    scale = weight * torch.rsqrt(var + eps)
    conv_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(((conv_bias - mean) * scale + bias).to(dtype), requires_grad=False)
    return True


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm of the torchvision ResNets inside ``module`` into the
    convolution before it (``conv1``/``bn1`` ... ``conv3``/``bn3`` of the stem and the blocks, and
    each ``downsample`` pair); the BatchNorm becomes ``nn.Identity``. Learning ``BatchNorm2d``
    layers are folded only in eval mode. Returns the number of folded layers.

    Only these known pairs are folded: in a ResNet each ``bnN`` directly follows ``convN``.
    """
    count = 0
    for parent in list(module.modules()):
        if isinstance(parent, _RESNET_PARTS):
            for i in (1, 2, 3):
                conv, bn = getattr(parent, f"conv{i}", None), getattr(parent, f"bn{i}", None)
                if conv is not None and bn is not None and _fold(conv, bn):
                    setattr(parent, f"bn{i}", nn.Identity())
                    count += 1
        if isinstance(parent, (Bottleneck, BasicBlock)) and isinstance(parent.downsample, nn.Sequential):
            ds = parent.downsample
            if len(ds) == 2 and _fold(ds[0], ds[1]):
                ds[1] = nn.Identity()
                count += 1
    return count


def _to_channels_last(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    x = inputs[0]
    if isinstance(x, Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *inputs[1:])
    return inputs


def use_channels_last(module: nn.Module) -> int:
    """Put every ResNet body inside ``module`` (and its input, by a forward pre-hook) in the
    channels-last memory format. Returns the number of bodies converted."""
    bodies = [m for m in module.modules() if isinstance(m, (IntermediateLayerGetter, ResNet))]
    for body in bodies:
        body.to(memory_format=torch.channels_last)
        body.register_forward_pre_hook(_to_channels_last)
    return len(bodies)


def cast_floating(outputs: Any, dtype: torch.dtype = torch.float32) -> Any:
    """Floating-point tensors in nested dicts / lists / tuples cast to ``dtype``."""
    if isinstance(outputs, Tensor):
        return outputs.to(dtype) if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: cast_floating(v, dtype) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(cast_floating(v, dtype) for v in outputs)
    return outputs


@dataclass
class InferenceOptions:
    """What ``optimize_for_inference`` did (``InferenceModel.options``)."""

    fold_bn: bool
    channels_last: bool
    amp: str
    compile: bool
    folded_layers: int = 0


class InferenceModel(nn.Module):
    """A model prepared by ``optimize_for_inference``: ``forward`` takes what the model takes and
    returns the same dict (float32 tensors also under autocast), without autograd. The prepared
    model is ``.model``. Eval mode only: ``train()`` raises."""

    def __init__(self, model: nn.Module, options: InferenceOptions) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self._amp_dtype = AMP_DTYPES[options.amp]
        compiled = torch.compile(model, options={"freezing": True}) if options.compile else model
        object.__setattr__(self, "_run", compiled)  # not a submodule: the weights stay under .model

    def forward(self, samples: Any) -> Any:
        """``samples``: a ``NestedTensor``, a ``[B, 3, H, W]`` batch or a list of ``[3, H, W]`` images."""
        device_type = next(self.model.parameters()).device.type
        with torch.no_grad(), torch.autocast(device_type, self._amp_dtype, enabled=self._amp_dtype is not None):
            out = self._run(samples)
        return cast_floating(out) if self._amp_dtype is not None else out

    def train(self, mode: bool = True) -> InferenceModel:
        if mode:
            raise RuntimeError(
                "an InferenceModel (optimize_for_inference) cannot be trained: its BatchNorm layers are folded "
                "into the convolutions; train the original model"
            )
        return super().train(False)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / an InferenceModel."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel, InferenceModel)):
        model = model.module if not isinstance(model, InferenceModel) else model.model
    return model


def optimize_for_inference(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    channels_last: bool | None = None,
    amp: str = "none",
    compile: bool = False,  # noqa: A002 (torch.compile's name)
    inplace: bool = False,
) -> InferenceModel:
    """Prepare ``model`` (DETR, DETRsegm or Deformable DETR; also inside DDP) for inference.

    ``fold_bn``: fold BatchNorm into the backbone convolutions (exact up to rounding).
    ``channels_last``: NHWC backbone; ``None`` chooses it on CPUs, and on GPUs with ``amp``.
    ``amp``: ``"none"``, ``"bf16"`` or ``"fp16"`` autocast (opt-in: changes outputs slightly).
    ``compile``: ``torch.compile`` with frozen weights (for a fixed input size).
    ``inplace``: change ``model`` itself instead of a deep copy (it cannot be trained afterwards).
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"optimize_for_inference: amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    model = _unwrap(model)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("optimize_for_inference: amp='fp16' needs a GPU; on a CPU use amp='bf16'")
    if channels_last is None:
        channels_last = device.type == "cpu" or amp != "none"
    folded = fold_batchnorm(model) if fold_bn else 0
    if channels_last:
        use_channels_last(model)
    return InferenceModel(model, InferenceOptions(fold_bn, channels_last, amp, compile, folded))


def inference_model_from_args(model: nn.Module, args: Any) -> nn.Module:
    """The model ``main.py`` evaluates, from ``--eval_optimize`` (``none``: the model itself;
    ``fast``: BatchNorm folding + channels-last; ``compile``: also ``torch.compile``) and
    ``--amp`` (``bf16``/``fp16`` autocast inside the prepared model)."""
    mode = getattr(args, "eval_optimize", "fast")
    if mode == "none":
        return model
    if mode not in ("fast", "compile"):
        raise ValueError(f"--eval_optimize: unknown '{mode}', choose from none, fast, compile")
    return optimize_for_inference(model, amp=getattr(args, "amp", "none"), compile=mode == "compile")
