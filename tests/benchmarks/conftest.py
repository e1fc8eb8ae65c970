"""Shared by the benchmark tests: a stand-in with the official repositories' layout (``standin``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STANDIN_BUILD = '''

_build_model_of_this_project = build_model


def build_model(args):
    """Stand-in for the official build: COCO's 91 classes, no ImageNet download."""
    from util.config import resolve

    args.backbone_weights = "none"
    args.num_classes = getattr(args, "num_classes", None) or 91
    return _build_model_of_this_project(resolve(args))
'''


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as the official repositories are (``main.get_args_parser``/``main.main``,
    ``models.build_model``, ``engine``, ``util.misc``, ``datasets``): a copy of this project whose
    ``build_model`` behaves as the official one (COCO's 91 classes, no ImageNet download). It
    exercises the loading, the alternation and the table."""
    out = tmp_path_factory.mktemp("official") / "detr"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("models", "util", "datasets"):
        shutil.copytree(ROOT / name, out / name, ignore=ignore)
    for name in ("main.py", "engine.py", "hubconf.py"):
        shutil.copy(ROOT / name, out / name)
    with (out / "models" / "__init__.py").open("a") as f:
        f.write(STANDIN_BUILD)
    return out
