"""Train and evaluate DETR-family detectors: the official command line of facebookresearch/detr
(and, with ``--model deformable_detr``, of fundamentalvision/Deformable-DETR).

Every official flag keeps its meaning and default. Model-dependent defaults (learning rates,
epochs, queries, ...) follow ``--model``; a flag given explicitly always wins. The run's flags are
resolved once, in ``_setup`` and ``_load_data``, and not modified afterwards:

* A checkpoint given to ``--resume``, ``--eval --resume`` or ``--finetune`` supplies the flags not
  given on the command line: this project's checkpoints store them all; official ones store an
  ``argparse.Namespace`` (its architecture flags are used) and the weights' shapes tell the rest
  (``models.architecture_from_state_dict``). So ``main.py --eval --resume ckpt.pth`` needs no
  model flags. Resuming refuses an architecture flag given with another value (``--nheads``,
  ``--pre_norm``, ...), applies a changed schedule flag (``--lr``, ``--lr_drop``, ...) from the
  resumed epoch on and says so, and refuses a checkpoint that already finished ``--epochs``.
* ``--num_classes``: given, else from the checkpoint, else the data set's max category id + 1;
  checked against the training and the validation files before anything trains.

The run's state is one ``util.train_state.TrainState`` (model, optimizer, scheduler, fp16 loss
scaler, EMA, position, RNG states, running sums), saved after each epoch's training (before its
evaluation, as officially), on a stop signal and on non-finite values. Additions to the official
flags: ``--finetune`` (weights from any checkpoint or hub name, class head and queries
re-initialised when their sizes differ), ``--freeze_backbone``, ``--freeze_encoder``, ``--ema``,
``--grad_accum_steps``, ``--keep_checkpoints``, ``--tensorboard``, ``--amp``,
``--train_backbone_all`` / ``--backbone_weights`` (no ImageNet weights), smaller-image options,
``--eval_optimize`` (evaluation through ``models.optimize``), ``--coco_eval_backend``,
``--host_allocator`` (freed CPU memory kept for reuse, ``util.host_memory``), ``--fold_frozen_bn``,
``--fast_dropout``, ``--backbone_per_image``.

Preemption (not in the official code): ``SIGUSR1``, ``SIGUSR2`` (submitit/Slurm) or ``SIGTERM``
stops training after the current optimizer step (all ranks after the same one), saves a mid-epoch
``checkpoint.pth`` (the one it replaces is kept as ``checkpoint_prev.pth``) and exits with status
128 + the signal number. ``--resume auto`` continues from the newest readable checkpoint of
``--output_dir``, part-way through the epoch, with the same weights, optimizer state and log as an
uninterrupted run; an epoch whose evaluation was cut short is evaluated then. Non-finite outputs,
losses or gradients stop the run with the step, the place and the images named, after saving
the state before the bad step as ``checkpoint_nonfinite.pth``. A folder that cannot be written
is refused before anything else.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import datasets
import util.distributed as dist_utils
from datasets.config import CHECK_IMAGES_LEVELS
from datasets.sampling import ResumableSampler, SeededDataset
from engine import NonFiniteError, evaluate, train_one_epoch
from models import architecture_from_state_dict, build_model
from models.fast_dropout import use_fast_dropout
from models.optimize import fold_frozen_batchnorm_for_training, inference_model_from_args
from util.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    check_free_space,
    find_resume_checkpoint,
    load_checkpoint,
    load_finetune_weights,
    load_model_state,
    model_state_from_checkpoint,
    prepare_output_dir,
    save_checkpoint,
)
from util.ema import ModelEma
from util.host_memory import apply_host_allocator
from util.logging import MetricLogger, TensorboardLogger
from util.misc import collate_fn
from util.optim import build_optimizer
from util.preemption import Preempted, StopRequest
from util.train_state import TrainState

# Defaults that depend on --model (official values of each repository); None in the parser.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "detr": {
        "lr": 1e-4,
        "lr_backbone": 1e-5,
        "epochs": 300,
        "lr_drop": 200,
        "num_queries": 100,
        "dim_feedforward": 2048,
        "set_cost_class": 1.0,
        "lr_backbone_names": ["backbone"],
        "lr_linear_proj_names": [],
    },
    "deformable_detr": {
        "lr": 2e-4,
        "lr_backbone": 2e-5,
        "epochs": 50,
        "lr_drop": 40,
        "num_queries": 300,
        "dim_feedforward": 1024,
        "set_cost_class": 2.0,
        "lr_backbone_names": ["backbone.0"],
        "lr_linear_proj_names": ["reference_points", "sampling_offsets"],
    },
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Set transformer detector", add_help=False)
    parser.add_argument("--model", default="detr", choices=sorted(MODEL_DEFAULTS), help="detector family")
    parser.add_argument("--lr", default=None, type=float, help="default 1e-4 (DETR), 2e-4 (Deformable)")
    parser.add_argument("--lr_backbone_names", default=None, type=str, nargs="+")
    parser.add_argument("--lr_backbone", default=None, type=float, help="default 1e-5 (DETR), 2e-5 (Deformable)")
    parser.add_argument("--lr_linear_proj_names", default=None, type=str, nargs="+")
    parser.add_argument("--lr_linear_proj_mult", default=0.1, type=float)
    parser.add_argument("--batch_size", default=2, type=int)
    parser.add_argument("--weight_decay", default=1e-4, type=float)
    parser.add_argument("--epochs", default=None, type=int, help="default 300 (DETR), 50 (Deformable)")
    parser.add_argument("--lr_drop", default=None, type=int, help="default 200 (DETR), 40 (Deformable)")
    parser.add_argument("--lr_drop_epochs", default=None, type=int, nargs="+")
    parser.add_argument("--clip_max_norm", default=0.1, type=float, help="gradient clipping max norm")
    parser.add_argument("--sgd", action="store_true")
    parser.add_argument(
        "--grad_accum_steps",
        default=1,
        type=int,
        help="optimizer step every N batches, the loss normalised as for one N times larger batch",
    )
    parser.add_argument(
        "--ema",
        action="store_true",
        help="keep an exponential moving average of the weights; evaluated and saved beside them",
    )
    parser.add_argument("--ema_decay", default=0.9997, type=float, help="EMA decay (ramped up over ~2000 steps)")
    parser.add_argument(
        "--fused_optimizer",
        action="store_true",
        help="fused AdamW/SGD kernel: faster than the default multi-tensor one, rounding differs slightly",
    )

    # Model parameters
    parser.add_argument(
        "--frozen_weights", type=str, default=None, help="Path to a pretrained model; only the mask head is trained"
    )
    parser.add_argument("--num_classes", type=int, default=None, help="max category id + 1 (no-object added on top)")
    parser.add_argument(
        "--finetune",
        default="",
        type=str,
        help="start from the weights of a checkpoint (path, URL or hub entry name such as detr_resnet50): every "
        "weight whose name and shape fit is loaded, the class head (and query embeddings) re-initialised when "
        "their sizes differ; optimizer, scheduler and epoch start afresh (that is --resume)",
    )
    parser.add_argument("--freeze_backbone", action="store_true", help="train nothing in the backbone")
    parser.add_argument("--freeze_encoder", action="store_true", help="train nothing in the transformer encoder")
    # * Backbone
    parser.add_argument(
        "--backbone", default="resnet50", type=str, help="torchvision ResNet (resnet18..152) or timm:<timm model name>"
    )
    parser.add_argument("--dilation", action="store_true", help="replace stride with dilation in the last block (DC5)")
    parser.add_argument("--position_embedding", default="sine", type=str, choices=("sine", "learned", "v2", "v3"))
    parser.add_argument("--position_embedding_scale", default=2 * 3.141592653589793, type=float)
    parser.add_argument("--num_feature_levels", default=4, type=int, help="Deformable DETR feature levels")
    parser.add_argument(
        "--backbone_weights",
        default="torchvision",
        type=str,
        help="ImageNet weights: 'torchvision' (download, the official behaviour), 'timm' (timm backbones; "
        "'torchvision' means the same for them), a local .pth file, or 'none'",
    )
    parser.add_argument(
        "--train_backbone_all",
        action="store_true",
        help="train every backbone stage with learning BatchNorm (for training without ImageNet weights)",
    )
    # * Transformer
    parser.add_argument("--enc_layers", default=6, type=int)
    parser.add_argument("--dec_layers", default=6, type=int)
    parser.add_argument("--dim_feedforward", default=None, type=int, help="default 2048 (DETR), 1024 (Deformable)")
    parser.add_argument("--hidden_dim", default=256, type=int)
    parser.add_argument("--dropout", default=0.1, type=float)
    parser.add_argument("--nheads", default=8, type=int)
    parser.add_argument("--num_queries", default=None, type=int, help="default 100 (DETR), 300 (Deformable)")
    parser.add_argument("--pre_norm", action="store_true")
    parser.add_argument("--dec_n_points", default=4, type=int)
    parser.add_argument("--enc_n_points", default=4, type=int)
    parser.add_argument("--with_box_refine", action="store_true")
    parser.add_argument("--two_stage", action="store_true")
    parser.add_argument(
        "--attn_impl", default="auto", type=str, help="deformable attention implementation (auto, pytorch, triton)"
    )
    # * Segmentation
    parser.add_argument("--masks", action="store_true", help="train the segmentation head")
    # Loss
    parser.add_argument("--no_aux_loss", dest="aux_loss", action="store_false")
    # * Matcher
    parser.add_argument("--set_cost_class", default=None, type=float, help="default 1 (DETR), 2 (Deformable)")
    parser.add_argument("--set_cost_bbox", default=5, type=float)
    parser.add_argument("--set_cost_giou", default=2, type=float)
    # * Loss coefficients
    parser.add_argument("--mask_loss_coef", default=1, type=float)
    parser.add_argument("--dice_loss_coef", default=1, type=float)
    parser.add_argument("--cls_loss_coef", default=2, type=float, help="Deformable DETR only")
    parser.add_argument("--bbox_loss_coef", default=5, type=float)
    parser.add_argument("--giou_loss_coef", default=2, type=float)
    parser.add_argument("--eos_coef", default=0.1, type=float, help="Relative classification weight of no-object")
    parser.add_argument("--focal_alpha", default=0.25, type=float)

    # dataset parameters (defaults: datasets.config.DataConfig)
    parser.add_argument("--dataset_file", default="coco", help="coco, coco_panoptic, voc or yolo")
    parser.add_argument("--coco_path", type=str)
    parser.add_argument("--coco_panoptic_path", type=str)
    parser.add_argument(
        "--train_images", type=str, help="COCO-format training images anywhere (with --train_annotations)"
    )
    parser.add_argument("--train_annotations", type=str, help="COCO-format training annotation file")
    parser.add_argument(
        "--val_images", type=str, help="COCO-format validation images anywhere (with --val_annotations)"
    )
    parser.add_argument("--val_annotations", type=str, help="COCO-format validation annotation file")
    parser.add_argument("--voc_path", type=str, help="PASCAL VOC: the VOCdevkit folder")
    parser.add_argument("--voc_years", type=str, help="VOC years, e.g. 2007,2012 (default: every VOC<year> folder)")
    parser.add_argument("--yolo_path", type=str, help="YOLO format: the folder holding data.yaml (or the yaml file)")
    parser.add_argument("--train_split", type=str, help="VOC image list (default trainval) / YOLO yaml key (train)")
    parser.add_argument("--val_split", type=str, help="VOC image list (default val, or test) / YOLO yaml key (val)")
    parser.add_argument("--remove_difficult", action="store_true", help="VOC: drop difficult objects from training")
    parser.add_argument(
        "--cache_mode",
        default=False,
        action="store_true",
        help="keep the encoded images of each process's shard in memory",
    )
    parser.add_argument(
        "--check_images",
        default=None,
        choices=CHECK_IMAGES_LEVELS,
        help="start-up image check: none, header (default: size, mode, EXIF, truncation) or full (decode every image)",
    )
    parser.add_argument(
        "--max_bad_images",
        default=None,
        type=float,
        help="fraction of unreadable images skipped with a warning before the run stops (default 0.001 = 0.1%%)",
    )
    parser.add_argument("--train_scales", default=None, type=int, nargs="+", help="shorter-side sizes for training")
    parser.add_argument("--val_size", default=None, type=int, help="shorter side for evaluation (default 800)")
    parser.add_argument("--max_size", default=None, type=int, help="longer-side cap (default 1333)")

    parser.add_argument("--output_dir", default="", help="path where to save, empty for no saving")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--seed", default=42, type=int)
    parser.add_argument(
        "--resume",
        default="",
        help="resume from checkpoint (path or URL); 'auto': the newest readable checkpoint in --output_dir "
        "(none there: start from scratch)",
    )
    parser.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    parser.add_argument("--eval", action="store_true")
    parser.add_argument(
        "--eval_optimize",
        default="fast",
        choices=("none", "fast", "compile"),
        help="inference path for evaluation (models/optimize.py): 'fast' folds BatchNorm into the convolutions and "
        "uses channels-last (exact up to rounding); 'compile' adds torch.compile with frozen weights (pays for one "
        "input size); 'none' evaluates the training graph. With --amp bf16/fp16 evaluation autocasts too",
    )
    parser.add_argument(
        "--coco_eval_backend",
        default="pycocotools",
        choices=("pycocotools", "faster"),
        help="COCO evaluation: pycocotools (the reference) or faster-coco-eval (optional extra; same 12 numbers, "
        "several times faster on large sets)",
    )
    parser.add_argument("--eval_every", default=1, type=int, help="evaluate every N epochs (and after the last)")
    parser.add_argument(
        "--keep_checkpoints",
        default=2,
        type=int,
        help="rolling checkpoints kept: checkpoint.pth plus N-1 older ones (checkpoint_prev.pth, ...) that "
        "--resume auto falls back to when the newest is unreadable; 1 halves the disk use",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="write losses, learning rates and metrics for TensorBoard to <output_dir>/tensorboard",
    )
    parser.add_argument("--num_workers", default=2, type=int)
    parser.add_argument(
        "--host_allocator",
        default="keep",
        choices=("keep", "system"),
        help="'keep' (Linux/glibc): freed CPU memory stays with the process for the next step instead of going back "
        "to the kernel and being page-faulted in again (util/host_memory.py; faster CPU training and data "
        "loading, the process keeps its peak memory); 'system': the C library's defaults. Numbers are unchanged",
    )
    parser.add_argument("--print_freq", default=10, type=int)
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision")
    parser.add_argument(
        "--channels_last",
        action="store_true",
        help="convolutions in channels-last memory format (faster on CPU, with --amp bf16 above all; rounding differs)",
    )
    parser.add_argument(
        "--fold_frozen_bn",
        action="store_true",
        help="training: apply the backbone's frozen BatchNorm folded into the convolution weights (one pass over "
        "each feature map instead of three; models/optimize.py). Exact up to rounding; the weights and "
        "checkpoints are unchanged. Off by default: the official arithmetic bit for bit",
    )
    parser.add_argument(
        "--backbone_per_image",
        action="store_true",
        help="the backbone runs each image at its own size instead of the padded batch (models/backbone.py "
        "features_per_image): no convolution on padding (a quarter of the backbone's work with the official "
        "augmentation and batch 4) and features that do not depend on the other images of the batch, which "
        "changes those near each image's bottom and right borders. For CPUs and large images of varied sizes "
        "(1.23x per step at the official augmentation); small images run slower one size at a time than in one "
        "batch (0.69x at 64-96 px). Needs the frozen BatchNorm backbone",
    )
    parser.add_argument(
        "--fast_dropout",
        action="store_true",
        help="CPU training: dropout masks from 16-bit random numbers, four per 64-bit draw, kept as bool "
        "(models/fast_dropout.py; about 3x faster dropout, a quarter of its mask memory). The drop probability is "
        "rounded to a multiple of 1/65536 and the random stream is another one: off by default, as it is not the "
        "official run bit for bit",
    )

    # distributed training parameters
    parser.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    parser.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    return parser


# --------------------------------------------------------------------------------------------
# Flags: where each value comes from
# --------------------------------------------------------------------------------------------

# Flags that fix the model's structure (its state-dict keys, shapes or meaning). Taken from the
# checkpoint that is resumed, evaluated or fine-tuned unless given on the command line; a resumed
# run refuses a change.
ARCHITECTURE_FLAGS: tuple[str, ...] = (
    "model", "backbone", "dilation", "position_embedding", "position_embedding_scale", "num_feature_levels",
    "enc_layers", "dec_layers", "dim_feedforward", "hidden_dim", "nheads", "num_queries", "pre_norm",
    "dec_n_points", "enc_n_points", "with_box_refine", "two_stage", "masks", "num_classes", "train_backbone_all",
)  # fmt: skip
# Flags of the optimisation schedule: a resumed run takes them from its checkpoint; one given with
# another value is applied from the resumed epoch on, and logged.
SCHEDULE_FLAGS: tuple[str, ...] = (
    "lr", "lr_backbone", "lr_linear_proj_mult", "weight_decay", "lr_drop", "lr_drop_epochs", "clip_max_norm",
    "batch_size", "grad_accum_steps", "epochs",
)  # fmt: skip
# Image-size flags a checkpoint is evaluated with unless given (this project's checkpoints).
EVALUATION_FLAGS: tuple[str, ...] = ("val_size", "max_size")
# Flags about where and how this process runs: never taken from a checkpoint, never saved.
RUNTIME_FLAGS: frozenset[str] = frozenset(
    {
        "resume",
        "eval",
        "output_dir",
        "device",
        "num_workers",
        "print_freq",
        "world_size",
        "dist_url",
        "start_epoch",
        "finetune",
        "frozen_weights",
        "backbone_weights",
        "rank",
        "gpu",
        "distributed",
        "dist_backend",
        "tensorboard",
        "keep_checkpoints",
        "attn_impl",
        "eval_optimize",
        "coco_eval_backend",
        "host_allocator",
    }  # fmt: skip
)

_UNSET = object()


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse the command line and remember which flags were given (``given_flags``): a value from
    the command line wins over one stored in a checkpoint, a default does not."""
    parser = parser or argparse.ArgumentParser("DETR training and evaluation script", parents=[get_args_parser()])
    dests = [a.dest for a in parser._actions if a.default is not argparse.SUPPRESS]
    ns = argparse.Namespace(**dict.fromkeys(dests, _UNSET))
    parser.parse_args(argv, namespace=ns)
    given = [k for k in dests if getattr(ns, k) is not _UNSET]
    for action in parser._actions:
        if action.dest in dests and getattr(ns, action.dest) is _UNSET:
            setattr(ns, action.dest, action.default)
    ns._given = given
    return ns


