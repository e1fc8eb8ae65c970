"""models/fast_dropout.py: the 16-bit masks' statistics (every lane of the 64-bit draws), the
dropout's values and gradients, the attention's arithmetic against ``nn.MultiheadAttention``, and
the switch over whole DETR and Deformable DETR models (state_dict, eval outputs, determinism)."""

from __future__ import annotations

import copy

import pytest
import torch
from golden import golden_args
from torch import nn

from models import build_model
from models.fast_dropout import (
    FastDropout,
    FastDropoutMultiheadAttention,
    drop_threshold,
    fast_dropout,
    keep_mask,
    keep_scale,
    unuse_fast_dropout,
    use_fast_dropout,
)
from util.config import resolve


def test_threshold_and_scale() -> None:
    assert drop_threshold(0.1) == 6554 and drop_threshold(0.0) == 0 and drop_threshold(1.0) == 65536
    assert keep_scale(0.1) == pytest.approx(1 / (1 - 6554 / 65536), rel=1e-12)
    assert keep_scale(0.0) == 1.0 and keep_scale(1.0) == 0.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        drop_threshold(1.5)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_drops_p_in_every_lane(p: float) -> None:
    """Each of the four 16-bit slices of a 64-bit draw drops with probability p (a generator
    giving 63-bit numbers would never drop in the top slice); neighbouring elements independent."""
    torch.manual_seed(0)
    n = 1 << 20
    mask = keep_mask((n,), p)
    assert mask.dtype == torch.bool and mask.shape == (n,)
    expected = drop_threshold(p) / 65536
    lanes = (~mask).view(-1, 4).double().mean(0)  # drop rate per lane, 2^18 samples each
    sigma = (expected * (1 - expected) / (n / 4)) ** 0.5
    assert torch.all((lanes - expected).abs() < 5 * sigma), lanes
    dropped = (~mask).double()
    both = (dropped[:-1] * dropped[1:]).mean().item()  # neighbours: p^2 if independent
    assert abs(both - expected**2) < 5 * (expected**2 / (n - 1)) ** 0.5 + 1e-4
    torch.manual_seed(0)
    assert torch.equal(keep_mask((n,), p), mask)  # the global generator: reproducible with the seed
    generator = torch.Generator().manual_seed(0)
    assert not torch.equal(keep_mask((n,), p, generator), keep_mask((n,), p, generator))


def test_fast_dropout_values_and_gradient() -> None:
    torch.manual_seed(1)
    x = (torch.rand(64, 300) + 0.5).requires_grad_()  # no zeros: a zero output means dropped
    out = fast_dropout(x, 0.25)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] * keep_scale(0.25))
    assert abs((~kept).double().mean().item() - 0.25) < 0.02
    out.backward(torch.full_like(out, 2.0))
    torch.testing.assert_close(x.grad, kept * 2.0 * keep_scale(0.25))
    x16 = x.detach().bfloat16()
    assert fast_dropout(x16, 0.25).dtype == torch.bfloat16
    # eval mode, p = 0: the input as it is; p = 1: zeros
    assert torch.equal(fast_dropout(x, 0.25, training=False), x)
    assert torch.equal(fast_dropout(x, 0.0), x)
    assert torch.count_nonzero(fast_dropout(x, 1.0)) == 0
    module = FastDropout(0.25)
    assert torch.equal(module.eval()(x), x)


def _attention_pair(dropout: float) -> tuple[nn.MultiheadAttention, nn.MultiheadAttention]:
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(16, 4, dropout=dropout)
    nn.init.uniform_(plain.in_proj_bias, -0.5, 0.5)  # zero by default: biases would go untested
    fast = copy.deepcopy(plain)
    assert use_fast_dropout(fast) == 1 and type(fast) is FastDropoutMultiheadAttention
    return plain, fast


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:] = True
    padding[2, 2:] = True
    attn_mask = torch.zeros(6, 7, dtype=torch.bool)
    attn_mask[0, 0] = True
    return padding, attn_mask


