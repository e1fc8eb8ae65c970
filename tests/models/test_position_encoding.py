"""Sine and learned position encodings: formula, padding invariance, shapes."""

import math

import pytest
import torch

from models.position_encoding import (
    PositionEmbeddingLearned,
    PositionEmbeddingSine,
    PositionEncodingConfig,
    build_position_encoding,
)
from util.misc import NestedTensor


def _nt(h, w, valid_h, valid_w):
    mask = torch.ones(1, h, w, dtype=torch.bool)
    mask[:, :valid_h, :valid_w] = False
    return NestedTensor(torch.zeros(1, 8, h, w), mask)


def test_sine_formula_unnormalized():
    pe = PositionEmbeddingSine(num_pos_feats=4, temperature=100)
    pos = pe(_nt(3, 5, 3, 5))
    assert pos.shape == (1, 8, 3, 5)
    # channel layout: [y sin/cos interleaved (4), x (4)]; x coordinate of column c is c + 1
    c = 2
    x = float(c + 1)
    dims = [100 ** (2 * (i // 2) / 4) for i in range(4)]
    expected = [math.sin(x / dims[0]), math.cos(x / dims[1]), math.sin(x / dims[2]), math.cos(x / dims[3])]
    torch.testing.assert_close(pos[0, 4:, 0, c], torch.tensor(expected))


def test_sine_normalized_ignores_padding():
    pe = PositionEmbeddingSine(num_pos_feats=16, normalize=True)
    unpadded = pe(_nt(4, 6, 4, 6))
    padded = pe(_nt(7, 9, 4, 6))
    torch.testing.assert_close(padded[..., :4, :6], unpadded)
    # normalised coordinates end at scale (2*pi) on the last valid row/column
    y_last = pe.scale * 4 / (4 + 1e-6)
    torch.testing.assert_close(unpadded[0, 0, 3, 0], torch.tensor(math.sin(y_last)))


def test_deformable_offset_variant():
    base = PositionEmbeddingSine(8, normalize=True)(_nt(4, 4, 4, 4))
    shifted = PositionEmbeddingSine(8, normalize=True, offset=-0.5)(_nt(4, 4, 4, 4))
    assert not torch.allclose(base, shifted)
    y = (1 - 0.5) / (4 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(shifted[0, 0, 0, 0], torch.tensor(math.sin(y)))


def test_learned_and_builder():
    pe = build_position_encoding(PositionEncodingConfig(kind="learned", hidden_dim=32))
    assert isinstance(pe, PositionEmbeddingLearned)
    assert pe(_nt(5, 7, 5, 7)).shape == (1, 32, 5, 7)
    with pytest.raises(ValueError, match="--position_embedding"):
        build_position_encoding(PositionEncodingConfig(kind="rope"))
    with pytest.raises(ValueError, match="normalize"):
        PositionEmbeddingSine(scale=1.0)