def given_flags(args: argparse.Namespace) -> set[str]:
    """Flags given on the command line (see ``parse_args``); for a namespace made otherwise, the
    flags whose value differs from the parser's default."""
    if hasattr(args, "_given"):
        return set(args._given)
    defaults = vars(get_args_parser().parse_args([]))
    return {k for k, v in vars(args).items() if k in defaults and v != defaults[k]}


def saved_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run's flags as stored in its checkpoints: plain values, without the runtime ones."""
    plain = (int, float, str, bool, list, type(None))
    return {
        k: v for k, v in vars(args).items() if not k.startswith("_") and k not in RUNTIME_FLAGS and isinstance(v, plain)
    }


def checkpoint_flags(ckpt: dict[str, Any], source: str) -> tuple[dict[str, Any], bool]:
    """The flags a checkpoint determines, and whether it is an official one. This project's
    checkpoints store their flags as a dict; official ones an ``argparse.Namespace`` of which only
    the architecture flags are used. What the weights' keys and shapes tell fills the gaps (and
    wins for ``num_classes``, read off the class head)."""
    stored = ckpt.get("args")
    official = not isinstance(stored, dict)
    flags = dict(vars(stored)) if isinstance(stored, argparse.Namespace) else dict(stored or {})
    if official:
        flags = {k: v for k, v in flags.items() if k in ARCHITECTURE_FLAGS and k != "num_classes"}
    inferred = architecture_from_state_dict(model_state_from_checkpoint(ckpt, source))
    if "num_classes" in inferred:
        flags["num_classes"] = inferred.pop("num_classes")
    return {**inferred, **flags}, official


