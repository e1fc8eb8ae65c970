"""Faster dropout for CPU training: ``use_fast_dropout`` (``main.py --fast_dropout``, opt-in).

PyTorch's CPU dropout draws one 32-bit number per element from its Mersenne-Twister generator,
serially on one core, into a float mask that it then rescales and multiplies in: at the official
augmentation's sizes the encoder's attention weights hold 10-25 million elements per layer, and
dropout took about 12% of a ResNet-18 DETR training step on a 2-core CPU (``docs/results.md``).
Here each 64-bit draw of the same generator gives four 16-bit uniform numbers, the mask is a
``bool`` tensor (kept for the backward pass: a quarter of the float mask's memory) and it is
applied with one ``where`` and the rescaling folded into a smaller tensor where possible; about
3x faster per dropout.

What differs from ``torch.nn.functional.dropout``:

* the random stream: another use of the default CPU generator, so a run is reproducible with the
  same seed (and resumes exactly: the generator's state is in the checkpoint) but is not the
  official code's run bit for bit. That is why it is opt-in;
* the drop probability is ``p`` rounded to a multiple of 1/65536 (``p = 0.1``: 0.1000061), and
  the kept values are scaled by ``1 / (1 - that)`` so that the expectation is unchanged.

Only CPU tensors in training mode take the fast path; elsewhere (eval mode, ``p = 0``, CUDA whose
dropout is already a fused kernel) the modules run PyTorch's code. ``use_fast_dropout(model)``
switches the class of every ``nn.Dropout`` and ``nn.MultiheadAttention`` in place (parameters,
``state_dict`` and checkpoints unchanged, as ``--fold_frozen_bn`` does). The attention runs its
weights explicitly when it drops some of them: in-projection, ``baddbmm`` with the padding mask,
softmax, mask, ``bmm``, out-projection; the arithmetic of ``need_weights=True`` in
``torch.nn.functional.multi_head_attention_forward``, which the official code calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.optimize import swap_module_classes

_LEVELS = 1 << 16  # a 16-bit number decides each element


def drop_threshold(p: float) -> int:
    """The number of the 65536 16-bit values that drop an element: ``round(p * 65536)``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    return round(p * _LEVELS)


def keep_scale(p: float) -> float:
    """``1 / (1 - p')`` with ``p'`` the drop probability actually used (``drop_threshold(p) / 65536``)."""
    kept = _LEVELS - drop_threshold(p)
    return _LEVELS / kept if kept else 0.0


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None) -> Tensor:
    """A ``bool`` CPU tensor of ``shape``, each element ``False`` (dropped) with probability
    ``drop_threshold(p) / 65536``, from 16-bit slices of 64-bit draws of ``generator`` (default: the
    global CPU generator)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)  # the full 64-bit range
    uniform16 = words.view(torch.int16)[:n].view(shape)  # int16: -32768 ... 32767, each equally likely
    return uniform16 >= drop_threshold(p) - (_LEVELS >> 1)


def _fast(x: Tensor, p: float, training: bool) -> bool:
    return training and p > 0.0 and x.device.type == "cpu"


def fast_dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with the 16-bit masks of ``keep_mask`` on CPU tensors (any
    shape, float dtype); PyTorch's dropout elsewhere."""
    if not _fast(x, p, training):
        return F.dropout(x, p, training)
    if p == 1.0:
        return x * 0.0
    return torch.where(keep_mask(x.shape, p), x, 0.0).mul_(keep_scale(p))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with ``fast_dropout`` (same ``p``, same ``state_dict``: none)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return fast_dropout(x, self.p, self.training)


class FastDropoutMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention-weight dropout uses ``keep_mask`` while training on
    a CPU. Handles what DETR and Deformable DETR call: sequence-first inputs ``[L, B, E]``, equal
    embedding sizes, a ``key_padding_mask [B, S]`` and/or an ``attn_mask`` ``[L, S]`` or
    ``[B * heads, L, S]`` (bool: True is masked, or float added to the scores), no weights
    returned; any other call runs PyTorch's code."""

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        plain = (
            not _fast(query, self.dropout, self.training)
            or need_weights
            or is_causal
            or self.batch_first
            or not self._qkv_same_embed_dim
            or self.bias_k is not None
            or self.add_zero_attn
            or query.dim() != 3
        )
        if plain:
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        return self._forward_fast_dropout(query, key, value, key_padding_mask, attn_mask), None

    def _forward_fast_dropout(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None, attn_mask: Tensor | None
    ) -> Tensor:
        """``query [L, B, E]``, ``key``/``value [S, B, E]`` -> ``[L, B, E]``."""
        (length, batch, embed), source = query.shape, key.shape[0]
        heads, head_dim = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, w_q, b_q).reshape(length, batch * heads, head_dim).transpose(0, 1)
        k = F.linear(key, w_k, b_k).reshape(source, batch * heads, head_dim).transpose(0, 1)
        v = F.linear(value, w_v, b_v).reshape(source, batch * heads, head_dim).transpose(0, 1)
        bias = _score_bias(key_padding_mask, attn_mask, batch, heads, query.dtype)
        q = q * (1.0 / math.sqrt(head_dim))
        scores = torch.bmm(q, k.transpose(1, 2)) if bias is None else torch.baddbmm(bias, q, k.transpose(1, 2))
        weights = scores.softmax(dim=-1)  # [B * heads, L, S]
        weights = torch.where(keep_mask(weights.shape, self.dropout), weights, 0.0)
        out = torch.bmm(weights, v).mul_(keep_scale(self.dropout))  # the rescaling on [B * heads, L, d]
        out = out.transpose(0, 1).reshape(length, batch, embed)
        return self.out_proj(out)


def _score_bias(
    key_padding_mask: Tensor | None, attn_mask: Tensor | None, batch: int, heads: int, dtype: torch.dtype
) -> Tensor | None:
    """The additive score mask, ``[1 or B * heads, 1 or L, S]``: ``-inf`` where a bool mask is True."""

    def additive(mask: Tensor) -> Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
        return mask.to(dtype)

    bias = None
    if attn_mask is not None:
        bias = additive(attn_mask)
        bias = bias.unsqueeze(0) if bias.dim() == 2 else bias
    if key_padding_mask is not None:
        source = key_padding_mask.shape[-1]
        padding = additive(key_padding_mask).view(batch, 1, 1, source).expand(batch, heads, 1, source)
        padding = padding.reshape(batch * heads, 1, source)
        bias = padding if bias is None else bias + padding
    return bias


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Dropout: FastDropout,
    nn.MultiheadAttention: FastDropoutMultiheadAttention,
}


def use_fast_dropout(model: nn.Module) -> int:
    """Switch every ``nn.Dropout`` and ``nn.MultiheadAttention`` of ``model`` (exact classes, not
    subclasses) to the fast-dropout classes, in place; returns how many modules were switched."""
    return swap_module_classes(model, _SWAPS)


def unuse_fast_dropout(model: nn.Module) -> int:
    """Undo ``use_fast_dropout``; returns how many modules were switched back."""
    return swap_module_classes(model, {fast: plain for plain, fast in _SWAPS.items()})
