"""Helpers for the golden parity tests: load a fixture from ``../shared/golden`` (skip when the
folder is absent), fill a model's weights with the fixture's rule, and build args from its config."""

from __future__ import annotations

import argparse
import math
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_golden(name: str) -> dict:
    path = GOLDEN_DIR / name
    if not path.is_file():
        pytest.skip(f"golden fixture {path} not present")
    return torch.load(path, weights_only=True)


def fill_value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixture's deterministic weight for ``key`` (see shared/golden/README.md)."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    if key.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def fill_golden_weights(model: nn.Module) -> None:
    state = model.state_dict()
    new = {k: fill_value(k, tuple(v.shape)) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(new, strict=True)
    model.eval()


def golden_args(config: dict, **overrides: object) -> argparse.Namespace:
    """The project's default arguments, updated with the fixture's official config."""
    from main import get_args_parser

    args = get_args_parser().parse_args([])
    for k, v in {**config, **overrides}.items():
        setattr(args, k, v)
    args.backbone_weights = "none"
    return args
