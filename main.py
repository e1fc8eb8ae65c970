"""Train and evaluate DETR-family detectors: the official command line of facebookresearch/detr and,
with ``--model deformable_detr``, of fundamentalvision/Deformable-DETR.

``main(args)`` reads from top to bottom: settings, data, model, optimizer, what to restore, then the
epoch loop (train, save, evaluate, log). The settings are declared in ``util/config.py``; a
checkpoint given to ``--resume``, ``--eval --resume`` or ``--finetune`` supplies those not given on
the command line. Differs from the official script: exact resumption (also mid-epoch, after a stop
signal), evaluation pending after a crash redone, non-finite values stopped with a diagnosis.
"""

from __future__ import annotations

import argparse
import datetime
import random
import re
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import datasets
import util.distributed as dist_utils
from datasets.problems import original_message
from datasets.sampling import ResumableSampler, SeededDataset
from engine import NonFiniteError, epoch_stats, evaluate, metrics_by_name, primary_metric, save_eval, train_steps
from models import build_model
from models.backbone import check_backbone_name
from models.hf_convert import ConversionError
from models.loading import checkpoint_settings, read_checkpoint
from models.optimize import fold_frozen_batchnorm_for_training, inference_model_from_args
from util import config
from util.checkpoint import (
    CheckpointError,
    CheckpointSaver,
    check_free_space,
    load_finetune_weights,
    load_model_state,
    model_state_from_checkpoint,
    prepare_output_dir,
)
from util.ema import build_ema
from util.host_memory import keep_freed_memory
from util.logging import MetricLogger, RunClock, TensorboardLogger, check_log, read_log, write_log_line
from util.misc import collate_fn
from util.optim import apply_schedule_changes, build_optimizer, build_scheduler, param_groups
from util.preemption import Preempted, StopRequest, ignore_interrupts
from util.train_state import TrainState

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def get_args_parser() -> argparse.ArgumentParser:
    """The official entry point: every setting of ``util.config`` as a flag (``add_help=False``)."""
    return config.get_args_parser()


def main(args: argparse.Namespace, given: set[str] | None = None) -> dict[str, Any]:
    """Train (or ``--eval``) as ``args`` say; ``given``: the flags given on the command line (by
    default those that differ from their defaults). Returns the last evaluation's stats. Raises
    ``Preempted`` after saving a mid-epoch checkpoint when a stop signal arrives."""
    # Settings: --resume auto, then what the checkpoint supplies, then the --model presets.
    given = config.differing_settings(args) if given is None else set(given)
    args = argparse.Namespace(**vars(args))  # the caller's namespace stays as it was
    dist_utils.init_distributed_mode(args)
    saver = CheckpointSaver(args.output_dir, keep=args.keep_checkpoints)
    try:
        with saver.lock():  # one run per output folder
            return _run(args, given, saver)
    except CheckpointError as e:  # a second run on the folder, a save that failed (full disk)...
        raise SystemExit(f"error: {e}") from e
    except RuntimeError as e:  # a hung or dead rank: --dist_timeout ends the waiting ones, named
        if not dist_utils.is_collective_timeout(e):
            raise
        message = dist_utils.collective_timeout_message(e, args.dist_timeout)
        raise SystemExit(message) from e