def test_attention_matches_pytorch_without_drops() -> None:
    """A drop probability under 1/131072 drops nothing: the explicit path must then compute what
    PyTorch's attention computes (eval-mode reference), outputs and gradients, with both masks."""
    plain, fast = _attention_pair(dropout=1e-6)
    assert drop_threshold(1e-6) == 0
    plain.eval(), fast.train()
    padding, attn_mask = _masks()
    query = torch.randn(6, 3, 16, requires_grad=True)
    memory = torch.randn(7, 3, 16, requires_grad=True)
    for kwargs in ({}, {"key_padding_mask": padding}, {"key_padding_mask": padding, "attn_mask": attn_mask}):
        outs, grads = [], []
        for module in (plain, fast):
            module.zero_grad()
            query.grad = memory.grad = None
            out, weights = module(query, memory + 1.0, memory, need_weights=False, **kwargs)
            assert weights is None
            out.square().sum().backward()
            outs.append(out)
            grads.append([query.grad, memory.grad, module.in_proj_weight.grad, module.out_proj.weight.grad])
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
        for got, want in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    float_mask = torch.zeros(6, 7).masked_fill_(attn_mask, float("-inf"))
    torch.testing.assert_close(
        fast(query, memory, memory, attn_mask=float_mask, need_weights=False)[0],
        plain(query, memory, memory, attn_mask=attn_mask, need_weights=False)[0],
    )


def test_attention_drops_the_weights_with_the_packed_mask() -> None:
    """With drops: the output is the explicit formula with ``keep_mask``'s draw from the same seed."""
    _, fast = _attention_pair(dropout=0.5)
    fast.train()
    padding, _ = _masks()
    query, memory = torch.randn(6, 3, 16), torch.randn(7, 3, 16)
    torch.manual_seed(3)
    out = fast(query, memory, memory, key_padding_mask=padding, need_weights=False)[0]
    w_q, w_k, w_v = fast.in_proj_weight.chunk(3)
    b_q, b_k, b_v = fast.in_proj_bias.chunk(3)

    def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [L, 3, 16] -> [3, 4, L, 4]
        return (x @ w.T + b).reshape(x.shape[0], 3, 4, 4).permute(1, 2, 0, 3)

    q, k, v = heads(query, w_q, b_q), heads(memory, w_k, b_k), heads(memory, w_v, b_v)
    scores = (q @ k.transpose(-1, -2)) / 2.0 + torch.where(padding, float("-inf"), 0.0)[:, None, None, :]
    torch.manual_seed(3)
    keep = keep_mask((12, 6, 7), 0.5).view(3, 4, 6, 7)
    weights = scores.softmax(-1) * keep * keep_scale(0.5)
    want = fast.out_proj((weights @ v).permute(2, 0, 1, 3).reshape(6, 3, 16))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    assert 0.3 < (~keep).double().mean() < 0.7
    # what the fast path does not handle goes to PyTorch's code: the weights asked for
    out, weights = fast(query, memory, memory, need_weights=True)
    assert weights is not None and weights.shape == (3, 6, 7)


@pytest.mark.parametrize("model_name", ["detr", "deformable_detr"])
def test_whole_model_switch(model_name: str) -> None:
    """Every dropout and multi-head attention switched, the state_dict unchanged, eval outputs
    bit-identical, training reproducible with the seed and different from PyTorch's stream."""
    config = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1}
    extra = {"attn_impl": "pytorch", "num_feature_levels": 2} if model_name == "deformable_detr" else {}
    args = golden_args(config, model=model_name, num_classes=3, num_queries=5, dim_feedforward=32, **extra)
    torch.manual_seed(0)
    plain = build_model(resolve(args))[0]
    fast = copy.deepcopy(plain)
    n_dropout = sum(type(m) is nn.Dropout for m in plain.modules())
    n_attention = sum(type(m) is nn.MultiheadAttention for m in plain.modules())
    assert n_attention >= 1 and n_dropout >= 5
    assert use_fast_dropout(fast) == n_dropout + n_attention
    assert not any(type(m) in (nn.Dropout, nn.MultiheadAttention) for m in fast.modules())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    images = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref, out = plain.eval()(images), fast.eval()(images)
    assert torch.equal(out["pred_boxes"], ref["pred_boxes"]) and torch.equal(out["pred_logits"], ref["pred_logits"])
    fast.train()
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        out = fast(images)
        out["pred_logits"].sum().backward()
        runs.append(out["pred_logits"].detach())
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(5)
    assert not torch.equal(plain.train()(images)["pred_logits"], runs[0])  # another random stream
    assert unuse_fast_dropout(fast) == n_dropout + n_attention
    assert sum(type(m) is nn.Dropout for m in fast.modules()) == n_dropout
