"""Multi-scale deformable attention: the module, the functional op and its implementations
(PyTorch reference, Triton kernels). No compiled extension, unlike the official ``models/ops``."""

from models.ops.ms_deform_attn import (
    MS_DEFORM_ATTN_IMPLS,
    MSDeformAttn,
    ms_deform_attn,
    resolve_impl,
    triton_available,
)

__all__ = ["MS_DEFORM_ATTN_IMPLS", "MSDeformAttn", "ms_deform_attn", "resolve_impl", "triton_available"]
