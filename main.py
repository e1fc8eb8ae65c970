"""Train and evaluate DETR-family detectors: the official command line of facebookresearch/detr
(and, with ``--model deformable_detr``, of fundamentalvision/Deformable-DETR).

Every official flag keeps its meaning and default. Model-dependent defaults (learning rates,
epochs, queries, ...) follow ``--model``; a flag given explicitly always wins. Additions:
``--num_classes`` (default: from the checkpoint being resumed, else the data set's max category
id + 1; always checked against the data set), ``--train_backbone_all`` and ``--backbone_weights``
(training without ImageNet weights), ``--amp``, smaller-image options for small data sets, atomic
checkpoints with exact resumption, and clear errors for bad input before training starts.

Preemption (not in the official code): ``SIGUSR1``, ``SIGUSR2`` (submitit/Slurm) or ``SIGTERM``
stops training after the current optimizer step (all ranks after the same one), saves a mid-epoch
``checkpoint.pth`` (epoch, iteration, per-rank RNG states, the epoch's running loss sums; the one it
replaces is kept as ``checkpoint_prev.pth``) and exits with status 128 + the signal number.
``--resume auto`` continues from the newest readable checkpoint of ``--output_dir``, part-way
through the epoch, with the same weights, optimizer state and log as an uninterrupted run.
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
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import datasets
import util.distributed as dist_utils
from datasets.sampling import ResumableSampler, SeededDataset
from engine import NonFiniteLossError, evaluate, train_one_epoch
from models import build_model, num_classes_from_state_dict
from models.optimize import inference_model_from_args
from util.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    get_rng_state,
    load_checkpoint,
    load_model_state,
    model_state_from_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from util.logging import MetricLogger
from util.misc import collate_fn
from util.preemption import Preempted, StopRequest, meters_state, restore_meters

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

    # Model parameters
    parser.add_argument(
        "--frozen_weights", type=str, default=None, help="Path to a pretrained model; only the mask head is trained"
    )
    parser.add_argument("--num_classes", type=int, default=None, help="max category id + 1 (no-object added on top)")
    # * Backbone
    parser.add_argument("--backbone", default="resnet50", type=str, help="convolutional backbone")
    parser.add_argument("--dilation", action="store_true", help="replace stride with dilation in the last block (DC5)")
    parser.add_argument("--position_embedding", default="sine", type=str, choices=("sine", "learned", "v2", "v3"))
    parser.add_argument("--position_embedding_scale", default=2 * 3.141592653589793, type=float)
    parser.add_argument("--num_feature_levels", default=4, type=int, help="Deformable DETR feature levels")
    parser.add_argument(
        "--backbone_weights",
        default="torchvision",
        type=str,
        help="ImageNet weights: 'torchvision' (download, the official behaviour), a local .pth file, or 'none'",
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

    # dataset parameters
    parser.add_argument("--dataset_file", default="coco")
    parser.add_argument("--coco_path", type=str)
    parser.add_argument("--coco_panoptic_path", type=str)
    parser.add_argument("--remove_difficult", action="store_true")
    parser.add_argument("--cache_mode", default=False, action="store_true", help="accepted for compatibility")
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
    parser.add_argument("--num_workers", default=2, type=int)
    parser.add_argument("--print_freq", default=10, type=int)
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision")

    # distributed training parameters
    parser.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    parser.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the model-dependent defaults and check flag combinations (before any work)."""
    for k, v in MODEL_DEFAULTS[args.model].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.hidden_dim % args.nheads:
        raise SystemExit(f"error: --hidden_dim ({args.hidden_dim}) must be divisible by --nheads ({args.nheads})")
    if args.num_feature_levels < 1:
        raise SystemExit(f"error: --num_feature_levels must be >= 1, got {args.num_feature_levels}")
    if args.frozen_weights is not None and not args.masks:
        raise SystemExit("error: --frozen_weights trains only the mask head: it needs --masks")
    if args.batch_size < 1:
        raise SystemExit(f"error: --batch_size must be >= 1, got {args.batch_size}")
    if args.num_classes is not None and args.num_classes < 1:
        raise SystemExit(f"error: --num_classes must be >= 1, got {args.num_classes}")
    return args