def _run(args: argparse.Namespace, given: set[str], saver: CheckpointSaver) -> dict[str, Any]:
    """``main``'s run, holding the output folder's lock."""
    if args.resume == "auto":
        args.resume = saver.find_recovery()
    if args.resume and args.finetune:
        print(f"resuming {args.resume}: --finetune {args.finetune} is not applied again (the run continues)")
        args.finetune = ""
    checkpoints = {p: _read(p) for p in {args.resume, args.finetune, args.frozen_weights or ""} if p}
    source = args.resume or args.finetune or args.frozen_weights
    if source:
        stored, official = _settings(checkpoints[source], source)
        purpose = ("eval" if args.eval else "resume") if args.resume else "finetune" if args.finetune else "frozen"
        notes, refused = config.inherit(args, given, stored, purpose, official)
        if refused and purpose == "frozen":
            raise SystemExit(f"error: --frozen_weights {source} fixes the box model's architecture: drop "
                             f"{'; '.join(refused)}")  # fmt: skip
        if refused:
            raise SystemExit(
                f"error: resuming {source} cannot change the architecture: {'; '.join(refused)}. Drop these flags "
                f"to continue that run, or start a new one from its weights with --finetune {source}"
            )
        for note in notes:
            print(f"{source}: {note}")
    args = config.resolve(args)
    print(args)
    try:  # names checked before the data, whose reading takes minutes on a large set
        check_backbone_name(args.backbone)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    output_dir = Path(args.output_dir) if args.output_dir else None
    writes = output_dir is not None and dist_utils.is_main_process()
    if writes:  # a run that cannot save, or would replace another run's files, is refused now
        notes = [] if args.resume or args.eval else saver.check_new_run(args.overwrite_output_dir)
        for note in [*notes, *prepare_output_dir(output_dir)]:
            print(note)
        if args.resume and not args.eval:
            try:  # before any training: a log.txt that cannot be read would fail only after the epoch
                log_note = check_log(output_dir / "log.txt")
            except ValueError as e:
                raise SystemExit(f"error: {e}") from e
            if log_note:
                print(f"warning: {log_note}")
    device, amp_dtype = torch.device(args.device), AMP_DTYPES[args.amp]
    keep_freed_memory()  # freed CPU memory kept for the next step (Linux); before DataLoader workers fork
    seed = args.seed + dist_utils.get_rank()
    torch.manual_seed(seed)
    random.seed(seed)

    # Data first: num_classes is checked against it before the model is built.
    data_args = argparse.Namespace(
        **{**vars(args), "num_classes": args.num_classes if "num_classes" in given else None}
    )
    try:  # every split checked; all their problems reported at once
        splits = datasets.build_datasets(data_args, ("val",) if args.eval else ("train", "val"))
        where = "--num_classes" if "num_classes" in given else f"checkpoint {args.resume or source}"
        args.num_classes, where = datasets.resolve_num_classes(args.num_classes, where, splits)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    print(f"num_classes = {args.num_classes} (from {where})")
    datasets.warn_objects_beyond_queries(args.num_queries, splits)
    dataset_train, dataset_val = splits.get("train"), splits["val"]
    for name, ds in splits.items():
        if getattr(ds, "num_degenerate_boxes", 0):
            print(f"{name}: dropped {ds.num_degenerate_boxes} degenerate box(es) (zero or negative width/height) "
                  f"from {ds.ann_file}")  # fmt: skip
    if dataset_train is not None and (small := datasets.small_images_warning(dataset_train, args.train_scales,
                                                                               args.max_size)):  # fmt: skip
        print(f"warning: {small}")
    reference = dataset_train if dataset_train is not None else dataset_val
    if args.masks and hasattr(reference, "is_thing_map"):  # coco_panoptic: things and stuff from the data
        args.panoptic_is_thing_map = reference.is_thing_map()

    # Model, parameter groups, optimizer, schedule: the state a checkpoint holds.
    try:
        model, criterion, postprocessors = build_model(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # unknown backbone, weights not downloadable...
        raise SystemExit(f"error: {e}") from e
    for prefix, frozen in {"backbone": args.freeze_backbone, "transformer.encoder": args.freeze_encoder}.items():
        if frozen:
            module = getattr(model, "detr", model).get_submodule(prefix)
            module.requires_grad_(False)
            print(f"froze {prefix} ({sum(p.numel() for p in module.parameters())} parameters)")
    if args.fold_frozen_bn:
        print(f"--fold_frozen_bn: {fold_frozen_batchnorm_for_training(model)} frozen BatchNorm layers folded")
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    optimizer = build_optimizer(param_groups(model, args), args.lr, args.weight_decay, sgd=args.sgd,
                                fused=args.fused_optimizer)  # fmt: skip
    state = TrainState(
        model, optimizer, build_scheduler(optimizer, args),
        scaler=torch.amp.GradScaler(device.type) if args.amp == "fp16" else None,
        ema=build_ema(model, args, len(dataset_train or ()), dist_utils.get_world_size()) if args.ema else None,
        epoch=args.start_epoch, args=config.saved(args), id2label=datasets.dataset_id2label(reference),
        is_thing_map=vars(args).get("panoptic_is_thing_map"),
    )  # fmt: skip

    # What to restore: the frozen box model of panoptic stage 2, fine-tuning weights, a resumed run.
    try:
        if args.frozen_weights:
            weights = model_state_from_checkpoint(checkpoints[args.frozen_weights], args.frozen_weights)
            load_model_state(model.detr, weights, args.frozen_weights)
        if args.finetune:
            weights = model_state_from_checkpoint(checkpoints[args.finetune], args.finetune)
            for note in load_finetune_weights(model, weights, args.finetune):
                print(f"--finetune: {note}")
            if state.ema is not None:
                state.ema.module.load_state_dict(model.state_dict())
        if args.resume and args.eval:
            ckpt = checkpoints[args.resume]
            load_model_state(model, model_state_from_checkpoint(ckpt, args.resume), args.resume)
            if state.ema is not None and "model_ema" in ckpt:
                state.ema.load_state_dict(ckpt["model_ema"])
        elif args.resume:
            for note in state.load_state_dict(checkpoints[args.resume], args.resume):
                print(f"warning: {note}")
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    if args.resume and not args.eval:
        changed = config.changed_schedule(args, given, _settings(checkpoints[args.resume], args.resume)[0])
        if changed:
            apply_schedule_changes(state, args, changed)
        _check_resumed_position(state, args)
    checkpoints.clear()  # free the loaded checkpoints before training
    train_model = model
    if args.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if device.type == "cuda" else None
        )
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("number of params:", n_parameters)
    world, rank = dist_utils.get_world_size(), dist_utils.get_rank()
    sampler_val = ResumableSampler(len(dataset_val), shuffle=False, num_replicas=world, rank=rank, pad=False)
    data_loader_val = DataLoader(
        dataset_val, args.batch_size, sampler=sampler_val, drop_last=False, collate_fn=collate_fn,
        num_workers=args.num_workers, generator=torch.Generator().manual_seed(args.seed),  # global RNG untouched
        worker_init_fn=ignore_interrupts,
    )  # fmt: skip
    tensorboard = TensorboardLogger(output_dir / "tensorboard") if writes and args.tensorboard else None

    def evaluate_and_save(epoch: int | None) -> dict[str, Any]:
        """Evaluate the weights (and their EMA); write eval.json and checkpoint_best.pth."""
        base_ds = datasets.get_coco_api_from_dataset(dataset_val)
        common = (criterion, postprocessors, data_loader_val, base_ds, device, str(output_dir or ""))
        options = {"amp_dtype": amp_dtype, "coco_eval_backend": args.coco_eval_backend}
        try:
            results = {"model": evaluate(inference_model_from_args(train_model, args), *common, **options)}
            if state.ema is not None:
                print("Evaluating the EMA weights")
                results["ema"] = evaluate(inference_model_from_args(state.ema.module, args), *common, **options)
        except datasets.DatasetError as e:  # more unreadable images than --max_bad_images
            raise SystemExit(
                f"error: {original_message(e)}\nEvaluation stopped; the checkpoints saved are kept."
            ) from e
        stats, evaluator = results["model"]
        if writes:
            save_eval(output_dir, stats, evaluator, epoch, ema=results["ema"][0] if "ema" in results else None)
            if epoch is not None:
                scores = {k: m for k, (s, _) in results.items() if (m := primary_metric(s)) is not None}
                saver.save_best(state, scores, epoch)
        if tensorboard is not None and epoch is not None:
            for name, (s, _) in results.items():
                tensorboard.log(metrics_by_name(s), epoch, prefix=f"val_{name}/")
        return {**stats, **{f"ema_{k}": v for k, v in results.get("ema", ({}, None))[0].items()}}

    def log_epoch(epoch: int, train_stats: dict[str, float], test_stats: dict[str, Any]) -> None:
        if writes:
            write_log_line(output_dir / "log.txt", {**{f"train_{k}": v for k, v in train_stats.items()},
                                                    **{f"test_{k}": v for k, v in test_stats.items()},
                                                    "epoch": epoch, "n_parameters": n_parameters})  # fmt: skip

    if args.eval:
        return evaluate_and_save(None)

    # Training data: order and augmentation are functions of (seed, epoch, index), so a run resumes exactly.
    dataset_train = SeededDataset(dataset_train, seed=args.seed)
    sampler_train = ResumableSampler(len(dataset_train), shuffle=True, seed=args.seed, num_replicas=world,
                                     rank=rank, shard=args.cache_mode)  # fmt: skip
    batch_sampler_train = torch.utils.data.BatchSampler(sampler_train, args.batch_size, drop_last=True)
    if len(batch_sampler_train) == 0:
        raise SystemExit(
            f"error: {len(dataset_train)} training images cannot fill one batch of {args.batch_size} per process"
        )
    data_loader_train = DataLoader(
        dataset_train, batch_sampler=batch_sampler_train, collate_fn=collate_fn, num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # loader start-up must not consume the global RNG
        worker_init_fn=ignore_interrupts,
    )  # fmt: skip
    if writes:  # less room than one checkpoint: an error now, not after an epoch
        sizes = [(p.numel() * p.element_size(), p.requires_grad) for p in model.parameters()]
        weights, trained = sum(n for n, _ in sizes), sum(n for n, grad in sizes if grad)
        moments = trained * (1 if args.sgd else 2)  # SGD momentum, Adam's two moments
        free_space_warning = check_free_space(output_dir, weights * (1 + (state.ema is not None)) + moments)
        if free_space_warning:
            print(f"warning: {free_space_warning}")

    # A run stopped after an epoch's training but before its log line: evaluate and log that epoch now.
    start_epoch, start_iter = state.next_position()
    test_stats: dict[str, Any] = {}
    pending = state.iterations_done is None and not state.evaluated
    if pending:
        epoch = state.epoch
        if output_dir is not None and any(e.get("epoch") == epoch for e in read_log(output_dir / "log.txt")):
            print(f"epoch {epoch} is already in log.txt: not evaluated again")
        else:
            if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
                print(f"evaluating epoch {epoch}, whose evaluation the previous run did not finish")
                test_stats = evaluate_and_save(epoch)
            log_epoch(epoch, state.train_stats or {}, test_stats)
        state.mark_evaluated()
    state.restore_rng()

    stop = StopRequest().install()  # SIGUSR1/SIGUSR2/SIGTERM/SIGINT: checkpoint and stop after the current step
    try:
        print("Start training")
        start_time = time.time()
        clock = RunClock(args.epochs)
        for epoch in range(start_epoch, args.epochs):
            first_iter = start_iter if epoch == start_epoch else 0
            sampler_train.set_epoch(epoch, start_index=first_iter * args.batch_size)
            dataset_train.set_epoch(epoch)
            train_logger = MetricLogger(delimiter="  ")
            if first_iter and state.meters is not None:
                train_logger.load_state_dict(state.meters)
            clock.start_epoch(epoch)
            steps = train_steps(
                train_model, criterion, data_loader_train, state, device, epoch, args.clip_max_norm, train_logger,
                amp_dtype=amp_dtype, grad_accum_steps=args.grad_accum_steps, print_freq=args.print_freq,
                start_iter=first_iter, run_eta=clock.run_eta,
            )  # fmt: skip
            try:
                for it, scalars in steps:  # after each optimizer step: position, TensorBoard, stop signals
                    state.mark_step(epoch, it + 1)
                    state.global_step += 1
                    if tensorboard is not None:
                        tensorboard.log(scalars, state.global_step, prefix="train/")
                    signum = stop.should_stop(device)
                    if signum:  # save, then stop
                        state.meters = train_logger.state_dict()
                        path = saver.save_recovery(state, epoch, it)
                        raise Preempted(signum, epoch, it, path, stop.previous_handlers(signum))
            except datasets.DatasetError as e:  # more unreadable images than --max_bad_images met mid-epoch
                stopped = "Training stopped; the last finished epoch's checkpoint.pth is untouched."
                raise SystemExit(f"error: {original_message(e)}\n{stopped}") from e
            except NonFiniteError as e:
                state.meters = train_logger.state_dict()
                raise SystemExit(
                    f"error: {e}. Training stopped; {saver.save_nonfinite(state)}. The last finished epoch's "
                    "checkpoint.pth is untouched. Usual causes: a learning rate too high for this data, or a corrupt image."
                ) from e
            train_stats = epoch_stats(train_logger)
            dist_utils.broadcast_buffers(model, *([state.ema.module] if state.ema is not None else []))
            clock.end_epoch(whole=first_iter == 0)
            with warnings.catch_warnings():
                # No optimizer step ran in this epoch (resumed at its last step, or every fp16 step skipped
                # for inf gradients): PyTorch warns about the order, the restored scheduler state is right.
                if first_iter >= len(batch_sampler_train) or state.scaler is not None:
                    warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                state.lr_scheduler.step()
            state.mark_trained(epoch, train_stats)
            # Saved before evaluating, as officially; an extra copy before each drop and every 100 epochs.
            saver.save(state, epoch_copy=(epoch + 1) % args.lr_drop == 0 or (epoch + 1) % 100 == 0)

            test_stats = {}
            if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
                eval_start = time.time()
                test_stats = evaluate_and_save(epoch)
                clock.eval_seconds = time.time() - eval_start
            log_epoch(epoch, train_stats, test_stats)
            state.mark_evaluated()
        if (pending or start_epoch < args.epochs) and state.evaluated and state.epoch + 1 == args.epochs:
            saver.save(state)  # the finished run's checkpoint says so (resuming it is then refused)
        if stop.signum:  # came during the last evaluation: nothing left to stop
            print(f"{signal.Signals(stop.signum).name} came after the last training step: the run finished normally")
        print(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}")
        return test_stats
    finally:
        stop.restore()
        if tensorboard is not None:
            tensorboard.close()


def _read(path: str) -> dict[str, Any]:
    """``read_checkpoint``, stopping the run with one line naming the file when it fails."""
    try:
        return read_checkpoint(path)
    except (CheckpointError, ConversionError) as e:
        raise SystemExit(f"error: {e}") from e


def _settings(ckpt: dict[str, Any], source: str) -> tuple[dict[str, Any], bool]:
    try:
        return checkpoint_settings(ckpt, source)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from e


def _check_resumed_position(state: TrainState, args: argparse.Namespace) -> None:
    """Refuse a resumed run that has nothing left to train; say where it continues."""
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser("DETR training and evaluation script", parents=[get_args_parser()])
    try:
        main(parser.parse_args(), given=config.given_settings(sys.argv[1:]))
    except Preempted as e:
        print(f"{e}. Exit status {e.exit_code}.", flush=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training, or a second one during it
        print("stopped by Ctrl-C without saving; the checkpoints in --output_dir are as before", flush=True)
        sys.exit(128 + 2)
    sys.exit(0)
