"""A model from any checkpoint: this project's, an official one, a bare state dict, a Hugging Face
folder or a hub entry name.

``read_checkpoint`` reads one; ``checkpoint_settings`` says which settings it determines (stored, or
read off the weights by ``architecture_from_state_dict``); ``build_model_from_checkpoint`` rebuilds
its model with those settings and loads its weights strictly. ``main.py``, ``hubconf`` and the tools
all go through these. Not in the official code, which needs every flag repeated on the command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from models import architecture_from_state_dict, build_model
from util import config
from util.checkpoint import CheckpointError, load_checkpoint, load_model_state, model_state_from_checkpoint


def read_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint by path, URL, Hugging Face checkpoint folder (converted on the fly) or hub entry
    name with pretrained weights (``--finetune detr_resnet50``). Raises ``CheckpointError`` (or the
    converter's ``ConversionError``) naming it."""
    from models.hf_convert import checkpoint_from_hf
    from models.pretrained import pretrained_checkpoint, pretrained_names

    if path in pretrained_names():
        return pretrained_checkpoint(path)
    if Path(path).is_dir() and (Path(path) / "config.json").is_file():
        return checkpoint_from_hf(path)
    return load_checkpoint(path)


# Settings the weights determine unambiguously: a stored value that disagrees is an error.
_SHAPE_SETTINGS = ("model", "masks", "hidden_dim", "enc_layers", "dec_layers", "dim_feedforward", "num_queries",
                   "num_feature_levels", "two_stage", "with_box_refine", "pre_norm", "enc_n_points", "dec_n_points")  # fmt: skip


def checkpoint_settings(ckpt: dict[str, Any], source: str) -> tuple[dict[str, Any], bool]:
    """The settings a checkpoint determines, and whether it is an official one. This project's
    checkpoints store theirs as a dict; official ones an ``argparse.Namespace`` of which only the
    architecture is used. What the weights' keys and shapes tell (``architecture_from_state_dict``)
    fills the gaps and wins for ``num_classes``, read off the class head; a stored setting that the
    weights contradict is a ``CheckpointError`` naming both."""
    stored = ckpt.get("args")
    official = not isinstance(stored, dict)
    values = dict(vars(stored)) if isinstance(stored, argparse.Namespace) else dict(stored or {})
    if official:
        architecture = config.all_settings(config.ARCHITECTURE)
        values = {k: v for k, v in values.items() if k in architecture and k != "num_classes"}
    state = model_state_from_checkpoint(ckpt, source)
    model = architecture_from_state_dict(state)["model"]
    nheads = values.get("nheads") or config.ModelConfig.preset(model).nheads
    inferred = architecture_from_state_dict(state, nheads)
    if "num_classes" in inferred:
        values["num_classes"] = inferred.pop("num_classes")
    conflicts = [f"--{k} {values[k]} in its settings but {inferred[k]} in its weights" for k in _SHAPE_SETTINGS
                 if values.get(k) is not None and k in inferred and values[k] != inferred[k]]  # fmt: skip
    if conflicts:
        raise CheckpointError(f"{source}: " + "; ".join(conflicts))
    return {**inferred, **values}, official


@dataclass
class LoadedModel:
    """A checkpoint's model in eval mode, its post-processors, settings and class names."""

    model: nn.Module
    postprocessors: dict[str, nn.Module]
    args: argparse.Namespace
    id2label: dict[int, str]
    source: str


def build_model_from_checkpoint(
    checkpoint: str | Path, overrides: dict[str, Any] | None = None, device: str = "cpu", weights: str = "model"
) -> LoadedModel:
    """Rebuild a checkpoint's model from the settings it determines and load its weights strictly.
    ``overrides`` (setting -> value) win over the stored settings, as flags given on the command
    line do; a conflict with the weights is an error listing the keys. ``weights="ema"`` loads the
    EMA weights of a checkpoint trained with ``--ema``. Raises ``CheckpointError`` for a file that
    is not a model checkpoint."""
    source = str(checkpoint)
    ckpt = read_checkpoint(source)
    args = config.default_args(**(overrides or {}))
    stored, official = checkpoint_settings(ckpt, source)
    notes, _ = config.inherit(args, set(overrides or {}), stored, "eval", official)
    for note in notes:
        print(f"{source}: {note}")
    args.device, args.backbone_weights, args.resume = device, "none", source
    args = config.resolve(args)
    if args.num_classes is None:
        raise CheckpointError(f"{source}: cannot tell the number of classes from its weights; pass num_classes")
    is_thing_map = ckpt.get("is_thing_map")
    if args.masks and is_thing_map is None and args.num_classes == 250:  # official panoptic COCO models
        is_thing_map = {i: i <= 90 for i in range(250)}
    args.panoptic_is_thing_map = is_thing_map
    model, _, postprocessors = build_model(args)
    if weights == "ema":
        if "model_ema" not in ckpt:
            raise CheckpointError(f"{source} has no EMA weights (it was not trained with --ema)")
        state = ckpt["model_ema"]["model"]
    else:
        state = model_state_from_checkpoint(ckpt, source)
    load_model_state(model, state, source)
    id2label = {int(k): str(v) for k, v in (ckpt.get("id2label") or {}).items()}
    return LoadedModel(model.to(device).eval(), postprocessors, args, id2label, source)
