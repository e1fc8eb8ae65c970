"""ModelEma: the ramped decay, floating-point entries averaged and integer buffers copied."""

import math

import pytest
import torch
from torch import nn

from util.ema import ModelEma


def test_average_follows_the_formula():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9, tau=10.0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 2))  # BatchNorm running stats and num_batches_tracked move
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 10.0))
    for k, v in model.state_dict().items():
        got = ema.module.state_dict()[k]
        if v.is_floating_point():
            torch.testing.assert_close(got, d * start[k] + (1 - d) * v)
        else:
            assert torch.equal(got, v)
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = ModelEma(model, decay=0.9, tau=10.0)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.module[0].weight, ema.module[0].weight)


def test_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match="--ema_decay"):
        ModelEma(nn.Linear(1, 1), decay=1.5)
