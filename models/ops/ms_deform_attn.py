"""Multi-scale deformable attention (Zhu et al., 2021): the ``MSDeformAttn`` module (official
parameter names, initialisation and forward semantics) and the functional ``ms_deform_attn``,
which runs an implementation of ``MS_DEFORM_ATTN_IMPLS`` (``pytorch`` on any device, ``triton``
on CUDA; ``impl="auto"`` picks with ``resolve_impl`` and says its choice once per process).

Unlike the official ``models/ops``: no compiled CUDA extension, and ``im2col_step`` unused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.ops.ms_deform_attn_pytorch import SpatialShapes, ms_deform_attn_pytorch, spatial_shapes_tensor

MSDeformAttnFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def _triton_impl(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    from models.ops.ms_deform_attn_triton import ms_deform_attn_triton  # imported lazily: Triton is optional

    spatial_shapes = spatial_shapes_tensor(spatial_shapes, value.device)
    return ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


MS_DEFORM_ATTN_IMPLS: dict[str, MSDeformAttnFn] = {
    "pytorch": ms_deform_attn_pytorch,
    "triton": _triton_impl,
}

_TRITON_OK: bool | None = None
_ANNOUNCED: set[tuple[str, str]] = set()


def triton_available() -> bool:
    """Whether ``import triton`` works (checked once)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton  # noqa: F401

            _TRITON_OK = True
        except Exception:  # ImportError, or a broken installation
            _TRITON_OK = False
    return _TRITON_OK


def resolve_impl(impl: str, device: torch.device | str | None = None) -> str:
    """``"auto"`` -> ``"triton"`` for CUDA tensors when Triton imports, else ``"pytorch"``;
    an explicit name is checked against ``MS_DEFORM_ATTN_IMPLS``."""
    if impl == "auto":
        is_cuda = device is not None and torch.device(device).type == "cuda"
        return "triton" if is_cuda and triton_available() else "pytorch"
    if impl not in MS_DEFORM_ATTN_IMPLS:
        raise ValueError(f"--attn_impl: unknown '{impl}', choose from {['auto', *sorted(MS_DEFORM_ATTN_IMPLS)]}")
    return impl


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    impl: str = "auto",
) -> Tensor:
    """``value [B, S, H, D]``, ``spatial_shapes [L, 2]`` (int64 h, w; or a list of ``(h, w)``),
    ``level_start_index [L]``,
    ``sampling_locations [B, Q, H, L, P, 2]`` (normalised x, y), ``attention_weights [B, Q, H, L, P]``
    -> ``[B, Q, H * D]``."""
    name = resolve_impl(impl, value.device)
    key = (name, value.device.type)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(f"ms_deform_attn: using the '{name}' implementation on {value.device.type} (requested '{impl}')")
    return MS_DEFORM_ATTN_IMPLS[name](value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def _is_power_of_2(n: int) -> bool:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"invalid input for _is_power_of_2: {n} (type: {type(n)})")
    return (n & (n - 1) == 0) and n != 0


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query attends to ``n_points`` sampled locations per
    head and level around its reference point, with learned offsets and softmax weights."""

    def __init__(
        self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, impl: str = "auto"
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, but got {d_model} and {n_heads}")
        if not _is_power_of_2(d_model // n_heads):
            warnings.warn(
                "You'd better set d_model in MSDeformAttn to make the dimension of each attention head a power of 2 "
                "which is more efficient in our CUDA implementation.",
                stacklevel=2,
            )
        resolve_impl(impl)  # validate the name early
        self.impl = impl
        self.im2col_step = 64  # the official extension's batching; kept as an attribute, unused
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Offsets start on a ring of directions (one per head), ``i + 1`` steps out for point ``i``."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid_init = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid_init = (grid_init / grid_init.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid_init = grid_init.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid_init[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid_init.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: SpatialShapes,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``query [B, Q, C]``; ``reference_points [B, Q, L, 2]`` (x, y in [0, 1], padded area
        included) or ``[B, Q, L, 4]`` (boxes: offsets scale with the box size);
        ``input_flatten [B, S, C]``, ``input_spatial_shapes [L, 2]`` (or a list of ``(h, w)``, or
        the ``LevelSizes`` ``DeformableTransformer`` passes: no device-to-host copy, sizes dynamic
        under ``torch.export``),
        ``input_level_start_index [L]``,
        ``input_padding_mask [B, S]`` (True = padding) -> ``[B, Q, C]``."""
        n, len_q, _ = query.shape
        _, len_in, _ = input_flatten.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, len_in, self.n_heads, self.d_model // self.n_heads)
        sampling_offsets = self.sampling_offsets(query).view(n, len_q, self.n_heads, self.n_levels, self.n_points, 2)
        attention_weights = self.attention_weights(query).view(n, len_q, self.n_heads, self.n_levels * self.n_points)
        attention_weights = F.softmax(attention_weights, -1).view(n, len_q, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            shapes = spatial_shapes_tensor(input_spatial_shapes, query.device)
            offset_normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
            sampling_locations = (
                reference_points[:, :, None, :, None, :]
                + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            sampling_locations = (
                reference_points[:, :, None, :, None, :2]
                + sampling_offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"Last dim of reference_points must be 2 or 4, but get {reference_points.shape[-1]} instead."
            )
        output = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, sampling_locations, attention_weights, self.impl
        )
        return self.output_proj(output)
