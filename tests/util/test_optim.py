"""The multi-tensor optimizer and clipping give the official per-tensor loop's numbers, bit for bit;
the fused one differs by rounding only, measured against the size of the steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from util.optim import (
    build_optimizer,
    clip_grad_norm,
    load_optimizer_state,
    optimizer_param_names,
    remap_optimizer_state,
)


def _train(model: nn.Module, make_opt, clip, steps: int = 3) -> nn.Module:
    model = copy.deepcopy(model)
    opt = make_opt([{"params": list(model[0].parameters()), "lr": 1e-3},
                    {"params": list(model[2].parameters()), "lr": 1e-4}])  # fmt: skip
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 3, 12, 12, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        clip(model.parameters())
        opt.step()
    return model


@pytest.mark.parametrize("sgd", [False, True])
def test_foreach_matches_the_official_loop_exactly(sgd):
    torch.manual_seed(0)
    # No bias before the BatchNorm (as in ResNets): BatchNorm removes it, so its gradient would be zero
    # up to rounding, and Adam turns such noise into full steps of random sign.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3), nn.Flatten())

    def official(groups):
        if sgd:
            return torch.optim.SGD(groups, lr=1e-3, momentum=0.9, weight_decay=1e-4, foreach=False)
        return torch.optim.AdamW(groups, lr=1e-3, weight_decay=1e-4, foreach=False)

    ref = _train(model, official, lambda p: torch.nn.utils.clip_grad_norm_(p, 0.1, foreach=False))
    ours = _train(model, lambda g: build_optimizer(g, 1e-3, 1e-4, sgd=sgd), lambda p: clip_grad_norm(p, 0.1))
    opt = build_optimizer([{"params": list(model.parameters())}], 1e-3, 1e-4, sgd=sgd)
    assert opt.defaults["foreach"] is True
    for (name, a), b in zip(ref.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), name
    fused = _train(
        model, lambda g: build_optimizer(g, 1e-3, 1e-4, sgd=sgd, fused=True), lambda p: clip_grad_norm(p, 0.1)
    )
    _assert_close_to_the_steps_taken(model, ref, fused, steps=3)


def _assert_close_to_the_steps_taken(start: nn.Module, ref: nn.Module, other: nn.Module, steps: int) -> None:
    """The fused kernel rounds differently, by an amount that depends on the CPU's vector
    instructions, and Adam's step ``m / (sqrt(v) + eps)`` is about +-lr whatever the gradient's
    size: the difference is measured against the steps, not the weights. No weight is further
    than 1% of one step (``lr``) from the reference, and each tensor's difference is under 0.1% of
    how far the reference moved it (about 4e-5 and 1e-6 on the machines measured)."""
    lrs = {"0.": 1e-3, "2.": 1e-4}  # the learning rates of ``_train``'s two groups
    initial, ours = start.state_dict(), other.state_dict()
    for name, a in ref.state_dict().items():
        b = ours[name]
        lr = next((v for prefix, v in lrs.items() if name.startswith(prefix)), None)
        if lr is None:  # BatchNorm (not optimized): running statistics of inputs that differ by rounding
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
            continue
        moved, diff = (a - initial[name]).norm(), (b - a)
        assert moved > 0, name
        assert diff.abs().max() <= 0.01 * lr, f"{name}: {diff.abs().max():.3g} from the reference (step size {lr})"
        assert diff.norm() <= 1e-3 * moved, f"{name}: {diff.norm():.3g} from the reference, which moved {moved:.3g}"


def test_clip_grad_norm_returns_the_total_norm_and_clips():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    q = nn.Parameter(torch.zeros(2))  # no gradient: ignored
    norm = clip_grad_norm([p, q], max_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0]), rtol=1e-5, atol=1e-6)


def test_resuming_an_official_optimizer_state_keeps_the_fast_kernels():
    model = nn.Linear(3, 2)
    official = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    official.step()
    ours = build_optimizer([{"params": list(model.parameters())}], 1e-3, 1e-4)
    load_optimizer_state(ours, official.state_dict())
    assert ours.param_groups[0]["foreach"] is True and ours.param_groups[0]["weight_decay"] == 0.01
    assert torch.equal(ours.state[model.weight]["exp_avg"], official.state[model.weight]["exp_avg"])


def test_optimizer_state_is_matched_by_name_when_the_trained_parameters_change():
    """Groups [0.*] and [2.*]; resumed with 0.weight frozen: 0.bias and 2.* keep their Adam state,
    0.weight leaves the optimizer, each group keeps its learning rate."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = build_optimizer([{"params": list(model[0].parameters()), "lr": 1e-3},
                           {"params": list(model[2].parameters()), "lr": 1e-4}], 1e-3, 0.0)  # fmt: skip
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    saved, saved_names = opt.state_dict(), optimizer_param_names(opt, model)
    assert saved_names == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]

    model[0].weight.requires_grad_(False)
    new = build_optimizer([{"params": [model[0].bias], "lr": 1e-3},
                           {"params": list(model[2].parameters()), "lr": 1e-4}], 1e-3, 0.0)  # fmt: skip
    names = optimizer_param_names(new, model)
    remapped, notes = remap_optimizer_state(saved, saved_names, names)
    load_optimizer_state(new, remapped)
    assert notes == ["1 parameter tensors no longer trained: their optimizer state is dropped"]
    for p, old in ((model[0].bias, 1), (model[2].weight, 2), (model[2].bias, 3)):
        assert torch.equal(new.state[p]["exp_avg"], saved["state"][old]["exp_avg"])
    assert [g["lr"] for g in new.param_groups] == [1e-3, 1e-4]
    with pytest.raises(ValueError, match="2 parameter groups, this run's 1"):
        remap_optimizer_state(saved, saved_names, [["0.bias"]])
