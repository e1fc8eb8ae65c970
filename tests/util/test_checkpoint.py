"""Atomic saving, weights-only loading, readable errors for bad checkpoints, RNG state."""

import argparse
import random

import pytest
import torch
from torch import nn

from util import checkpoint as ck


def test_save_is_atomic_and_loads_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    ck.save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1

    # A crash in the middle of writing leaves the previous checkpoint intact and no temp file.
    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    ck.save_checkpoint({"model": {"w": torch.ones(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ck.CheckpointError, match="truncated.pth could not be read"):
        ck.load_checkpoint(truncated)


def test_official_checkpoint_with_namespace_loads_weights_only(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=1e-4), "epoch": 3}, path)
    assert ck.load_checkpoint(path)["args"].lr == 1e-4
    with torch.serialization.safe_globals([argparse.Namespace]):  # as timm loads its weights: on exit, the
        pass  # context manager unregisters Namespace, even though it was registered before
    assert ck.load_checkpoint(path)["args"].lr == 1e-4


def test_load_model_state_lists_mismatches():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = model.state_dict()
    ck.load_model_state(model, dict(state), "ok.pth")
    bad = dict(state)
    bad["0.weight"] = torch.zeros(4, 2)
    bad.pop("1.bias")
    bad["2.weight"] = torch.zeros(1)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_model_state(model, bad, "other.pth")
    msg = str(e.value)
    assert "other.pth" in msg and "1.bias" in msg and "2.weight" in msg and "0.weight" in msg


def test_rng_state_round_trip(tmp_path):
    state = ck.get_rng_state()
    ck.save_checkpoint({"rng": state}, tmp_path / "r.pth")
    a = (random.random(), torch.rand(3))
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "r.pth")["rng"])
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
