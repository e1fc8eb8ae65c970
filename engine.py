"""Training and evaluation loops, as in the official DETR ``engine.py``: ``train_one_epoch`` and the
``train_steps`` it runs (with gradient accumulation, mixed precision and an EMA; yielding after each
optimizer step, so that ``main.py``'s loop logs and handles stop requests) and
``evaluate`` (COCO box AP, mask AP and PQ when their post-processors are given, VOC mAP), plus what
a run writes of an evaluation (``save_eval``, ``primary_metric``). Differs from the official code:
non-finite values raise ``NonFiniteError`` before the optimizer step instead of ``sys.exit``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models import takes_targets
from util.distributed import all_gather, reduce_dict
from util.logging import MetricLogger, SmoothedValue, write_text_atomic
from util.optim import clip_grads, total_grad_norm
from util.train_state import TrainState


class NonFiniteError(FloatingPointError):
    """A NaN or infinite value in the outputs, the loss or the gradients; raised before the
    optimizer step, so the weights are those before the bad step.

    Model outputs are checked before the matcher (whose GIoU would fail on them), the loss after
    its all-reduce, the gradient norm before the step; learning BatchNorm statistics, which the
    forward pass updates, are put back. Every rank raises the same error after the same step (a
    rank's bad outputs turn its losses into NaN, which the all-reduce carries to all ranks); it
    names the epoch, the iteration, where the values appeared and the image ids on every rank."""

    def __init__(self, epoch: int, iteration: int, where: str, image_ids: list[int], losses: dict[str, float]) -> None:
        self.epoch, self.iteration, self.where, self.image_ids, self.losses = epoch, iteration, where, image_ids, losses
        terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items() if not k.endswith("_unscaled"))
        super().__init__(
            f"non-finite values at epoch {epoch}, iteration {iteration}: {where}; images {image_ids}"
            + (f"; losses {terms}" if terms else "")
        )


NonFiniteLossError = NonFiniteError  # earlier name


def _to_device(targets: Iterable[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]


def _float_outputs(outputs: Any) -> Any:
    """Cast model outputs to fp32 (the criterion and matcher run in full precision)."""
    if isinstance(outputs, Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _float_outputs(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_float_outputs(v) for v in outputs)
    return outputs


def _named_tensors(outputs: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    if isinstance(outputs, Tensor):
        yield prefix, outputs
    elif isinstance(outputs, dict):
        for k, v in outputs.items():
            yield from _named_tensors(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(outputs, (list, tuple)):
        for i, v in enumerate(outputs):
            yield from _named_tensors(v, f"{prefix}[{i}]")


def first_nonfinite(outputs: Any) -> str | None:
    """Name of the first floating-point tensor of ``outputs`` holding NaN or inf, else None."""
    for name, t in _named_tensors(outputs):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _sanitise(outputs: Any) -> Any:
    if isinstance(outputs, Tensor):
        return torch.nan_to_num(outputs, nan=0.0, posinf=0.0, neginf=0.0) if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _sanitise(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_sanitise(v) for v in outputs)
    return outputs


def _image_ids(targets: Iterable[dict[str, Any]]) -> list[int]:
    return [int(t["image_id"]) for t in targets if "image_id" in t]


def _raise_nonfinite(epoch: int, it: int, local_problem: str | None, ids: list[int], losses: dict[str, float]) -> None:
    """Collective: every rank calls it after the same step; all raise the same error."""
    reports = all_gather({"problem": local_problem, "ids": ids})
    problems = [f"{r['problem']} (rank {i})" if len(reports) > 1 else r["problem"] for i, r in enumerate(reports)]
    problems = [p for p, r in zip(problems, reports) if r["problem"]]
    bad_terms = [k for k, v in losses.items() if not math.isfinite(v) and not k.endswith("_unscaled")]
    where = "; ".join(problems) or f"loss term(s) {', '.join(bad_terms) or 'total'}"
    raise NonFiniteError(epoch, it, where, [i for r in reports for i in r["ids"]], losses)


def _running_stats(model: nn.Module) -> list[Tensor]:
    """The buffers a training forward pass updates (BatchNorm statistics)."""
    return [
        b
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]


def _groups(batches: Iterable[Any], size: int) -> Iterator[list[Any]]:
    group: list[Any] = []
    for b in batches:
        group.append(b)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class _Grouped:
    """Loader batches in groups of ``size`` (the last may be shorter), with a length."""

    def __init__(self, loader: Iterable[Any], size: int) -> None:
        self.loader, self.size = loader, size

    def __iter__(self) -> Iterator[list[Any]]:
        return _groups(self.loader, self.size)

    def __len__(self) -> int:
        return math.ceil(len(self.loader) / self.size)  # type: ignore[arg-type]


def _micro_batch(
    model: nn.Module, criterion: nn.Module, samples: Any, targets: list[dict[str, Any]],
    group_targets: list[dict[str, Any]] | None, device: torch.device, amp_dtype: torch.dtype | None,
    scaler: Any, epoch: int, it: int,
) -> dict[str, float]:  # fmt: skip
    """Forward, loss (checked: non-finite raises on every rank) and backward of one loader batch;
    returns its loss terms averaged over ranks."""
    weight_dict = criterion.weight_dict
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        outputs = model(samples, targets) if takes_targets(model) else model(samples)  # DINO: denoising queries
    outputs = _float_outputs(outputs)
    bad_output = first_nonfinite(outputs)
    if bad_output is not None:  # keep every rank in step: the NaN losses reach all of them
        outputs = _sanitise(outputs)
    extra = {"group_targets": group_targets} if group_targets is not None else {}
    loss_dict = criterion(outputs, targets, **extra)
    if bad_output is not None:
        loss_dict = {key: torch.full_like(v, math.nan) for key, v in loss_dict.items()}
    losses = sum(loss_dict[key] * weight_dict[key] for key in loss_dict if key in weight_dict)

    loss_dict_reduced = reduce_dict(loss_dict)  # for logging, and to carry a rank's failure to all
    names = sorted(loss_dict_reduced)
    values = torch.stack([loss_dict_reduced[n].detach().float().reshape(()) for n in names]).tolist()
    reduced = dict(zip(names, values))  # one host synchronisation for every term
    if not math.isfinite(sum(reduced[n] * weight_dict[n] for n in names if n in weight_dict)):
        _raise_nonfinite(epoch, it, f"model output {bad_output}" if bad_output else None, _image_ids(targets), reduced)
    if scaler is not None:
        scaler.scale(losses).backward()
    else:
        losses.backward()
    return reduced


def _check_gradients(model: nn.Module, total_norm: Tensor, epoch: int, it: int, image_ids: list[int]) -> None:
    """Gradients are identical on every rank after DDP's all-reduce: all ranks raise together."""
    if not math.isfinite(float(total_norm)):
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        _raise_nonfinite(epoch, it, f"gradients of {shown}", image_ids, {})


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: Iterable,
    state: TrainState,
    device: torch.device,
    epoch: int,
    max_norm: float = 0,
    **options: Any,
) -> dict[str, float]:
    """One pass over ``data_loader`` with ``state``'s optimizer, as officially; returns the epoch's
    averaged (over ranks) loss terms. ``options``: those of ``train_steps``."""
    logger = options.pop("metric_logger", None) or MetricLogger(delimiter="  ")
    for _ in train_steps(model, criterion, data_loader, state, device, epoch, max_norm, logger, **options):
        pass
    return epoch_stats(logger)