def inherit_flags(args: argparse.Namespace, ckpt: dict[str, Any], source: str, purpose: str) -> list[str]:
    """Set the flags not given on the command line from ``ckpt`` (``purpose``: ``"resume"`` takes
    every non-runtime flag, ``"eval"`` and ``"finetune"`` the architecture; fine-tuning keeps the
    data set's class count). Returns notes for the log; raises ``SystemExit`` when a resumed run
    would change the architecture."""
    flags, official = checkpoint_flags(ckpt, source)
    given = given_flags(args)
    wanted = ARCHITECTURE_FLAGS if purpose != "resume" or official else tuple(flags)
    if purpose == "eval" and not official:
        wanted += EVALUATION_FLAGS
    if purpose == "finetune":
        wanted = tuple(k for k in wanted if k != "num_classes")
    notes, refused = [], []
    for k in wanted:
        if k not in flags or k in RUNTIME_FLAGS or not hasattr(args, k):
            continue
        value = flags[k]
        if k not in given:
            setattr(args, k, value)
        elif getattr(args, k) != value:
            if purpose == "resume" and k in ARCHITECTURE_FLAGS:
                refused.append(f"--{k} {getattr(args, k)} (the checkpoint has {value})")
            elif purpose == "resume" and k in SCHEDULE_FLAGS:
                notes.append(f"--{k} {getattr(args, k)} replaces the checkpoint's {value} from the resumed epoch on")
            elif purpose == "resume":
                notes.append(f"--{k} {getattr(args, k)} replaces the checkpoint's {value}")
            elif purpose == "eval" and k in ARCHITECTURE_FLAGS:
                notes.append(f"--{k} {getattr(args, k)} given: used instead of the checkpoint's {value}")
    if refused:
        raise SystemExit(
            f"error: resuming {source} cannot change the architecture: {'; '.join(refused)}. Drop these flags to "
            f"continue that run, or start a new one from its weights with --finetune {source}"
        )
    return notes


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the model-dependent defaults and check flag combinations (before any work)."""
    for k, v in MODEL_DEFAULTS[args.model].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    checks = [
        (args.hidden_dim % args.nheads == 0, f"--hidden_dim ({args.hidden_dim}) must be divisible by --nheads ({args.nheads})"),
        (args.num_feature_levels >= 1, f"--num_feature_levels must be >= 1, got {args.num_feature_levels}"),
        (args.frozen_weights is None or args.masks, "--frozen_weights trains only the mask head: it needs --masks"),
        (args.batch_size >= 1, f"--batch_size must be >= 1, got {args.batch_size}"),
        (args.num_classes is None or args.num_classes >= 1, f"--num_classes must be >= 1, got {args.num_classes}"),
        (getattr(args, "grad_accum_steps", 1) >= 1, f"--grad_accum_steps must be >= 1, got {getattr(args, 'grad_accum_steps', 1)}"),
        (getattr(args, "keep_checkpoints", 2) >= 1, f"--keep_checkpoints must be >= 1, got {getattr(args, 'keep_checkpoints', 2)}"),
        (not (getattr(args, "finetune", "") and args.frozen_weights), "--finetune and --frozen_weights exclude each other"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise SystemExit(f"error: {message}")
    return args


def resolve_num_classes(args: argparse.Namespace, splits: dict[str, Any], from_checkpoint: str | None) -> int:
    """``--num_classes`` (or the value inherited from ``from_checkpoint``), else the training split's
    (for ``--eval``: the validation split's) max category id + 1; then checked against every split
    (``{name: dataset}``), so that a category that only the validation set uses stops the run
    before training."""
    num_classes, source = args.num_classes, "--num_classes"
    if num_classes is not None and "num_classes" not in given_flags(args) and from_checkpoint:
        source = f"checkpoint {from_checkpoint}"
    if num_classes is None:
        name = "train" if "train" in splits else "val"
        num_classes = datasets.max_category_id(splits[name]) + 1
        source = f"max category id of {getattr(splits[name], 'ann_file', name)}"
    try:
        datasets.check_num_classes(num_classes, source, splits)
    except datasets.DatasetError as e:
        raise SystemExit(f"error: {e}") from e
    print(f"num_classes = {num_classes} (from {source})")
    return num_classes


def resolve_auto_resume(args: argparse.Namespace) -> str:
    """``--resume auto``: the newest readable checkpoint of ``--output_dir`` (unreadable newer ones
    are reported and skipped), or ``""`` (start from scratch, said so) when there is none at all.
    Stops with a message when the folder holds checkpoints but none is usable."""
    if not args.output_dir:
        raise SystemExit("error: --resume auto looks for checkpoints in --output_dir: pass --output_dir")
    folder = Path(args.output_dir)
    path, problems = find_resume_checkpoint(folder) if folder.is_dir() else (None, [])
    for p in problems:
        print(f"warning: --resume auto: skipping {p}", flush=True)
    if path is None and problems:
        raise SystemExit(
            f"error: --resume auto: no usable checkpoint in {folder} ({len(problems)} unreadable). "
            "Remove them to start from scratch, or pass --resume PATH."
        )
    if path is None:
        print(f"--resume auto: no checkpoint in {folder}: starting from scratch", flush=True)
        return ""
    print(f"--resume auto: using {path}", flush=True)
    return str(path)


# --------------------------------------------------------------------------------------------
# A trained model from its checkpoint (main.py --eval, tools/)
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A checkpoint's model in eval mode, its post-processors, flags and class names."""

    model: nn.Module
    postprocessors: dict[str, nn.Module]
    args: argparse.Namespace
    id2label: dict[int, str]
    source: str


def build_model_from_checkpoint(
    checkpoint: str | Path, overrides: dict[str, Any] | None = None, device: str = "cpu", weights: str = "model"
) -> LoadedModel:
    """Rebuild a checkpoint's model from the flags stored in it (this project's checkpoints), or
    from its official ``args`` and what its weights' shapes tell (official and bare state dicts),
    and load its weights strictly. ``overrides`` (flag -> value) win over the stored flags, as
    flags given on the command line do; a conflict with the weights is an error listing the keys.
    ``weights="ema"`` loads the EMA weights of a checkpoint trained with ``--ema``. ``checkpoint``
    is anything ``read_checkpoint`` accepts (also a Hugging Face folder or a hub name). Raises
    ``CheckpointError`` for a file that is not a model checkpoint."""
    source = str(checkpoint)
    ckpt = read_checkpoint(source)
    args = get_args_parser().parse_args([])
    for k, v in (overrides or {}).items():
        setattr(args, k, v)
    args._given = list(overrides or {})
    for note in inherit_flags(args, ckpt, source, "eval"):
        print(f"{source}: {note}")
    args.device, args.backbone_weights, args.resume = device, "none", source
    resolve_args(args)
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


# --------------------------------------------------------------------------------------------
# The run, step by step
# --------------------------------------------------------------------------------------------


def _param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Three learning rates as officially: transformer and heads (``lr``), backbone
    (``lr_backbone``), deformable sampling projections (``lr * lr_linear_proj_mult``)."""

    def match(name: str, keywords: list[str]) -> bool:
        return any(k in name for k in keywords)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    backbone = [p for n, p in named if match(n, args.lr_backbone_names)]
    proj = [p for n, p in named if not match(n, args.lr_backbone_names) and match(n, args.lr_linear_proj_names)]
    rest = [p for n, p in named if not match(n, args.lr_backbone_names) and not match(n, args.lr_linear_proj_names)]
    groups = [{"params": rest, "lr": args.lr}, {"params": backbone, "lr": args.lr_backbone}]
    if proj:
        groups.append({"params": proj, "lr": args.lr * args.lr_linear_proj_mult})
    return groups


def _group_lrs(args: argparse.Namespace, num_groups: int) -> list[float]:
    return [args.lr, args.lr_backbone, args.lr * args.lr_linear_proj_mult][:num_groups]


def _make_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> Any:
    if args.lr_drop_epochs:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_drop_epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop)


def _freeze(model: nn.Module, args: argparse.Namespace) -> None:
    """``--freeze_backbone`` / ``--freeze_encoder``: no gradients for those parts."""
    core = getattr(model, "detr", model)
    parts = {"backbone": args.freeze_backbone, "transformer.encoder": args.freeze_encoder}
    for prefix, frozen in parts.items():
        if frozen:
            module = core.get_submodule(prefix)
            module.requires_grad_(False)
            print(f"froze {prefix} ({sum(p.numel() for p in module.parameters())} parameters)")


def _build_state(args: argparse.Namespace, model: nn.Module, device: torch.device) -> TrainState:
    optimizer = build_optimizer(
        _param_groups(model, args), args.lr, args.weight_decay, sgd=args.sgd, fused=args.fused_optimizer
    )
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    ema = ModelEma(model, decay=args.ema_decay) if args.ema else None
    return TrainState(model, optimizer, _make_scheduler(optimizer, args), scaler, ema, epoch=args.start_epoch,
                      args=saved_flags(args))  # fmt: skip


def _apply_schedule_changes(state: TrainState, args: argparse.Namespace, changed: set[str]) -> None:
    """After resuming: apply the schedule flags given with another value than the checkpoint's.
    Learning rates and drops are recomputed in closed form for the resumed position."""
    optimizer, scheduler = state.optimizer, state.lr_scheduler
    if changed & {"weight_decay"}:
        for g in optimizer.param_groups:
            g["weight_decay"] = args.weight_decay
    if changed & {"lr", "lr_backbone", "lr_linear_proj_mult", "lr_drop", "lr_drop_epochs"}:
        last_epoch = scheduler.last_epoch
        for g, lr in zip(optimizer.param_groups, _group_lrs(args, len(optimizer.param_groups))):
            g["initial_lr"] = lr
        scheduler = _make_scheduler(optimizer, args)
        scheduler.last_epoch = last_epoch
        lrs = scheduler._get_closed_form_lr()
        for g, lr in zip(optimizer.param_groups, lrs):
            g["lr"] = lr
        scheduler._last_lr = list(lrs)
        state.lr_scheduler = scheduler
        print(f"resume: learning rates now {[f'{lr:.3g}' for lr in lrs]} (base {scheduler.base_lrs})")


def _state_bytes(model: nn.Module) -> int:
    """About a checkpoint's size: weights plus AdamW's two moments."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def _read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _write_log_line(path: Path, stats: dict[str, Any]) -> None:
    """Append the epoch's line to ``log.txt`` (replacing a line of the same epoch written before a
    crash, so that a redone evaluation is never logged twice)."""
    lines = [e for e in _read_log(path) if e.get("epoch") != stats["epoch"]]
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in [*lines, stats]))
    tmp.replace(path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def _primary_metric(stats: dict[str, Any]) -> tuple[str, float] | None:
    """The validation number ``checkpoint_best.pth`` is kept by: PQ for panoptic runs, the devkit's
    mAP@0.5 for PASCAL VOC, else COCO box AP."""
    if "PQ_all" in stats:
        return "PQ", float(stats["PQ_all"]["pq"])
    if "voc_mAP50" in stats:
        return "VOC mAP50", float(stats["voc_mAP50"])
    if "coco_eval_bbox" in stats:
        return "AP", float(stats["coco_eval_bbox"][0])
    return None


@dataclass
class _Run:
    """What the steps of one run share: the resolved flags (completed by ``_setup`` and
    ``_load_data``, then never modified), the device, the output folder and the data."""

    args: argparse.Namespace
    device: torch.device
    amp_dtype: torch.dtype | None
    output_dir: Path | None
    checkpoints: dict[str, dict[str, Any]]
    dataset_train: Any = None
    dataset_val: Any = None
    tensorboard: TensorboardLogger | None = None

    @property
    def writes(self) -> bool:
        """This process writes files (rank 0 with an output folder)."""
        return self.output_dir is not None and dist_utils.is_main_process()


def read_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint by path, URL, Hugging Face checkpoint folder (converted on the fly) or hub entry
    name with pretrained weights (``--finetune detr_resnet50``). Raises ``CheckpointError`` (or the
    converter's ``ConversionError``) naming it."""
    import hubconf
    from models.hf_convert import checkpoint_from_hf

    if path in hubconf.pretrained_names():
        return hubconf.pretrained_checkpoint(path)
    if Path(path).is_dir() and (Path(path) / "config.json").is_file():
        return checkpoint_from_hf(path)
    return load_checkpoint(path)


def _load(path: str) -> dict[str, Any]:
    """``read_checkpoint``, stopping the run with one line naming the file when it fails."""
    from models.hf_convert import ConversionError

    try:
        return read_checkpoint(path)
    except (CheckpointError, ConversionError) as e:
        raise SystemExit(f"error: {e}") from e


def _setup(args: argparse.Namespace) -> _Run:
    """Resolve every flag once: distributed set-up, ``--resume auto``, the flags inherited from
    the checkpoint being resumed / evaluated / fine-tuned, model defaults; check the output folder."""
    args = argparse.Namespace(**vars(args))  # the caller's namespace stays as it was
    args._given = sorted(given_flags(args))  # before anything is filled in
    dist_utils.init_distributed_mode(args)
    if args.resume == "auto":
        args.resume = resolve_auto_resume(args)
    if args.resume and args.finetune:
        print(f"resuming {args.resume}: --finetune {args.finetune} is not applied again (the run continues)")
        args.finetune = ""
    checkpoints = {p: _load(p) for p in {args.resume, args.finetune, args.frozen_weights or ""} if p}
    source, purpose = (args.resume, "eval" if args.eval else "resume") if args.resume else (args.finetune, "finetune")
    if source:
        try:
            notes = inherit_flags(args, checkpoints[source], source, purpose)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from e
        for note in notes:
            print(f"{source}: {note}")
    resolve_args(args)
    print(args)
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None and dist_utils.is_main_process():  # a run that cannot save is refused now
        try:
            for note in prepare_output_dir(output_dir):
                print(note)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from e
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    return _Run(args, torch.device(args.device), amp_dtype, output_dir, checkpoints)


def _load_data(run: _Run) -> None:
    """Build the splits (each checked before any training) and settle ``num_classes``."""
    args = run.args
    # A given --num_classes is checked by the builders (naming each annotation); one inherited from a
    # checkpoint or derived from the data is checked below, naming where it came from.
    given = args.num_classes if "num_classes" in given_flags(args) else None
    data_args = argparse.Namespace(**{**vars(args), "num_classes": given})
    try:  # every split checked; all their problems reported at once
        built = datasets.build_datasets(data_args, ("val",) if args.eval else ("train", "val"))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    run.dataset_val, run.dataset_train = built["val"], built.get("train")
    splits = {"val": run.dataset_val} if args.eval else {"train": run.dataset_train, "val": run.dataset_val}
    args.num_classes = resolve_num_classes(args, splits, args.resume or None)
    for name, ds in splits.items():
        dropped = getattr(ds, "num_degenerate_boxes", 0)
        if dropped:
            print(f"{name}: dropped {dropped} degenerate box(es) (zero or negative width/height) from {ds.ann_file}")
    reference = run.dataset_val if run.dataset_train is None else run.dataset_train
    if args.masks and hasattr(reference, "is_thing_map"):  # coco_panoptic: things/stuff from the data
        args.panoptic_is_thing_map = reference.is_thing_map()


def _restore(run: _Run, state: TrainState) -> None:
    """Load what the flags ask for: the resumed run's whole state, fine-tuning weights, or the frozen
    box model of the panoptic second stage. Raises ``SystemExit`` with the file named."""
    args = run.args
    try:
        if args.frozen_weights:
            ckpt = run.checkpoints[args.frozen_weights]
            load_model_state(
                state.model.detr, model_state_from_checkpoint(ckpt, args.frozen_weights), args.frozen_weights
            )
        if args.finetune:
            ckpt = run.checkpoints[args.finetune]
            state_dict = model_state_from_checkpoint(ckpt, args.finetune)
            for note in load_finetune_weights(state.model, state_dict, args.finetune):
                print(f"--finetune: {note}")
            if state.ema is not None:
                state.ema.module.load_state_dict(state.model.state_dict())
        if args.resume:
            ckpt = run.checkpoints[args.resume]
            if args.eval:
                load_model_state(state.model, model_state_from_checkpoint(ckpt, args.resume), args.resume)
                if state.ema is not None and "model_ema" in ckpt:
                    state.ema.load_state_dict(ckpt["model_ema"])
                return
            for note in state.load_state_dict(ckpt, args.resume):
                print(f"warning: {note}")
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    if not args.resume:
        return
    flags, _ = checkpoint_flags(run.checkpoints[args.resume], args.resume)
    changed = {k for k in SCHEDULE_FLAGS if k in given_flags(args) and k in flags and flags[k] != getattr(args, k)}
    if changed:
        _apply_schedule_changes(state, args, changed)
    epoch, iteration = state.next_position()
    pending_eval = state.iterations_done is None and not state.evaluated
    if epoch >= args.epochs and not pending_eval:
        raise SystemExit(
            f"error: {args.resume} has finished epoch {state.epoch + 1} of {args.epochs}: nothing left to train. "
            f"Raise --epochs to train longer, or start a new schedule from its weights with --finetune {args.resume}"
        )
    where = f", iteration {iteration}" if iteration else ""
    pending = f" (after evaluating epoch {state.epoch})" if pending_eval else ""
    print(f"resumed from {args.resume}: starting at epoch {epoch}{where}{pending}")


def _val_loader(run: _Run) -> DataLoader:
    args = run.args
    world, rank = dist_utils.get_world_size(), dist_utils.get_rank()
    sampler = ResumableSampler(len(run.dataset_val), shuffle=False, num_replicas=world, rank=rank, pad=False)
    return DataLoader(
        run.dataset_val, args.batch_size, sampler=sampler, drop_last=False, collate_fn=collate_fn,
        num_workers=args.num_workers, generator=torch.Generator().manual_seed(args.seed),  # global RNG untouched
    )  # fmt: skip


def _evaluate(run: _Run, state: TrainState, model: nn.Module, criterion: nn.Module, postprocessors: dict,
              data_loader: DataLoader, epoch: int | None) -> dict[str, Any]:  # fmt: skip
    """Evaluate the model (and its EMA), write ``eval.json`` (and ``checkpoint_best.pth`` when the
    primary metric improved); returns the stats to log (EMA ones prefixed ``ema_``)."""
    base_ds = datasets.get_coco_api_from_dataset(run.dataset_val)
    evaluate_args = (criterion, postprocessors, data_loader, base_ds, run.device, str(run.output_dir or ""))
    options = {"amp_dtype": run.amp_dtype, "coco_eval_backend": run.args.coco_eval_backend}
    # --eval_optimize: the weights as an inference model (BatchNorm folded, ...), made afresh each time
    stats, evaluator = evaluate(inference_model_from_args(model, run.args), *evaluate_args, **options)
    results = {"model": (stats, evaluator)}
    if state.ema is not None:
        print("Evaluating the EMA weights")
        results["ema"] = evaluate(inference_model_from_args(state.ema.module, run.args), *evaluate_args, **options)
    if run.writes:
        _save_eval(run.output_dir, stats, evaluator, epoch, ema=results["ema"][0] if "ema" in results else None)
        if epoch is not None:
            _keep_best(run, state, {k: r[0] for k, r in results.items()}, epoch)
    if run.tensorboard is not None and epoch is not None:
        for name, (s, _) in results.items():
            run.tensorboard.log(_metrics_by_name(s), epoch, prefix=f"val_{name}/")
    out = dict(stats)
    if "ema" in results:
        out.update({f"ema_{k}": v for k, v in results["ema"][0].items()})
    return out


def _metrics_by_name(stats: dict[str, Any]) -> dict[str, float]:
    from datasets.coco_eval import stats_to_dict

    out = {k: v for k, v in stats.items() if isinstance(v, float)}
    if "coco_eval_bbox" in stats:
        out.update({f"bbox_{k}": v for k, v in stats_to_dict(stats["coco_eval_bbox"]).items()})
    if "PQ_all" in stats:
        out["PQ"] = float(stats["PQ_all"]["pq"])
    return out


def _keep_best(run: _Run, state: TrainState, stats: dict[str, dict[str, Any]], epoch: int) -> None:
    """``checkpoint_best.pth``: the weights (of the model or its EMA, whichever scored higher) with
    the best primary validation metric so far, with the run's flags and class names (no optimizer)."""
    scored = [(m[1], name) for name, s in stats.items() if (m := _primary_metric(s)) is not None]
    if not scored:
        return
    value, which = max(scored)
    metric = _primary_metric(stats[which])[0]
    if state.best is not None and value <= state.best["value"]:
        return
    state.best = {"metric": metric, "value": value, "epoch": epoch, "weights": which}
    weights = state.model if which == "model" else state.ema.module
    best = {"version": CHECKPOINT_VERSION, "model": weights.state_dict(), "args": state.args, "best": state.best,
            "epoch": epoch}  # fmt: skip
    for key in ("id2label", "is_thing_map"):
        if getattr(state, key) is not None:
            best[key] = getattr(state, key)
    save_checkpoint(best, run.output_dir / "checkpoint_best.pth")
    print(f"checkpoint_best.pth: {metric} {value:.4f} at epoch {epoch} ({which} weights)")


def _save_checkpoint(run: _Run, state: TrainState, epoch_copy: bool = False) -> str | None:
    """Save ``state`` to ``checkpoint.pth`` (rotating ``--keep_checkpoints``). Collective: every
    rank calls it; rank 0 writes; no rank goes on before the file is on disk."""
    payload = state.state_dict()
    path = None
    if run.output_dir is not None:
        path = run.output_dir / "checkpoint.pth"
        if dist_utils.is_main_process():
            save_checkpoint(payload, path, keep=run.args.keep_checkpoints)
            if epoch_copy:
                save_checkpoint(payload, run.output_dir / f"checkpoint{state.epoch:04}.pth")
    dist_utils.barrier()
    return str(path) if path is not None else None


def _log_epoch(run: _Run, state: TrainState, epoch: int, train_stats: dict[str, float],
               test_stats: dict[str, Any], n_parameters: int) -> None:  # fmt: skip
    log_stats: dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
    log_stats.update({f"test_{k}": v for k, v in test_stats.items()})
    log_stats.update({"epoch": epoch, "n_parameters": n_parameters})
    if run.writes:
        _write_log_line(run.output_dir / "log.txt", log_stats)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or ``--eval``) as the command line says; returns the last evaluation's stats.
    Raises ``Preempted`` after saving a mid-epoch checkpoint when a stop signal arrives."""
    stop = StopRequest()
    try:
        return _main(args, stop)
    finally:
        stop.restore()


def _main(args: argparse.Namespace, stop: StopRequest) -> dict[str, Any]:
    run = _setup(args)
    args = run.args
    apply_host_allocator(args.host_allocator)  # before the DataLoader workers are forked
    seed = args.seed + dist_utils.get_rank()
    torch.manual_seed(seed)
    random.seed(seed)
    _load_data(run)  # data first: num_classes is checked against it before the model is built

    try:
        model, criterion, postprocessors = build_model(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # unknown backbone, weights not downloadable...
        raise SystemExit(f"error: {e}") from e
    _freeze(model, args)
    if args.fold_frozen_bn:
        print(f"--fold_frozen_bn: {fold_frozen_batchnorm_for_training(model)} frozen BatchNorm layers folded")
    if args.fast_dropout:
        where = "" if run.device.type == "cpu" else f" (CPU tensors only: on {run.device.type} PyTorch's dropout runs)"
        print(f"--fast_dropout: {use_fast_dropout(model)} dropout and attention modules switched{where}")
    model.to(run.device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    state = _build_state(args, model, run.device)
    state.id2label = datasets.dataset_id2label(run.dataset_train if run.dataset_train is not None else run.dataset_val)
    state.is_thing_map = getattr(args, "panoptic_is_thing_map", None)
    _restore(run, state)
    run.checkpoints.clear()  # free the loaded checkpoints before training
    train_model = model
    if args.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if run.device.type == "cuda" else None
        )
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("number of params:", n_parameters)
    data_loader_val = _val_loader(run)

    if args.eval:
        return _evaluate(run, state, train_model, criterion, postprocessors, data_loader_val, epoch=None)

    if run.writes:
        warning = check_free_space(run.output_dir, _state_bytes(model))
        if warning:
            print(f"warning: {warning}")
        if args.tensorboard:
            run.tensorboard = TensorboardLogger(run.output_dir / "tensorboard")
    try:
        return _train(run, state, train_model, criterion, postprocessors, data_loader_val, n_parameters, stop)
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()


def _train(run: _Run, state: TrainState, model: nn.Module, criterion: nn.Module, postprocessors: dict,
           data_loader_val: DataLoader, n_parameters: int, stop: StopRequest) -> dict[str, Any]:  # fmt: skip
    """The epochs: train, save (evaluation pending), evaluate, log; after the last one, save again
    (finished). A run killed between an epoch's save and its log line evaluates that epoch again
    when resumed. Stop signals save a mid-epoch checkpoint and raise ``Preempted``; non-finite
    values save ``checkpoint_nonfinite.pth`` and stop."""
    args = run.args
    world, rank = dist_utils.get_world_size(), dist_utils.get_rank()
    dataset_train = SeededDataset(run.dataset_train, seed=args.seed)
    sampler_train = ResumableSampler(
        len(dataset_train), shuffle=True, seed=args.seed, num_replicas=world, rank=rank, shard=args.cache_mode
    )  # with --cache_mode each process draws only from the images it holds
    batch_sampler_train = torch.utils.data.BatchSampler(sampler_train, args.batch_size, drop_last=True)
    if len(batch_sampler_train) == 0:
        raise SystemExit(
            f"error: {len(dataset_train)} training images cannot fill one batch of {args.batch_size} per process"
        )
    # Own generator: loader start-up must not consume the global RNG (exact resumption).
    data_loader_train = DataLoader(
        dataset_train, batch_sampler=batch_sampler_train, collate_fn=collate_fn, num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )  # fmt: skip
    start_epoch, start_iter = state.next_position()
    test_stats: dict[str, Any] = {}
    pending = state.iterations_done is None and not state.evaluated  # resumed between training and evaluation
    if pending:
        test_stats = _evaluate_pending(run, state, model, criterion, postprocessors, data_loader_val, n_parameters)
    state.restore_rng()

    stop.install()  # SIGUSR1/SIGUSR2/SIGTERM from here on: checkpoint and stop after the current step
    print("Start training")
    start_time = time.time()
    timing = {"epoch": 0.0, "eval": 0.0, "epochs_timed": 0}
    for epoch in range(start_epoch, args.epochs):
        first_iter = start_iter if epoch == start_epoch else 0
        sampler_train.set_epoch(epoch, start_index=first_iter * args.batch_size)
        dataset_train.set_epoch(epoch)
        train_logger = MetricLogger(delimiter="  ")
        if first_iter and state.meters is not None:
            train_logger.load_state_dict(state.meters)
        epoch_start = time.time()

        def run_eta(
            left: float, epochs_after: int = args.epochs - epoch - 1, epoch_start: float = epoch_start
        ) -> float:
            """Seconds left in the run: this epoch, its evaluation, and the epochs after it."""
            if timing["epochs_timed"]:
                per_epoch = timing["epoch"] / timing["epochs_timed"]
            else:  # first epoch: this epoch's own pace
                per_epoch = time.time() - epoch_start + left
            return left + timing["eval"] + epochs_after * (per_epoch + timing["eval"])

        def on_step(it: int, epoch: int = epoch, train_logger: MetricLogger = train_logger) -> None:
            state.mark_step(epoch, it + 1)
            state.global_step += 1
            signum = stop.should_stop(run.device)
            if signum:
                state.meters = train_logger.state_dict()
                path = _save_mid_epoch(run, state, epoch, it)
                raise Preempted(signum, epoch, it, path, stop.previous_handlers(signum))

        log_scalars = None
        if run.tensorboard is not None:

            def log_scalars(scalars: dict[str, float], tb: TensorboardLogger = run.tensorboard) -> None:
                tb.log(scalars, state.global_step, prefix="train/")

        try:
            train_stats = train_one_epoch(
                model, criterion, data_loader_train, state.optimizer, run.device, epoch, args.clip_max_norm,
                amp_dtype=run.amp_dtype, scaler=state.scaler, print_freq=args.print_freq, start_iter=first_iter,
                on_step=on_step, metric_logger=train_logger, grad_accum_steps=args.grad_accum_steps, ema=state.ema,
                log_scalars=log_scalars, run_eta=run_eta,
            )  # fmt: skip
        except NonFiniteError as e:
            state.meters = train_logger.state_dict()
            _dump_nonfinite(run, state, e)
        dist_utils.broadcast_buffers(state.model, *([state.ema.module] if state.ema is not None else []))
        if first_iter == 0:
            timing["epoch"] += time.time() - epoch_start
            timing["epochs_timed"] += 1
        with warnings.catch_warnings():
            # PyTorch warns about the order when no optimizer step ran: after resuming at the epoch's last
            # step (the restored scheduler state is right), or with fp16 when the loss scaler skipped every
            # step of the epoch for inf gradients (by design)
            if first_iter >= len(batch_sampler_train) or state.scaler is not None:
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            state.lr_scheduler.step()
        state.mark_trained(epoch, train_stats)
        # extra checkpoint before LR drop and every 100 epochs (as officially)
        _save_checkpoint(run, state, epoch_copy=(epoch + 1) % args.lr_drop == 0 or (epoch + 1) % 100 == 0)

        test_stats = {}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            eval_start = time.time()
            test_stats = _evaluate(run, state, model, criterion, postprocessors, data_loader_val, epoch)
            timing["eval"] = time.time() - eval_start
        _log_epoch(run, state, epoch, train_stats, test_stats, n_parameters)
        state.mark_evaluated()
    if (pending or start_epoch < args.epochs) and state.evaluated and state.epoch + 1 == args.epochs:
        _save_checkpoint(run, state)  # the finished run's checkpoint says so (resuming it is then refused)

    total_time = time.time() - start_time
    print(f"Training time {datetime.timedelta(seconds=int(total_time))}")
    return test_stats


def _evaluate_pending(run: _Run, state: TrainState, model: nn.Module, criterion: nn.Module, postprocessors: dict,
                      data_loader_val: DataLoader, n_parameters: int) -> dict[str, Any]:  # fmt: skip
    """A run stopped after an epoch's training but before its log line: evaluate and log it now."""
    args, epoch = run.args, state.epoch
    logged = run.output_dir is not None and any(e.get("epoch") == epoch for e in _read_log(run.output_dir / "log.txt"))
    test_stats: dict[str, Any] = {}
    if logged:
        print(f"epoch {epoch} is already in log.txt: not evaluated again")
    else:
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            print(f"evaluating epoch {epoch}, whose evaluation the previous run did not finish")
            test_stats = _evaluate(run, state, model, criterion, postprocessors, data_loader_val, epoch)
        _log_epoch(run, state, epoch, state.train_stats or {}, test_stats, n_parameters)
    state.mark_evaluated()
    return test_stats


def _save_mid_epoch(run: _Run, state: TrainState, epoch: int, iteration: int) -> str | None:
    path = _save_checkpoint(run, state)
    if path is None:
        print("warning: no --output_dir: the interrupted run's state is not saved", flush=True)
    else:
        print(f"saved epoch {epoch}, iteration {iteration} to {path}; continue with --resume auto", flush=True)
    return path


def _dump_nonfinite(run: _Run, state: TrainState, error: NonFiniteError) -> None:
    """Save the last good state (weights before the bad step) and stop with the diagnosis."""
    payload = state.state_dict()
    where = "no --output_dir: not saved"
    if run.output_dir is not None:
        path = run.output_dir / "checkpoint_nonfinite.pth"
        if dist_utils.is_main_process():
            save_checkpoint(payload, path)
        where = f"the last good state (weights before that step) is in {path}"
    dist_utils.barrier()
    raise SystemExit(
        f"error: {error}. Training stopped; {where}. The last finished epoch's checkpoint.pth is untouched. "
        "Usual causes: a learning rate too high for this data, or a corrupt image."
    ) from error


def _save_eval(
    output_dir: Path, test_stats: dict[str, Any], coco_evaluator: Any, epoch: int | None, ema: dict | None = None
) -> None:
    """``eval.json`` (COCO stats by name, PQ when computed, the EMA's under ``ema``) and, as
    officially, the raw COCO eval under ``eval/latest.pth`` (every 50 epochs also ``eval/NNN.pth``)."""
    from datasets.coco_eval import stats_to_dict

    def summary_of(stats: dict[str, Any]) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        if "coco_eval_bbox" in stats:
            summary["bbox"] = stats_to_dict(stats["coco_eval_bbox"])
            summary.update(summary["bbox"])
        if "coco_eval_masks" in stats:
            summary["segm"] = stats_to_dict(stats["coco_eval_masks"])
        for k in ("PQ_all", "PQ_th", "PQ_st", "voc_mAP50", "voc_per_class_AP"):
            if k in stats:
                summary[k] = stats[k]
        return summary

    summary: dict[str, Any] = {"epoch": epoch, **summary_of(test_stats)}
    if "bbox" in summary and coco_evaluator is not None:
        summary["per_class"] = coco_evaluator.per_class("bbox")
    if ema is not None:
        summary["ema"] = summary_of(ema)
    _write_json(output_dir / "eval.json", summary)
    if coco_evaluator is not None and "bbox" in coco_evaluator.coco_eval:
        (output_dir / "eval").mkdir(exist_ok=True)
        names = ["latest.pth"] + ([f"{epoch:03}.pth"] if epoch is not None and epoch % 50 == 0 else [])
        for name in names:
            torch.save(coco_evaluator.coco_eval["bbox"].eval, output_dir / "eval" / name)


if __name__ == "__main__":
    try:
        main(parse_args())
    except Preempted as e:
        print(f"{e}. Exit status {e.exit_code}.", flush=True)
        sys.exit(e.exit_code)
    sys.exit(0)
