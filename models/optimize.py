"""Fast paths for DETR, panoptic DETR and Deformable DETR. Inference: ``optimize_for_inference``
(``inference_model_from_args`` for ``main.py --eval_optimize``) returns an ``InferenceModel``, a
copy with BatchNorm folded into the backbone's convolutions (``fold_batchnorm``), channels-last,
oneDNN-fused ResNet blocks on CPUs (``fuse_resnet_blocks``), optional autocast and
``torch.compile``. Training: ``fold_frozen_batchnorm_for_training`` (``--fold_frozen_bn``) applies
frozen BatchNorm inside the convolution weights.

Not in the official code, which runs the training graph as it is; all exact up to rounding but ``amp``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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


def mkldnn_fusion_available() -> bool:
    """Whether this PyTorch has oneDNN's fused convolution operators (CPU builds with MKLDNN)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class _PackedWeights(dict):
    """Per-dtype oneDNN-blocked weights; not copied (``deepcopy`` gives an empty cache)."""

    def __deepcopy__(self, memo: dict) -> _PackedWeights:
        return _PackedWeights()


class FusedConv(nn.Module):
    """A convolution with its bias, optionally a ReLU, optionally ``+ other`` then ReLU (the end of
    a residual block), in one oneDNN call on CPUs (channels-last, weights packed once per dtype);
    unfused operations elsewhere. Computes in the input's dtype, or the CPU autocast dtype."""

    def __init__(self, conv: nn.Conv2d, relu: bool, channels_last_input: bool = False) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv: only numeric zero padding")
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.to(conv.weight.dtype))
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu
        self.channels_last_input = channels_last_input
        self._packed = _PackedWeights()

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """``x [B, C_in, H, W]`` -> ``[B, C_out, H', W']``; with ``residual`` (same shape as the
        output): ``relu(conv(x) + residual)``."""
        dtype = x.dtype
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
        if x.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) or not mkldnn_fusion_available():
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if residual is not None:
                return F.relu(y + residual)
            return F.relu(y) if self.relu else y
        if self.channels_last_input or x.dtype != dtype:
            x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        if dtype not in self._packed:  # once per dtype: oneDNN's blocked weight layout
            dense = self.weight.to(dtype).contiguous().to_mkldnn()
            self._packed[dtype] = torch._C._nn.mkldnn_reorder_conv2d_weight(
                dense, self.padding, self.stride, self.dilation, self.groups, list(x.shape)
            )
        weight, bias = self._packed[dtype], self.bias.to(dtype)
        args = (self.padding, self.stride, self.dilation, self.groups)
        if residual is not None:
            op = torch.ops.mkldnn._convolution_pointwise.binary
            return op(x, residual.to(dtype), weight, bias, *args, "add", None, "relu", [], "")
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, "relu" if self.relu else "none", [], "")


