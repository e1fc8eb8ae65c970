"""TrainState: state_dict() and load_state_dict() mirror each other (model, optimizer, scheduler,
fp16 scaler, EMA, position, meters, best metric, class names), and official / version-1
checkpoints load with their meaning."""

import torch
from torch import nn

from util.ema import ModelEma
from util.train_state import TrainState


def _state(seed: int, scaler: bool = True, ema: bool = True) -> TrainState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    return TrainState(
        model, opt, sched, torch.amp.GradScaler("cpu", init_scale=2.0**seed) if scaler else None,
        ModelEma(model, decay=0.9) if ema else None, args={"batch_size": 4},
    )  # fmt: skip


def _step(state: TrainState) -> None:
    x = torch.randn(8, 3)
    loss = state.model(x).square().mean()
    state.optimizer.zero_grad()
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.ema.update(state.model)
    state.lr_scheduler.step()


def test_round_trip_restores_everything():
    a = _state(0)
    for _ in range(3):
        _step(a)
    a.mark_step(epoch=2, iterations_done=5)
    a.global_step, a.meters = (
        17,
        {"loss": {"total": 3.0, "count": 2, "window": [1.0, 2.0], "window_size": 20, "fmt": "{avg}"}},
    )
    a.best, a.id2label, a.is_thing_map = (
        {"metric": "AP", "value": 0.5, "epoch": 1, "weights": "ema"},
        {1: "cat"},
        {1: True},
    )
    saved = a.state_dict()
    assert (saved["epoch"], saved["iteration"]) == (2, 4)

    b = _state(1)  # other weights, other scale
    b.load_state_dict(saved)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    for k, v in a.ema.module.state_dict().items():
        assert torch.equal(v, b.ema.module.state_dict()[k])
    assert b.ema.updates == a.ema.updates == 3
    assert b.scaler.get_scale() == a.scaler.get_scale()
    assert b.lr_scheduler.state_dict() == a.lr_scheduler.state_dict()
    assert b.optimizer.state_dict()["param_groups"] == a.optimizer.state_dict()["param_groups"]
    assert (b.epoch, b.iterations_done, b.global_step, b.best, b.id2label) == (2, 5, 17, a.best, {1: "cat"})
    assert b.meters == a.meters and b.next_position() == (2, 5)
    # and what b saves now is what a saved (the two methods mirror each other)
    again = b.state_dict()
    assert set(again) == set(saved)
    assert again["meters_per_rank"] == saved["meters_per_rank"] and again["scaler"] == saved["scaler"]


def test_epoch_boundary_positions():
    s = _state(0, scaler=False, ema=False)
    s.mark_trained(3, {"loss": 1.0})
    saved = s.state_dict()
    assert (saved["epoch"], saved["iteration"], saved["evaluated"], saved["train_stats"]) == (
        3,
        None,
        False,
        {"loss": 1.0},
    )
    t = _state(1, scaler=False, ema=False)
    t.load_state_dict(saved)
    assert t.next_position() == (4, 0) and not t.evaluated and t.train_stats == {"loss": 1.0}
    t.mark_evaluated()
    assert t.state_dict()["evaluated"] is True


def test_official_checkpoint_means_epoch_finished_and_evaluated():
    s = _state(0, scaler=True, ema=True)
    official = {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                "lr_scheduler": s.lr_scheduler.state_dict(), "epoch": 7}  # fmt: skip
    t = _state(1, scaler=True, ema=True)
    notes = t.load_state_dict(official, "official.pth")
    assert t.next_position() == (8, 0) and t.evaluated
    assert any("loss-scaler" in n for n in notes) and any("EMA" in n for n in notes)
    for k, v in s.model.state_dict().items():  # EMA starts from the loaded weights
        assert torch.equal(t.ema.module.state_dict()[k], v)


def test_weights_only_checkpoint_says_the_optimizer_starts_fresh():
    """checkpoint_best.pth holds no optimizer state: resuming it says so in one line."""
    s = _state(0)
    notes = _state(1).load_state_dict({"model": s.model.state_dict(), "epoch": 3}, "checkpoint_best.pth")
    fresh = [n for n in notes if "optimizer" in n]
    assert fresh == [
        "checkpoint_best.pth holds weights only (no optimizer state): the optimizer and learning-rate "
        "schedule start fresh from this run's settings"
    ]
    assert not any("optimizer" in n for n in _state(1).load_state_dict(s.state_dict(), "checkpoint.pth"))
