"""The command-line flags the after-training tools share, without importing torch.

A tool defines its parser from these and parses its command line before its heavy imports, so that
``--help`` and bad arguments are answered at once (``tests/tools/test_fast_start.py``).
``tools.inference`` re-exports ``add_model_arguments``. Not in the official code, which has no such tools.
"""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The tools' common flags: ``--checkpoint`` or ``--hub`` (+ ``--pretrained``), ``--device``,
    and the evaluation sizes ``--val_size``/``--max_size`` (default: the checkpoint's)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint of this project (or an official one): path or URL")
    source.add_argument("--hub", help="a hubconf entry instead, e.g. detr_resnet50")
    parser.add_argument("--pretrained", action="store_true", help="with --hub: the published weights (download)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--val_size", type=int, default=None, help="shorter image side (default: the checkpoint's)")
    parser.add_argument("--max_size", type=int, default=None, help="longer-side cap (default: the checkpoint's)")


__all__ = ["add_model_arguments"]
