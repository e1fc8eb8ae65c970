"""Multi-scale deformable attention as Triton kernels, forward and backward, JIT compiled:
``ms_deform_attn_triton`` computes exactly what ``ms_deform_attn_pytorch`` computes, without its
per-level ``grid_sample`` calls and ``[B*H, D, Q, L*P]`` intermediate. With ``TRITON_INTERPRET=1``
set before Triton is imported, the kernels run in Triton's interpreter on CPU tensors (slow; the
tests' way without a GPU).

Unlike the official CUDA extension: no build step, no ``im2col_step``, fp32/bf16/fp16 (also mixed) inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _corner(
    v_base, st, xi, yi, hl, wl, mask_q, offs_d, mask_d, NH: tl.constexpr, D: tl.constexpr
):  # -> (values [BLOCK_Q, BLOCK_D] fp32, offsets [BLOCK_Q, BLOCK_D], valid mask [BLOCK_Q, BLOCK_D])
    valid = mask_q & (xi >= 0) & (xi < wl) & (yi >= 0) & (yi < hl)
    pos = (st + yi.to(tl.int64) * wl + xi.to(tl.int64)) * (NH * D)
    offs = pos[:, None] + offs_d[None, :]
    m = valid[:, None] & mask_d[None, :]
    v = tl.load(v_base + offs, mask=m, other=0.0).to(tl.float32)
    return v, offs, m


@triton.jit
def _point_coords(loc_ptr, attn_ptr, idx, mask_q, hl, wl):
    lx = tl.load(loc_ptr + 2 * idx, mask=mask_q, other=0.0).to(tl.float32)
    ly = tl.load(loc_ptr + 2 * idx + 1, mask=mask_q, other=0.0).to(tl.float32)
    aw = tl.load(attn_ptr + idx, mask=mask_q, other=0.0).to(tl.float32)
    wf = wl.to(tl.float32)
    hf = hl.to(tl.float32)
    # Clamp far-away points (all four corners outside anyway) so the integer cast cannot overflow.
    x = tl.minimum(tl.maximum(lx * wf - 0.5, -2.0), wf + 1.0)
    y = tl.minimum(tl.maximum(ly * hf - 0.5, -2.0), hf + 1.0)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    fx = x - x0f
    fy = y - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    return x0, y0, fx, fy, aw, wf, hf


# One program handles BLOCK_Q queries of one (batch, head) pair and all D channels of that head; it
# loops over levels and points, accumulating in fp32. Each (query, head, level, point) belongs to one
# program, so the gradients of sampling locations and attention weights need no atomics; the gradient
# of the value does (several queries sample the same pixel).
@triton.jit
def _ms_deform_attn_fwd_kernel(
    value_ptr,
    shapes_ptr,
    start_ptr,
    loc_ptr,
    attn_ptr,
    out_ptr,
    S,
    Q,
    NH: tl.constexpr,
    D: tl.constexpr,
    L: tl.constexpr,
    P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // NH).to(tl.int64)
    h = (pid_bh % NH).to(tl.int64)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < Q
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    v_base = value_ptr + (b * S * NH + h) * D
    qh = (b * Q + offs_q.to(tl.int64)) * NH + h  # [BLOCK_Q] row of (b, q, h)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in tl.static_range(L):
        hl = tl.load(shapes_ptr + 2 * lvl)
        wl = tl.load(shapes_ptr + 2 * lvl + 1)
        st = tl.load(start_ptr + lvl)
        for p in tl.static_range(P):
            idx = (qh * L + lvl) * P + p
            x0, y0, fx, fy, aw, wf, hf = _point_coords(loc_ptr, attn_ptr, idx, mask_q, hl, wl)
            v00, _, _ = _corner(v_base, st, x0, y0, hl, wl, mask_q, offs_d, mask_d, NH, D)
            v01, _, _ = _corner(v_base, st, x0 + 1, y0, hl, wl, mask_q, offs_d, mask_d, NH, D)
            v10, _, _ = _corner(v_base, st, x0, y0 + 1, hl, wl, mask_q, offs_d, mask_d, NH, D)
            v11, _, _ = _corner(v_base, st, x0 + 1, y0 + 1, hl, wl, mask_q, offs_d, mask_d, NH, D)
            w00 = (1.0 - fx) * (1.0 - fy)
            w01 = fx * (1.0 - fy)
            w10 = (1.0 - fx) * fy
            w11 = fx * fy
            sampled = w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
            acc += aw[:, None] * sampled
    out_offs = qh[:, None] * D + offs_d[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_d[None, :])


@triton.jit
def _ms_deform_attn_bwd_kernel(
    value_ptr,
    shapes_ptr,
    start_ptr,
    loc_ptr,
    attn_ptr,
    grad_out_ptr,
    grad_value_ptr,  # fp32 [B, S, H, D], accumulated atomically
    grad_loc_ptr,  # fp32 [B, Q, H, L, P, 2]
    grad_attn_ptr,  # fp32 [B, Q, H, L, P]
    S,
    Q,
    NH: tl.constexpr,
    D: tl.constexpr,
    L: tl.constexpr,
    P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // NH).to(tl.int64)
    h = (pid_bh % NH).to(tl.int64)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < Q
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    v_base = value_ptr + (b * S * NH + h) * D
    gv_base = grad_value_ptr + (b * S * NH + h) * D
    qh = (b * Q + offs_q.to(tl.int64)) * NH + h
    go = tl.load(
        grad_out_ptr + qh[:, None] * D + offs_d[None, :], mask=mask_q[:, None] & mask_d[None, :], other=0.0
    ).to(tl.float32)
    for lvl in tl.static_range(L):
        hl = tl.load(shapes_ptr + 2 * lvl)
        wl = tl.load(shapes_ptr + 2 * lvl + 1)
        st = tl.load(start_ptr + lvl)
        for p in tl.static_range(P):
            idx = (qh * L + lvl) * P + p
            x0, y0, fx, fy, aw, wf, hf = _point_coords(loc_ptr, attn_ptr, idx, mask_q, hl, wl)
            v00, o00, m00 = _corner(v_base, st, x0, y0, hl, wl, mask_q, offs_d, mask_d, NH, D)
            v01, o01, m01 = _corner(v_base, st, x0 + 1, y0, hl, wl, mask_q, offs_d, mask_d, NH, D)
            v10, o10, m10 = _corner(v_base, st, x0, y0 + 1, hl, wl, mask_q, offs_d, mask_d, NH, D)
            v11, o11, m11 = _corner(v_base, st, x0 + 1, y0 + 1, hl, wl, mask_q, offs_d, mask_d, NH, D)
            w00 = (1.0 - fx) * (1.0 - fy)
            w01 = fx * (1.0 - fy)
            w10 = (1.0 - fx) * fy
            w11 = fx * fy
            sampled = w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
            tl.store(grad_attn_ptr + idx, tl.sum(go * sampled, axis=1), mask=mask_q)
            g = go * aw[:, None]
            d_fx = (1.0 - fy)[:, None] * (v01 - v00) + fy[:, None] * (v11 - v10)
            d_fy = (1.0 - fx)[:, None] * (v10 - v00) + fx[:, None] * (v11 - v01)
            tl.store(grad_loc_ptr + 2 * idx, tl.sum(g * d_fx, axis=1) * wf, mask=mask_q)
            tl.store(grad_loc_ptr + 2 * idx + 1, tl.sum(g * d_fy, axis=1) * hf, mask=mask_q)
            tl.atomic_add(gv_base + o00, g * w00[:, None], mask=m00)
            tl.atomic_add(gv_base + o01, g * w01[:, None], mask=m01)
            tl.atomic_add(gv_base + o10, g * w10[:, None], mask=m10)
            tl.atomic_add(gv_base + o11, g * w11[:, None], mask=m11)


_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)


def _launch_config(q: int, d: int) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(d)
    block_q = max(1, min(64, 2048 // block_d))
    block_q = min(block_q, triton.next_power_of_2(max(q, 1)))
    num_warps = 4 if block_q * block_d >= 1024 else 2
    return block_q, block_d, num_warps


def _check(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor) -> None:
    for name, t in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if t.dtype not in _SUPPORTED:
            raise TypeError(f"ms_deform_attn (triton): {name} has dtype {t.dtype}; supported: fp32, bf16, fp16")
    if not (value.device == sampling_locations.device == attention_weights.device):
        raise ValueError("ms_deform_attn (triton): all tensors must be on one device")


class MSDeformAttnTritonFunction(torch.autograd.Function):
    """Autograd wrapper: gradients for ``value``, ``sampling_locations`` and ``attention_weights``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        _check(value, sampling_locations, attention_weights)
        value = value.contiguous()
        sampling_locations = sampling_locations.contiguous()
        attention_weights = attention_weights.contiguous()
        spatial_shapes = spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous()
        level_start_index = level_start_index.to(device=value.device, dtype=torch.int64).contiguous()
        b, s, nh, d = value.shape
        _, q, _, nl, npts, _ = sampling_locations.shape
        out = torch.empty((b, q, nh * d), dtype=value.dtype, device=value.device)
        block_q, block_d, num_warps = _launch_config(q, d)
        grid = (triton.cdiv(q, block_q), b * nh)
        _ms_deform_attn_fwd_kernel[grid](
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out,
            s, q, NH=nh, D=d, L=nl, P=npts, BLOCK_Q=block_q, BLOCK_D=block_d, num_warps=num_warps,
        )  # fmt: skip
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        b, s, nh, d = value.shape
        _, q, _, nl, npts, _ = sampling_locations.shape
        grad_out = grad_out.contiguous()
        # fp32 atomic adds into an fp32 buffer, cast to the value's dtype at the end
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        grad_loc = torch.empty(sampling_locations.shape, dtype=torch.float32, device=value.device)
        grad_attn = torch.empty(attention_weights.shape, dtype=torch.float32, device=value.device)
        block_q, block_d, num_warps = _launch_config(q, d)
        grid = (triton.cdiv(q, block_q), b * nh)
        _ms_deform_attn_bwd_kernel[grid](
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_out,
            grad_value, grad_loc, grad_attn,
            s, q, NH=nh, D=d, L=nl, P=npts, BLOCK_Q=block_q, BLOCK_D=block_d, num_warps=num_warps,
        )  # fmt: skip
        return (
            grad_value.to(value.dtype),
            None,
            None,
            grad_loc.to(sampling_locations.dtype),
            grad_attn.to(attention_weights.dtype),
        )


def ms_deform_attn_triton(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Same signature and result as ``ms_deform_attn_pytorch``: ``value [B, S, H, D]``,
    ``spatial_shapes [L, 2]``, ``level_start_index [L]``, ``sampling_locations [B, Q, H, L, P, 2]``,
    ``attention_weights [B, Q, H, L, P]`` -> ``[B, Q, H * D]`` in ``value``'s dtype."""
    return MSDeformAttnTritonFunction.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