class FusedBlock(nn.Module):
    """A torchvision ``Bottleneck`` / ``BasicBlock`` whose BatchNorm layers were folded, as
    ``FusedConv`` calls: conv+ReLU, (conv+ReLU,) conv + shortcut + ReLU."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        bottleneck = isinstance(block, Bottleneck)
        self.conv1 = FusedConv(block.conv1, relu=True)
        self.conv2 = FusedConv(block.conv2, relu=bottleneck)
        self.conv3 = FusedConv(block.conv3, relu=False) if bottleneck else None
        self.downsample = FusedConv(block.downsample[0], relu=False) if block.downsample is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, H / stride, W / stride]``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        if self.conv3 is None:  # BasicBlock: conv2 ends the block
            return self.conv2(out, shortcut)
        return self.conv3(self.conv2(out), shortcut)


def _folded(block: nn.Module) -> bool:
    norms = [getattr(block, f"bn{i}", None) for i in (1, 2, 3)]
    if block.downsample is not None:
        if not isinstance(block.downsample, nn.Sequential) or len(block.downsample) != 2:
            return False
        norms.append(block.downsample[1])
    return all(n is None or isinstance(n, nn.Identity) for n in norms)


def fuse_resnet_blocks(module: nn.Module) -> int:
    """Replace, in place, every ResNet body inside ``module`` whose BatchNorm layers are all
    folded (``fold_batchnorm``) by ``FusedConv`` / ``FusedBlock`` layers (the stem takes the image
    to channels-last). Returns the number of fused convolutions; 0 leaves a body as it was."""
    count = 0
    for body in [m for m in module.modules() if isinstance(m, (IntermediateLayerGetter, ResNet))]:
        stages = [getattr(body, n) for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(body, n)]
        blocks = [b for stage in stages for b in stage]
        if not isinstance(getattr(body, "bn1", None), nn.Identity) or not all(map(_folded, blocks)):
            continue
        body.conv1 = FusedConv(body.conv1, relu=True, channels_last_input=True)
        body.relu = nn.Identity()
        count += 1
        for stage in stages:
            for i, block in enumerate(stage):
                fused = FusedBlock(block)
                count += sum(c is not None for c in (fused.conv1, fused.conv2, fused.conv3, fused.downsample))
                stage[i] = fused
    return count


def _conv_frozen_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: Tensor) -> Tensor:
    """``bn(conv(x))`` as one convolution: the frozen scale folded into the weight (differentiable
    with respect to the convolution's parameters), the frozen shift as its bias."""
    scale, bias = bn.scale_and_shift()
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class _FoldedBasicBlock(BasicBlock):
    """torchvision's ``BasicBlock`` with its frozen BatchNorm layers folded at each call."""

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, H / stride, W / stride]``."""
        identity = x if self.downsample is None else _conv_frozen_bn(self.downsample[0], self.downsample[1], x)
        out = self.relu(_conv_frozen_bn(self.conv1, self.bn1, x))
        out = _conv_frozen_bn(self.conv2, self.bn2, out)
        return self.relu(out + identity)


class _FoldedBottleneck(Bottleneck):
    """torchvision's ``Bottleneck`` with its frozen BatchNorm layers folded at each call."""

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, H / stride, W / stride]``."""
        identity = x if self.downsample is None else _conv_frozen_bn(self.downsample[0], self.downsample[1], x)
        out = self.relu(_conv_frozen_bn(self.conv1, self.bn1, x))
        out = self.relu(_conv_frozen_bn(self.conv2, self.bn2, out))
        out = _conv_frozen_bn(self.conv3, self.bn3, out)
        return self.relu(out + identity)


class _FoldedStemBody(IntermediateLayerGetter):
    """A backbone body (``IntermediateLayerGetter``) whose stem ``conv1``/``bn1`` runs folded."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``[B, 3, H, W]`` -> ``{name: [B, C_i, H_i, W_i]}`` for the returned stages."""
        out: dict[str, Tensor] = {}
        for name, module in self.items():
            if name == "bn1":
                continue  # applied with conv1
            x = _conv_frozen_bn(module, self["bn1"], x) if name == "conv1" else module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


_FOLDED_CLASSES: dict[type, type] = {
    BasicBlock: _FoldedBasicBlock,
    Bottleneck: _FoldedBottleneck,
    IntermediateLayerGetter: _FoldedStemBody,
}
_PLAIN_CLASSES = {folded: plain for plain, folded in _FOLDED_CLASSES.items()}


def _frozen_pairs(module: nn.Module) -> list[tuple[nn.Module, nn.Module]] | None:
    """The ``(conv, bn)`` pairs a folded ``module`` would apply, or None when one of its
    normalisations is not a ``FrozenBatchNorm2d`` (learning BatchNorm, ...) or a convolution pads
    otherwise than with zeros."""
    if isinstance(module, IntermediateLayerGetter):
        if list(module.keys())[:2] != ["conv1", "bn1"]:
            return None
        pairs = [(module["conv1"], module["bn1"])]
    else:
        pairs = [
            (getattr(module, f"conv{i}"), getattr(module, f"bn{i}")) for i in (1, 2, 3) if hasattr(module, f"bn{i}")
        ]
        if module.downsample is not None:
            ds = module.downsample
            if not isinstance(ds, nn.Sequential) or len(ds) != 2:
                return None
            pairs.append((ds[0], ds[1]))
    ok = all(
        isinstance(c, nn.Conv2d) and c.padding_mode == "zeros" and isinstance(b, FrozenBatchNorm2d) for c, b in pairs
    )
    return pairs if ok else None


def fold_frozen_batchnorm_for_training(model: nn.Module) -> int:
    """Make, in place, every torchvision ResNet block (and stem) inside ``model`` whose BatchNorm
    layers are all frozen (``FrozenBatchNorm2d``) apply them folded into its convolutions
    (``conv(x, W * s) + b``), in training and in evaluation alike. Parameters, buffers and
    ``state_dict`` are unchanged; blocks with learning BatchNorm keep their own forward. Returns the
    number of folded (convolution, BatchNorm) pairs. ``unfold_frozen_batchnorm`` undoes it.

    The official backbone follows each convolution by a frozen BatchNorm: two full passes over the
    feature map forward and one backward. Folded, the frozen scale multiplies the (small) weight
    instead and autograd carries the gradient to ``W``; only the blocks' ``forward`` changes, so
    checkpoints, EMA, DDP and ``optimize_for_inference`` work unchanged. Exact up to rounding: the
    golden gradient parity tests pass with it on."""
    count = 0
    for module in list(model.modules()):
        folded = _FOLDED_CLASSES.get(type(module))
        pairs = _frozen_pairs(module) if folded is not None else None
        if pairs:
            module.__class__ = folded
            count += len(pairs)
    return count


