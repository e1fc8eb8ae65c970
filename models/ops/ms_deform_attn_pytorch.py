"""Multi-scale deformable attention in plain PyTorch: ``ms_deform_attn_pytorch`` (each head's value
map sampled bilinearly at the sampling locations with ``grid_sample``, weighted by the attention
weights; any device and dtype, differentiable by autograd) and ``LevelSizes``, the level sizes as
a list and as a tensor.

The official ``ms_deform_attn_core_pytorch``'s semantics, with a lower peak memory at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SpatialShapes = Tensor | Sequence[tuple[int, int]]


class LevelSizes(list):
    """The feature levels' ``(h, w)``, as a list and as an ``[L, 2]`` int64 tensor (``.tensor``).

    ``DeformableTransformer`` passes one to its layers in place of the official ``[L, 2]`` tensor:
    the PyTorch op reads the Python sizes (no device-to-host copy per layer, and sizes that stay
    symbolic under ``torch.export``, so that an exported model takes any image size); the offset
    normalisation and the Triton kernels use the tensor, made once per forward pass."""

    def __init__(self, sizes: Sequence[tuple[int, int]], device: torch.device | str | None = None) -> None:
        super().__init__((h, w) for h, w in sizes)
        # torch.full keeps symbolic sizes symbolic under torch.export; torch.as_tensor would fix them
        self.tensor = torch.stack(
            [torch.stack([torch.full((), v, dtype=torch.long, device=device) for v in hw]) for hw in self]
        )


def level_sizes(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """``(h, w)`` of each level, from an ``[L, 2]`` tensor (read back from its device) or a list."""
    pairs = spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else spatial_shapes
    return [(h, w) for h, w in pairs]


def spatial_shapes_tensor(spatial_shapes: SpatialShapes, device: torch.device | str | None = None) -> Tensor:
    """The ``[L, 2]`` int64 tensor of the level sizes (``LevelSizes.tensor``, the tensor itself, or
    made from a list of pairs)."""
    if isinstance(spatial_shapes, Tensor):
        return spatial_shapes
    if isinstance(spatial_shapes, LevelSizes):
        return spatial_shapes.tensor
    return LevelSizes(spatial_shapes, device).tensor


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """``value [B, S, H, D]``, ``spatial_shapes [L, 2]`` (h, w per level, int64, ``S = sum h*w``;
    or a list of ``(h, w)``),
    ``level_start_index [L]`` (unused here: the split follows ``spatial_shapes``),
    ``sampling_locations [B, Q, H, L, P, 2]``, ``attention_weights [B, Q, H, L, P]``
    -> ``[B, Q, H * D]``.

    As the official ``ms_deform_attn_core_pytorch``: for each query, head, level and point, the
    head's value map sampled at ``sampling_locations`` (normalised ``[0, 1]`` coordinates, ``(x, y)``)
    with ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``, i.e. pixel
    coordinate ``loc * size - 0.5`` and zero outside the map, the samples summed weighted by
    ``attention_weights``. The sampling grids of all levels are built in one go and the level sizes
    read to the host once. Without autograd each level's samples are weighted and summed as soon
    as they are taken; the official code stacks every level's samples first, a tensor ``L`` times
    one level's, twice at the peak (kept with autograd, where its backward is faster)."""
    # Mixed precision: bf16 values with fp32 locations (autocast) are sampled in the wider dtype,
    # as grid_sample needs one dtype and locations lose pixels in bf16.
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations, attention_weights))
    b, s, nh, d = value.shape
    _, q, _, nl, npts, _ = sampling_locations.shape
    shapes = level_sizes(spatial_shapes)
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} positions, value has {s}")
    value_list = value.split([h * w for h, w in shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1

    def sample(lvl: int, h: int, w: int) -> Tensor:
        """Level ``lvl``'s bilinear samples: ``[B*H, D, Q, P]``."""
        # [B, h*w, H, D] -> [B*H, D, h, w]
        value_l = value_list[lvl].flatten(2).transpose(1, 2).reshape(b * nh, d, h, w)
        # [B, Q, H, P, 2] -> [B*H, Q, P, 2]
        grid_l = sampling_grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        return F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)

    if torch.is_grad_enabled() and any(t.requires_grad for t in (value, sampling_locations, attention_weights)):
        # Training: every level's samples stacked, then one weighted sum (the official order; its
        # backward is the faster one on CPUs). [B, Q, H, L, P] -> [B*H, 1, Q, L*P]
        weights = attention_weights.transpose(1, 2).reshape(b * nh, 1, q, nl * npts)
        stacked = torch.stack([sample(lvl, h, w) for lvl, (h, w) in enumerate(shapes)], dim=-2)
        out = (stacked.flatten(-2) * weights).sum(-1)
    else:
        # Inference: each level weighted and summed as soon as it is sampled (half the peak memory).
        # [B, Q, H, L, P] -> L x [B*H, 1, Q, P]
        level_weights = attention_weights.permute(3, 0, 2, 1, 4).reshape(nl, b * nh, 1, q, npts).unbind(0)
        out = sum((sample(lvl, h, w) * level_weights[lvl]).sum(-1) for lvl, (h, w) in enumerate(shapes))
    return out.view(b, nh * d, q).transpose(1, 2).contiguous()