def epoch_stats(metric_logger: MetricLogger) -> dict[str, float]:
    """The epoch's averages of ``metric_logger``'s meters, synchronised over ranks (and printed)."""
    metric_logger.synchronize_between_processes()
    print("Averaged stats:", metric_logger)
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()}


def train_steps(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: Iterable,
    state: TrainState,
    device: torch.device,
    epoch: int,
    max_norm: float,
    metric_logger: MetricLogger,
    *,
    amp_dtype: torch.dtype | None = None,
    grad_accum_steps: int = 1,
    print_freq: int = 10,
    start_iter: int = 0,
    run_eta: Callable[[float], float] | None = None,
) -> Iterator[tuple[int, dict[str, float]]]:
    """The optimizer steps of one pass over ``data_loader`` with ``state``'s optimizer (and its fp16
    loss scaler and EMA, when set): after each step, yields ``(i, scalars)``, ``i`` being the index of
    the step's last loader batch and ``scalars`` its weighted losses and learning rates, so that the
    caller's loop handles logging and stop requests. ``metric_logger`` accumulates the epoch's meters
    (a resumed epoch passes the one restored from its checkpoint; ``epoch_stats`` averages it).

    ``start_iter``: loader batches of this epoch already done (mid-epoch resume: the loader must
    then yield only the remaining ones). ``run_eta(seconds left in the epoch)``: seconds left in the
    run, for the progress lines. Raises ``NonFiniteError`` (see that class).
    """
    optimizer, scaler, ema = state.optimizer, state.scaler, state.ema
    model.train()
    criterion.train()
    if "lr" not in metric_logger.meters:
        metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    if "class_error" not in metric_logger.meters:
        metric_logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    header = f"Epoch: [{epoch}]"
    weight_dict = criterion.weight_dict
    params = [p for p in model.parameters() if p.requires_grad]
    running_stats = _running_stats(model)

    it = start_iter - 1
    for group in metric_logger.log_every(_Grouped(data_loader, grad_accum_steps), print_freq, header, run_eta=run_eta):
        group = [(samples.to(device, non_blocking=True), _to_device(targets, device)) for samples, targets in group]
        group_targets = [t for _, targets in group for t in targets] if len(group) > 1 else None
        optimizer.zero_grad()
        stats_before = [b.clone() for b in running_stats]  # to undo a bad step's BatchNorm updates
        step_terms: dict[str, float] = {}
        try:
            for k, (samples, targets) in enumerate(group):
                it += 1
                no_sync = k < len(group) - 1 and hasattr(model, "no_sync")  # DDP: all-reduce on the last one
                with model.no_sync() if no_sync else contextlib.nullcontext():
                    reduced = _micro_batch(
                        model, criterion, samples, targets, group_targets, device, amp_dtype, scaler, epoch, it
                    )
                for n, v in reduced.items():
                    step_terms[n] = step_terms.get(n, 0.0) + v
            if scaler is not None:
                scaler.unscale_(optimizer)
            total_norm = total_grad_norm(params)
            if scaler is None:  # with fp16 loss scaling, inf gradients are expected: the step is skipped
                _check_gradients(model, total_norm, epoch, it, _image_ids(group_targets or group[0][1]))
            if max_norm > 0:
                clip_grads(params, max_norm, total_norm)
        except NonFiniteError:
            for b, saved in zip(running_stats, stats_before):
                b.copy_(saved)
            raise
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)

        # Weighted terms of a group are parts of one loss normalised over the whole group: their sum
        # is the step's value. The others (class_error, cardinality_error) are per-batch means.
        terms = {n: v if n in weight_dict else v / len(group) for n, v in step_terms.items()}
        scaled = {n: v * weight_dict[n] for n, v in terms.items() if n in weight_dict}
        unscaled = {f"{n}_unscaled": v for n, v in terms.items()}
        metric_logger.update(loss=sum(scaled.values()), **scaled, **unscaled)
        metric_logger.update(class_error=terms.get("class_error", 0.0))
        metric_logger.update(lr=optimizer.param_groups[0]["lr"])
        lrs = {f"lr/group{i}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
        yield it, {"loss": sum(scaled.values()), **scaled, **lrs}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    postprocessors: dict[str, nn.Module],
    data_loader: Iterable,
    base_ds: Any,
    device: torch.device,
    output_dir: str | None,
    *,
    amp_dtype: torch.dtype | None = None,
    print_freq: int = 100,
    coco_eval_backend: str = "pycocotools",
) -> tuple[dict[str, Any], Any]:
    """Loss terms and COCO metrics on ``data_loader``.

    Returns ``(stats, coco_evaluator)``; ``stats`` holds the averaged losses, ``coco_eval_bbox``
    (the 12 COCO numbers), ``coco_eval_masks`` with a ``segm`` post-processor,
    ``PQ_all``/``PQ_th``/``PQ_st`` with a ``panoptic`` one, and for VOC data sets ``voc_mAP50`` and
    ``voc_per_class_AP`` (``datasets.voc_eval``).
    """
    from datasets.coco_eval import CocoEvaluator
    from datasets.voc_eval import voc_evaluator_for

    model.eval()
    criterion.eval()
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    header = "Test:"

    iou_types = tuple(k for k in ("segm", "bbox") if k in postprocessors)
    coco_evaluator = CocoEvaluator(base_ds, iou_types, backend=coco_eval_backend)
    voc_evaluator = voc_evaluator_for(data_loader.dataset)  # VOC data sets: devkit mAP@0.5 as well (else None)
    panoptic_evaluator = None
    if "panoptic" in postprocessors:
        from datasets.panoptic_eval import PanopticEvaluator

        panoptic_evaluator = PanopticEvaluator(
            data_loader.dataset.ann_file,
            data_loader.dataset.ann_folder,
            output_dir=f"{output_dir}/panoptic_eval" if output_dir else "panoptic_eval",
        )

    weight_dict = criterion.weight_dict
    for samples, targets in metric_logger.log_every(data_loader, print_freq, header):
        samples = samples.to(device)
        targets = _to_device(targets, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(samples)
        outputs = _float_outputs(outputs)
        loss_dict = criterion(outputs, targets)

        loss_dict_reduced = reduce_dict(loss_dict)
        scaled = {k: v * weight_dict[k] for k, v in loss_dict_reduced.items() if k in weight_dict}
        unscaled = {f"{k}_unscaled": v for k, v in loss_dict_reduced.items()}
        metric_logger.update(loss=sum(scaled.values()), **scaled, **unscaled)
        metric_logger.update(class_error=loss_dict_reduced.get("class_error", torch.zeros(())))

        orig_target_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
        results = postprocessors["bbox"](outputs, orig_target_sizes)
        if "segm" in postprocessors:
            target_sizes = torch.stack([t["size"] for t in targets], dim=0)
            results = postprocessors["segm"](results, outputs, orig_target_sizes, target_sizes)
        res = {int(target["image_id"]): output for target, output in zip(targets, results)}
        coco_evaluator.update(res)
        if voc_evaluator is not None:
            voc_evaluator.update(res)

        if panoptic_evaluator is not None:
            target_sizes = torch.stack([t["size"] for t in targets], dim=0)
            res_pano = postprocessors["panoptic"](outputs, target_sizes, orig_target_sizes)
            for i, target in enumerate(targets):
                image_id = int(target["image_id"])
                res_pano[i]["image_id"] = image_id
                res_pano[i]["file_name"] = f"{image_id:012d}.png"
            panoptic_evaluator.update(res_pano)

    metric_logger.synchronize_between_processes()
    print("Averaged stats:", metric_logger)
    coco_evaluator.synchronize_between_processes()
    coco_evaluator.accumulate()
    coco_evaluator.summarize()
    panoptic_res = None
    if panoptic_evaluator is not None:
        panoptic_evaluator.synchronize_between_processes()
        panoptic_res = panoptic_evaluator.summarize()

    stats: dict[str, Any] = {k: meter.global_avg for k, meter in metric_logger.meters.items()}
    if "bbox" in postprocessors:
        stats["coco_eval_bbox"] = coco_evaluator.coco_eval["bbox"].stats.tolist()
    if "segm" in postprocessors:
        stats["coco_eval_masks"] = coco_evaluator.coco_eval["segm"].stats.tolist()
    if voc_evaluator is not None:  # voc_mAP50, voc_per_class_AP
        voc_evaluator.synchronize_between_processes()
        voc_evaluator.summarize()
        stats.update(voc_evaluator.stats_dict())
    if panoptic_res is not None:
        stats["PQ_all"] = panoptic_res["All"]
        stats["PQ_th"] = panoptic_res["Things"]
        stats["PQ_st"] = panoptic_res["Stuff"]
    return stats, coco_evaluator


def primary_metric(stats: dict[str, Any]) -> tuple[str, float] | None:
    """The validation number ``checkpoint_best.pth`` is kept by: PQ for panoptic runs, the devkit's
    mAP@0.5 for PASCAL VOC, else COCO box AP; ``None`` without any."""
    if "PQ_all" in stats:
        return "PQ", float(stats["PQ_all"]["pq"])
    if "voc_mAP50" in stats:
        return "VOC mAP50", float(stats["voc_mAP50"])
    if "coco_eval_bbox" in stats:
        return "AP", float(stats["coco_eval_bbox"][0])
    return None


def metrics_by_name(stats: dict[str, Any]) -> dict[str, float]:
    """The scalars of ``evaluate``'s stats, COCO numbers by name (for TensorBoard)."""
    from datasets.coco_eval import stats_to_dict

    out = {k: v for k, v in stats.items() if isinstance(v, float)}
    if "coco_eval_bbox" in stats:
        out.update({f"bbox_{k}": v for k, v in stats_to_dict(stats["coco_eval_bbox"]).items()})
    if "PQ_all" in stats:
        out["PQ"] = float(stats["PQ_all"]["pq"])
    return out


def save_eval(output_dir: Path, stats: dict[str, Any], coco_evaluator: Any, epoch: int | None,
              ema: dict[str, Any] | None = None) -> None:  # fmt: skip
    """``eval.json`` (COCO stats by name, PQ and VOC mAP when computed, the EMA's under ``ema``) and,
    as officially, the raw COCO evaluation as ``eval/latest.pth`` (every 50 epochs also ``eval/NNN.pth``)."""
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

    summary: dict[str, Any] = {"epoch": epoch, **summary_of(stats)}
    if "bbox" in summary and coco_evaluator is not None:
        summary["per_class"] = coco_evaluator.per_class("bbox")
    if ema is not None:
        summary["ema"] = summary_of(ema)
    write_text_atomic(output_dir / "eval.json", json.dumps(summary, indent=2) + "\n")
    if coco_evaluator is not None and "bbox" in coco_evaluator.coco_eval:
        (output_dir / "eval").mkdir(exist_ok=True)
        names = ["latest.pth"] + ([f"{epoch:03}.pth"] if epoch is not None and epoch % 50 == 0 else [])
        for name in names:
            torch.save(coco_evaluator.coco_eval["bbox"].eval, output_dir / "eval" / name)