def swap_module_classes(model: nn.Module, classes: dict[type[nn.Module], type[nn.Module]]) -> int:
    """Give every module of ``model`` whose exact class is a key of ``classes`` the class it maps
    to, in place (for classes that differ only in ``forward``); returns how many changed."""
    count = 0
    for module in model.modules():
        new = classes.get(type(module))
        if new is not None:
            module.__class__ = new
            count += 1
    return count


def unfold_frozen_batchnorm(model: nn.Module) -> int:
    """Give every block folded by ``fold_frozen_batchnorm_for_training`` its plain forward back
    (in place); returns how many blocks changed."""
    return swap_module_classes(model, _PLAIN_CLASSES)


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
    fuse: bool
    amp: str
    compile: bool
    folded_layers: int = 0
    fused_convs: int = 0


class InferenceModel(nn.Module):
    """A model prepared by ``optimize_for_inference``: ``forward`` takes what the model takes and
    returns the same dict (float32 tensors also under autocast), without autograd. The prepared
    model is ``.model``. Eval mode only: ``train()`` raises. Its ``state_dict`` is not a checkpoint
    (the BatchNorm layers are gone): save the original model."""

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
    fuse: bool | None = None,
    amp: str = "none",
    compile: bool = False,  # noqa: A002 (torch.compile's name)
    inplace: bool = False,
) -> InferenceModel:
    """Prepare ``model`` (DETR, DETRsegm or Deformable DETR; also inside DDP) for inference.

    ``fold_bn``: fold the backbone's BatchNorm layers (frozen, or learning ones in eval mode) into
    the convolutions before them, in float64: one convolution with a bias instead of a convolution
    plus two passes over the feature map. Exact up to float32 rounding (the golden parity tests
    pass with it on).
    ``channels_last``: NHWC backbone (oneDNN's native layout on CPUs, the tensor cores' on GPUs);
    ``None`` chooses it on CPUs, and on GPUs with ``amp``.
    ``fuse``: each ResNet block as oneDNN convolutions with their bias, ReLU and residual addition
    fused in (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile`` emits on CPUs),
    weights reordered once into oneDNN's blocked layout; the same arithmetic. Needs ``fold_bn``;
    ``None`` chooses it on CPUs with oneDNN, unless compiling (inductor fuses by itself); other
    devices fall back to the unfused operations.
    ``amp``: ``"none"``, ``"bf16"`` (CPUs with AVX512-BF16 / AMX, GPUs) or ``"fp16"`` (GPUs)
    autocast inside the model, outputs in float32 (opt-in: changes outputs slightly, see
    docs/results.md).
    ``compile``: ``torch.compile`` with frozen weights (inductor ``freezing``): pays off for a fixed
    input size; every new input size compiles again.
    ``inplace``: change ``model`` itself instead of a deep copy (it cannot be trained afterwards).

    Attention needs nothing here: it already runs through PyTorch's fused
    ``scaled_dot_product_attention`` (``need_weights=False``, ``models/transformer.py``).
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"optimize_for_inference: amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    model = _unwrap(model)
    if not inplace:
        model = copy.deepcopy(model)
    unfold_frozen_batchnorm(model)  # the layers are folded for good below
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("optimize_for_inference: amp='fp16' needs a GPU; on a CPU use amp='bf16'")
    if channels_last is None:
        channels_last = device.type == "cpu" or amp != "none"
    if fuse is None:
        fuse = fold_bn and device.type == "cpu" and mkldnn_fusion_available() and not compile
    folded = fold_batchnorm(model) if fold_bn else 0
    fused = fuse_resnet_blocks(model) if fuse else 0
    if channels_last:
        use_channels_last(model)
    options = InferenceOptions(fold_bn, channels_last, fuse and fused > 0, amp, compile, folded, fused)
    return InferenceModel(model, options)


def inference_model_from_args(model: nn.Module, args: Any) -> nn.Module:
    """The model ``main.py`` evaluates, from ``--eval_optimize`` (``none``: the model itself;
    ``fast``: BatchNorm folding + channels-last; ``compile``: also ``torch.compile``) and
    ``--amp`` (``bf16``/``fp16`` autocast inside the prepared model)."""
    mode, amp = args.eval_optimize, args.amp
    if mode not in ("none", "fast", "compile"):
        raise ValueError(f"--eval_optimize: unknown '{mode}', choose from none, fast, compile")
    if mode == "none" or (amp == "fp16" and next(_unwrap(model).parameters()).device.type == "cpu"):
        return model  # fp16 on a CPU: the training graph, under the caller's autocast (no fp16 fast path there)
    return optimize_for_inference(model, amp=amp, compile=mode == "compile")
