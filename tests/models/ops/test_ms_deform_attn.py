"""Multi-scale deformable attention: the PyTorch reference against a naive per-point bilinear
implementation (locations inside and outside ``[0, 1]``), gradcheck in float64, the Triton kernels
(forward and the three gradients) against the reference in fp32 and bf16 (Triton's interpreter on
CPU when there is no GPU, the real kernels on CUDA), and implementation selection."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Triton's interpreter must be chosen before Triton itself is imported (its standard library is
# decorated at import time), so decide here, at collection: interpreter on CPU when there is no GPU.
_INTERPRET = not torch.cuda.is_available()
_TRITON_IMPORTED_EARLY = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if _INTERPRET and not _TRITON_IMPORTED_EARLY:
    os.environ["TRITON_INTERPRET"] = "1"

from models.ops import MS_DEFORM_ATTN_IMPLS, MSDeformAttn, ms_deform_attn, resolve_impl  # noqa: E402
from models.ops.ms_deform_attn_pytorch import ms_deform_attn_pytorch  # noqa: E402

SHAPES = [(6, 5), (3, 4), (2, 1)]


def make_inputs(b=2, nh=2, d=4, q=5, p=3, shapes=SHAPES, dtype=torch.float32, device="cpu", seed=0, spread=1.6):
    """Random inputs; sampling locations span ``[-(spread-1)/2, 1 + (spread-1)/2]`` (some outside the map)."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    start = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
    s = int(spatial_shapes.prod(1).sum())
    nl = len(shapes)
    value = torch.randn(b, s, nh, d, generator=g)
    loc = torch.rand(b, q, nh, nl, p, 2, generator=g) * spread - (spread - 1) / 2
    attn = torch.rand(b, q, nh, nl, p, generator=g)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    to = {"dtype": dtype, "device": device}
    return value.to(**to), spatial_shapes.to(device), start.to(device), loc.to(**to), attn.to(**to)


def naive(value, spatial_shapes, level_start_index, loc, attn):
    """Loop over levels and points; explicit bilinear interpolation with zero padding
    (pixel coordinate = loc * size - 0.5, the ``align_corners=False`` convention)."""
    b, _, nh, d = value.shape
    _, q, _, nl, npts, _ = loc.shape
    out = value.new_zeros(b, q, nh, d)
    bi = torch.arange(b)[:, None, None]
    hi = torch.arange(nh)[None, None, :]
    for lvl in range(nl):
        h, w = (int(x) for x in spatial_shapes[lvl])
        st = int(level_start_index[lvl])
        for p in range(npts):
            x = loc[:, :, :, lvl, p, 0] * w - 0.5
            y = loc[:, :, :, lvl, p, 1] * h - 0.5
            x0, y0 = x.floor(), y.floor()
            for dx in (0, 1):
                for dy in (0, 1):
                    xi, yi = x0 + dx, y0 + dy
                    wx = (x - x0) if dx else (1 - (x - x0))
                    wy = (y - y0) if dy else (1 - (y - y0))
                    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                    idx = (st + yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
                    v = value[bi, idx, hi]  # [B, Q, H, D]
                    coef = (wx * wy * valid * attn[:, :, :, lvl, p])[..., None]
                    out = out + coef * v
    return out.flatten(2)


def test_pytorch_matches_naive_inside_and_outside():
    inputs = make_inputs(spread=2.0)  # locations in [-0.5, 1.5]
    assert ((inputs[3] < 0) | (inputs[3] > 1)).any()
    torch.testing.assert_close(ms_deform_attn_pytorch(*inputs), naive(*inputs), atol=1e-5, rtol=1e-5)


def test_pytorch_gradcheck_float64():
    value, shapes, start, loc, attn = make_inputs(
        b=1, nh=2, d=2, q=3, p=2, shapes=[(3, 4), (2, 2)], dtype=torch.float64
    )
    value.requires_grad_()
    loc.requires_grad_()
    attn.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, lo, a: ms_deform_attn_pytorch(v, shapes, start, lo, a), (value, loc, attn), eps=1e-6, atol=1e-5
    )


def test_resolve_impl():
    assert resolve_impl("auto", "cpu") == "pytorch"
    assert resolve_impl("pytorch") == "pytorch"
    assert set(MS_DEFORM_ATTN_IMPLS) == {"pytorch", "triton"}
    with pytest.raises(ValueError, match="attn_impl"):
        resolve_impl("cuda_ext")
    inputs = make_inputs()
    torch.testing.assert_close(ms_deform_attn(*inputs, impl="auto"), ms_deform_attn_pytorch(*inputs))