def _param_groups(model: torch.nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
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


def _max_category_id(dataset: Any) -> int:
    coco = datasets.get_coco_api_from_dataset(dataset)
    ids = [a["category_id"] for a in coco.dataset.get("annotations", [])]
    ids += [c["id"] for c in coco.dataset.get("categories", [])]
    return max(ids) if ids else 0


def resolve_num_classes(
    args: argparse.Namespace, dataset: Any, ann_file: str, checkpoints: dict[str, dict[str, Any]]
) -> int:
    """``--num_classes``, else the checkpoint being resumed (``checkpoints``: path -> loaded
    checkpoint), else the data set; then checked against the data set."""
    source = "--num_classes"
    num_classes = args.num_classes
    for path, ckpt in checkpoints.items():
        if num_classes is None:
            num_classes = num_classes_from_state_dict(args.model, model_state_from_checkpoint(ckpt, path))
            source = f"checkpoint {path}"
    max_id = _max_category_id(dataset)
    if num_classes is None:
        num_classes, source = max_id + 1, f"max category id of {ann_file}"
    if max_id >= num_classes:
        raise SystemExit(
            f"error: {ann_file} has category id {max_id}, but num_classes is {num_classes} (from {source}); "
            f"pass --num_classes {max_id + 1} or more"
        )
    print(f"num_classes = {num_classes} (from {source})")
    return num_classes


def _checkpoint_state(
    model, optimizer, lr_scheduler, epoch: int, args: argparse.Namespace, **extra: Any
) -> dict[str, Any]:
    """``epoch``: the last finished epoch, or with ``iteration`` in ``extra`` the epoch in progress.
    ``rng_per_rank`` (every rank's generators) makes distributed resumption exact."""
    plain = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "epoch": epoch,
        "args": plain,
        "rng": get_rng_state(),
        "world_size": dist_utils.get_world_size(),
        **extra,
    }


