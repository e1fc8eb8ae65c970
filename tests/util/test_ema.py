"""ModelEma: the ramped decay, floating-point entries averaged and integer buffers copied; the
warm-up of short runs ends with the run."""

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


def _short_run(tau: float, steps: int = 100) -> float:
    """The largest gap between the EMA and the weights after ``steps`` updates of moving weights."""
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    ema = ModelEma(model, decay=0.9997, tau=tau)
    for _ in range(steps):
        with torch.no_grad():
            model.weight.add_(0.01)
        ema.update(model)
    return float((ema.module.weight - model.weight).detach().abs().max())


def test_short_runs_get_a_warm_up_that_ends_with_the_run(capsys):
    from types import SimpleNamespace

    from util.ema import DEFAULT_TAU, build_ema, warmup_tau

    # 400 images, batch 4: 100 optimizer steps in one epoch
    args = SimpleNamespace(ema_decay=0.9997, epochs=1, batch_size=4, grad_accum_steps=1)
    ema = build_ema(nn.Linear(4, 4), args, num_train_images=400)
    assert (
        ema.tau == 25.0
        and "warm-up tau 25 steps, a quarter of this run's 100 optimizer steps" in capsys.readouterr().out
    )
    # the fixed 2000-step ramp: the average is the weights (5e-4 = 1/20 step behind); the scaled one
    # lags them by about 20 steps (a step moves each weight by 0.01)
    assert _short_run(DEFAULT_TAU) < 0.001 < 0.1 < _short_run(ema.tau)
    # long runs keep Ultralytics' ramp
    assert warmup_tau(50 * 7000) == DEFAULT_TAU == warmup_tau(8000) and warmup_tau(4000) == 1000
    args.epochs, args.grad_accum_steps = 400, 2
    assert build_ema(nn.Linear(4, 4), args, num_train_images=400, world_size=2).tau == DEFAULT_TAU  # 10,000 steps