@pytest.fixture(scope="module")
def triton_env():
    """The Triton module and the device to test it on: CUDA when present, else Triton's
    interpreter (``TRITON_INTERPRET=1``, set above before Triton is imported) on CPU tensors."""
    pytest.importorskip("triton", reason="triton is not installed")
    import models.ops.ms_deform_attn_triton as mod

    if torch.cuda.is_available():
        return mod, "cuda"
    if _TRITON_IMPORTED_EARLY:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; run this test file on its own")
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(mod._ms_deform_attn_fwd_kernel, InterpretedFunction):
        pytest.skip("the Triton kernels were compiled for a GPU, not the interpreter; run this file on its own")
    return mod, "cpu"


def _fwd_bwd(fn, value, shapes, start, loc, attn, grad_out=None):
    value, loc, attn = (t.detach().clone().requires_grad_() for t in (value, loc, attn))
    out = fn(value, shapes, start, loc, attn)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    out.backward(grad_out.to(out.dtype))
    return out, value.grad, loc.grad, attn.grad, grad_out


@pytest.mark.parametrize(
    ("d", "p", "shapes"),
    [(4, 3, SHAPES), (8, 2, [(5, 7), (3, 3), (2, 2), (1, 1)]), (6, 1, [(4, 4)])],  # d=6: not a power of 2
)
def test_triton_fp32_matches_pytorch(triton_env, d, p, shapes):
    mod, device = triton_env
    inputs = make_inputs(b=2, nh=3, d=d, q=9, p=p, shapes=shapes, device=device, spread=1.6)
    ref = _fwd_bwd(ms_deform_attn_pytorch, *inputs)
    ours = _fwd_bwd(mod.ms_deform_attn_triton, *inputs, grad_out=ref[-1])
    for name, a, r in zip(("out", "grad_value", "grad_loc", "grad_attn"), ours[:4], ref[:4]):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_triton_bf16_matches_pytorch_fp32(triton_env):
    """bf16 inputs, fp32 accumulation: within 2e-2 (relative to each tensor's scale) of the fp32
    reference computed on the same (bf16-rounded) inputs."""
    mod, device = triton_env
    value, shapes, start, loc, attn = make_inputs(b=2, nh=2, d=8, q=7, p=4, device=device, dtype=torch.bfloat16)
    ref = _fwd_bwd(ms_deform_attn_pytorch, value.float(), shapes, start, loc.float(), attn.float())
    ours = _fwd_bwd(mod.ms_deform_attn_triton, value, shapes, start, loc, attn, grad_out=ref[-1].bfloat16())
    for name, a, r in zip(("out", "grad_value", "grad_loc", "grad_attn"), ours[:4], ref[:4]):
        assert a.dtype == torch.bfloat16, name
        tol = 2e-2 * float(r.detach().abs().max())
        torch.testing.assert_close(a.float(), r, atol=tol, rtol=2e-2, msg=lambda m, n=name: f"{n}: {m}")


def test_module_triton_equals_pytorch_with_box_reference_points(triton_env):
    """``MSDeformAttn`` with 4-d (box) reference points and a padding mask: same output either way."""
    mod, device = triton_env
    torch.manual_seed(0)
    attn_mod = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2, impl="pytorch").to(device)
    shapes = torch.tensor([[4, 5], [2, 3]], device=device)
    start = torch.tensor([0, 20], device=device)
    src = torch.randn(2, 26, 16, device=device)
    query = torch.randn(2, 6, 16, device=device)
    ref_pts = torch.rand(2, 6, 2, 4, device=device)
    pad = torch.zeros(2, 26, dtype=torch.bool, device=device)
    pad[1, 15:20] = True
    with torch.no_grad():
        attn_mod.sampling_offsets.weight.normal_(0, 0.1)
        expected = attn_mod(query, ref_pts, src, shapes, start, pad)
        attn_mod.impl = "triton"
        got = attn_mod(query, ref_pts, src, shapes, start, pad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_non_power_of_two_head_dim_warns():
    with pytest.warns(UserWarning, match="power of 2"):
        MSDeformAttn(d_model=24, n_levels=1, n_heads=4, n_points=1)
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=30, n_heads=4)


def test_pytorch_mixed_dtypes_use_the_wider_one():
    """Under autocast the values are bf16 and the locations fp32: sampled in fp32, no dtype error."""
    value, shapes, start, loc, attn = make_inputs()
    out = ms_deform_attn_pytorch(value.bfloat16(), shapes, start, loc, attn)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value.bfloat16().float(), shapes, start, loc, attn))


def test_pytorch_inference_and_training_orders_agree():
    """Without autograd each level is summed as sampled (less memory); with it, all levels are
    stacked first (the official order): the same numbers."""
    inputs = make_inputs(spread=2.0)
    with torch.no_grad():
        inference = ms_deform_attn_pytorch(*inputs)
    value, shapes, start, loc, attn = (t.clone().requires_grad_(t.is_floating_point()) for t in inputs)
    training = ms_deform_attn_pytorch(value, shapes, start, loc, attn)
    assert training.requires_grad and not inference.requires_grad
    torch.testing.assert_close(inference, training.detach(), atol=1e-6, rtol=1e-6)