def _save_mid_epoch(
    output_dir: Path | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    epoch: int,
    iteration: int,
    args: argparse.Namespace,
    train_logger: MetricLogger,
) -> str | None:
    """Save the state after ``iteration`` of ``epoch`` to ``checkpoint.pth`` (the previous one kept
    as ``checkpoint_prev.pth``). Called on every rank (gathers RNG and loss sums); rank 0 writes."""
    rng_per_rank = dist_utils.all_gather(get_rng_state())
    meters_per_rank = dist_utils.all_gather(meters_state(train_logger))
    path = None
    if output_dir is not None:
        path = output_dir / "checkpoint.pth"
        if dist_utils.is_main_process():
            state = _checkpoint_state(
                model,
                optimizer,
                lr_scheduler,
                epoch,
                args,
                iteration=iteration,
                rng_per_rank=rng_per_rank,
                meters_per_rank=meters_per_rank,
            )
            save_checkpoint(state, path, previous=output_dir / "checkpoint_prev.pth")
            print(f"saved epoch {epoch}, iteration {iteration} to {path}; continue with --resume auto", flush=True)
    else:
        print("warning: no --output_dir: the interrupted run's state is not saved", flush=True)
    dist_utils.barrier()  # no rank leaves before the checkpoint is on disk
    return str(path) if path is not None else None


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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or ``--eval``) as the command line says; returns the last evaluation's stats.
    Raises ``Preempted`` after saving a mid-epoch checkpoint when a stop signal arrives."""
    stop = StopRequest()
    try:
        return _main(args, stop)
    finally:
        stop.restore()


def _main(args: argparse.Namespace, stop: StopRequest) -> dict[str, Any]:
    dist_utils.init_distributed_mode(args)
    resolve_args(args)
    if args.resume == "auto":
        args.resume = resolve_auto_resume(args)
    print(args)
    device = torch.device(args.device)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    seed = args.seed + dist_utils.get_rank()
    torch.manual_seed(seed)
    random.seed(seed)

    # Data first: num_classes is checked against it before the model is built.
    try:
        dataset_val = datasets.build_dataset(image_set="val", args=args)
        dataset_train = None if args.eval else datasets.build_dataset(image_set="train", args=args)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    reference = dataset_val if dataset_train is None else dataset_train
    ann_file = str(getattr(reference, "ann_file", args.coco_path))
    try:  # each checkpoint is read once: for num_classes here, for the weights below
        checkpoints = {p: load_checkpoint(p) for p in (args.resume, args.frozen_weights) if p}
        args.num_classes = resolve_num_classes(args, reference, ann_file, checkpoints)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    for name, ds in (("train", dataset_train), ("val", dataset_val)):
        dropped = getattr(ds, "num_degenerate_boxes", 0) if ds is not None else 0
        if dropped:
            print(f"{name}: dropped {dropped} degenerate box(es) (zero or negative width/height) from {ds.ann_file}")

    if args.masks and hasattr(reference, "is_thing_map"):  # coco_panoptic: things/stuff from the data
        args.panoptic_is_thing_map = reference.is_thing_map()
    model, criterion, postprocessors = build_model(args)
    model.to(device)
    model_without_ddp = model
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if device.type == "cuda" else None
        )
        model_without_ddp = model.module
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("number of params:", n_parameters)

    param_dicts = _param_groups(model_without_ddp, args)
    if args.sgd:
        optimizer = torch.optim.SGD(param_dicts, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(param_dicts, lr=args.lr, weight_decay=args.weight_decay)
    if args.lr_drop_epochs:
        lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_drop_epochs)
    else:
        lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype is torch.float16 else None

    world, rank = dist_utils.get_world_size(), dist_utils.get_rank()
    sampler_val = ResumableSampler(len(dataset_val), shuffle=False, num_replicas=world, rank=rank, pad=False)
    data_loader_val = DataLoader(
        dataset_val,
        args.batch_size,
        sampler=sampler_val,
        drop_last=False,
        collate_fn=collate_fn,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched
    )
    base_ds = datasets.get_coco_api_from_dataset(dataset_val)

    if args.frozen_weights is not None:
        try:
            ckpt = checkpoints[args.frozen_weights]
            load_model_state(
                model_without_ddp.detr, model_state_from_checkpoint(ckpt, args.frozen_weights), args.frozen_weights
            )
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from e

    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None and dist_utils.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)

    rng_state = None
    resume_iter, resume_meters = 0, None  # mid-epoch checkpoint: first iteration to run, loss sums
    if args.resume:
        try:
            ckpt = checkpoints[args.resume]
            load_model_state(model_without_ddp, model_state_from_checkpoint(ckpt, args.resume), args.resume)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from e
        if not args.eval and all(k in ckpt for k in ("optimizer", "lr_scheduler", "epoch")):
            optimizer.load_state_dict(ckpt["optimizer"])
            lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            args.start_epoch = ckpt["epoch"] + 1
            rng_state = ckpt.get("rng")
            saved_world = ckpt.get("world_size", 1)
            if ckpt.get("rng_per_rank") and saved_world == world:
                rng_state = ckpt["rng_per_rank"][rank]
            if ckpt.get("iteration") is not None:  # stopped part-way through epoch ckpt["epoch"]
                args.start_epoch = ckpt["epoch"]
                resume_iter = ckpt["iteration"] + 1
                meters = ckpt.get("meters_per_rank") or [None]
                resume_meters = meters[rank] if saved_world == world else meters[0]
                if saved_world != world:
                    consumed = resume_iter * ckpt.get("args", {}).get("batch_size", args.batch_size) * saved_world
                    resume_iter = consumed // (args.batch_size * world)
                    print(
                        f"warning: {args.resume} was written by {saved_world} process(es), this run has {world}: "
                        f"continuing epoch {args.start_epoch} after about {consumed} images; the run will not be "
                        "bit-identical to an uninterrupted one"
                    )
            where = f", iteration {resume_iter}" if resume_iter else ""
            print(f"resumed from {args.resume}: starting at epoch {args.start_epoch}{where}")
    checkpoints.clear()  # free the loaded checkpoints before training

    if args.eval:
        test_stats, coco_evaluator = evaluate(
            inference_model_from_args(model_without_ddp, args),
            criterion,
            postprocessors,
            data_loader_val,
            base_ds,
            device,
            args.output_dir,
            amp_dtype=amp_dtype,
            coco_eval_backend=args.coco_eval_backend,
        )
        if output_dir is not None and dist_utils.is_main_process():
            _save_eval(output_dir, test_stats, coco_evaluator, epoch=None)
        return test_stats

    dataset_train = SeededDataset(dataset_train, seed=args.seed)
    sampler_train = ResumableSampler(len(dataset_train), shuffle=True, seed=args.seed, num_replicas=world, rank=rank)
    batch_sampler_train = torch.utils.data.BatchSampler(sampler_train, args.batch_size, drop_last=True)
    if len(batch_sampler_train) == 0:
        raise SystemExit(
            f"error: {len(dataset_train)} training images cannot fill one batch of {args.batch_size} per process"
        )
    # Own generator: loader start-up must not consume the global RNG (exact resumption).
    data_loader_train = DataLoader(
        dataset_train,
        batch_sampler=batch_sampler_train,
        collate_fn=collate_fn,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    if rng_state is not None:
        set_rng_state(rng_state)

    stop.install()  # SIGUSR1/SIGUSR2/SIGTERM from here on: checkpoint and stop after the current step
    print("Start training")
    start_time = time.time()
    test_stats: dict[str, Any] = {}
    for epoch in range(args.start_epoch, args.epochs):
        start_iter = resume_iter if epoch == args.start_epoch else 0
        sampler_train.set_epoch(epoch, start_index=start_iter * args.batch_size)
        dataset_train.set_epoch(epoch)
        train_logger = MetricLogger(delimiter="  ")
        if start_iter and resume_meters is not None:
            restore_meters(train_logger, resume_meters)

        def on_step(it: int, epoch: int = epoch, train_logger: MetricLogger = train_logger) -> None:
            signum = stop.should_stop(device)
            if signum:
                path = _save_mid_epoch(
                    output_dir, model_without_ddp, optimizer, lr_scheduler, epoch, it, args, train_logger
                )
                raise Preempted(signum, epoch, it, path, stop.previous_handlers(signum))

        try:
            train_stats = train_one_epoch(
                model,
                criterion,
                data_loader_train,
                optimizer,
                device,
                epoch,
                args.clip_max_norm,
                amp_dtype=amp_dtype,
                scaler=scaler,
                print_freq=args.print_freq,
                start_iter=start_iter,
                on_step=on_step,
                metric_logger=train_logger,
            )
        except NonFiniteLossError as e:
            if output_dir is not None and dist_utils.is_main_process():
                path = output_dir / "checkpoint_nonfinite.pth"
                save_checkpoint(_checkpoint_state(model_without_ddp, optimizer, lr_scheduler, epoch - 1, args), path)
                print(f"saved the last good weights (before the failing step) to {path}")
            raise SystemExit(f"error: {e}. The last finished epoch's checkpoint.pth is untouched.") from e
        with warnings.catch_warnings():
            if start_iter >= len(batch_sampler_train):  # resumed after the epoch's last step: no step here,
                # but the scheduler's restored state is right; PyTorch would warn about the order
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            lr_scheduler.step()
        rng_per_rank = dist_utils.all_gather(get_rng_state()) if output_dir is not None else None
        if output_dir is not None and dist_utils.is_main_process():
            state = _checkpoint_state(
                model_without_ddp, optimizer, lr_scheduler, epoch, args, rng_per_rank=rng_per_rank
            )
            paths = [output_dir / "checkpoint.pth"]
            # extra checkpoint before LR drop and every 100 epochs
            if (epoch + 1) % args.lr_drop == 0 or (epoch + 1) % 100 == 0:
                paths.append(output_dir / f"checkpoint{epoch:04}.pth")
            for p in paths:
                save_checkpoint(
                    state, p, previous=output_dir / "checkpoint_prev.pth" if p.name == "checkpoint.pth" else None
                )

        log_stats: dict[str, Any] = {f"train_{k}": v for k, v in train_stats.items()}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            test_stats, coco_evaluator = evaluate(
                inference_model_from_args(model_without_ddp, args),
                criterion,
                postprocessors,
                data_loader_val,
                base_ds,
                device,
                args.output_dir,
                amp_dtype=amp_dtype,
                coco_eval_backend=args.coco_eval_backend,
            )
            log_stats.update({f"test_{k}": v for k, v in test_stats.items()})
            if output_dir is not None and dist_utils.is_main_process():
                _save_eval(output_dir, test_stats, coco_evaluator, epoch=epoch)
        log_stats.update({"epoch": epoch, "n_parameters": n_parameters})
        if output_dir is not None and dist_utils.is_main_process():
            with (output_dir / "log.txt").open("a") as f:
                f.write(json.dumps(log_stats) + "\n")

    total_time = time.time() - start_time
    print(f"Training time {datetime.timedelta(seconds=int(total_time))}")
    return test_stats


def _save_eval(output_dir: Path, test_stats: dict[str, Any], coco_evaluator: Any, epoch: int | None) -> None:
    """``eval.json`` (COCO stats by name, PQ when computed) and, as officially, the raw COCO eval
    under ``eval/latest.pth`` (every 50 epochs also ``eval/NNN.pth``)."""
    from datasets.coco_eval import stats_to_dict

    summary: dict[str, Any] = {"epoch": epoch}
    if "coco_eval_bbox" in test_stats:
        summary["bbox"] = stats_to_dict(test_stats["coco_eval_bbox"])
        summary.update(summary["bbox"])
        if coco_evaluator is not None:
            summary["per_class"] = coco_evaluator.per_class("bbox")
    if "coco_eval_masks" in test_stats:
        summary["segm"] = stats_to_dict(test_stats["coco_eval_masks"])
    for k in ("PQ_all", "PQ_th", "PQ_st"):
        if k in test_stats:
            summary[k] = test_stats[k]
    _write_json(output_dir / "eval.json", summary)
    if coco_evaluator is not None and "bbox" in coco_evaluator.coco_eval:
        (output_dir / "eval").mkdir(exist_ok=True)
        names = ["latest.pth"] + ([f"{epoch:03}.pth"] if epoch is not None and epoch % 50 == 0 else [])
        for name in names:
            torch.save(coco_evaluator.coco_eval["bbox"].eval, output_dir / "eval" / name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser("DETR training and evaluation script", parents=[get_args_parser()])
    try:
        main(parser.parse_args())
    except Preempted as e:
        print(f"{e}. Exit status {e.exit_code}.", flush=True)
        sys.exit(e.exit_code)
    sys.exit(0)
