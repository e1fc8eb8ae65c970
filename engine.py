"""Training and evaluation loops: ``train_one_epoch`` and ``evaluate``, as in the official DETR
``engine.py``.

Differences: a non-finite loss raises ``NonFiniteLossError`` before the optimizer step (so the
caller can save the last good state) instead of ``sys.exit``; optional mixed precision
(``amp_dtype``); ``max_iters`` bounds an epoch (smoke tests, demos); ``on_step`` is called after
each optimizer step (mid-epoch checkpoints, preemption) and ``metric_logger`` lets a resumed epoch
continue the running sums saved in a mid-epoch checkpoint. ``evaluate`` computes COCO box AP (and
mask AP / PQ when the post-processors for them are given).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from util.distributed import reduce_dict
from util.logging import MetricLogger, SmoothedValue


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; raised before the optimizer step, weights are intact."""

    def __init__(self, epoch: int, iteration: int, losses: dict[str, float], image_ids: list[int]) -> None:
        self.epoch, self.iteration, self.losses, self.image_ids = epoch, iteration, losses, image_ids
        super().__init__(f"loss is not finite at epoch {epoch}, iteration {iteration} (images {image_ids}): {losses}")


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


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    max_norm: float = 0,
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    print_freq: int = 10,
    max_iters: int | None = None,
    start_iter: int = 0,
    on_step: Callable[[int], None] | None = None,
    metric_logger: MetricLogger | None = None,
) -> dict[str, float]:
    """One pass over ``data_loader``; returns the epoch's averaged (over ranks) loss terms.

    ``start_iter`` is the number of iterations of this epoch already done (mid-epoch resume: the
    loader must then yield only the remaining batches); ``on_step(i)`` runs after step ``i``.
    ``metric_logger``: the logger to update (a resumed epoch passes the one restored from its
    checkpoint, so the returned averages cover the whole epoch); a new one by default.
    """
    model.train()
    criterion.train()
    if metric_logger is None:
        metric_logger = MetricLogger(delimiter="  ")
    if "lr" not in metric_logger.meters:
        metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    if "class_error" not in metric_logger.meters:
        metric_logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    header = f"Epoch: [{epoch}]"
    weight_dict = criterion.weight_dict

    for it, (samples, targets) in enumerate(metric_logger.log_every(data_loader, print_freq, header), start_iter):
        if max_iters is not None and it >= max_iters:
            break
        samples = samples.to(device, non_blocking=True)
        targets = _to_device(targets, device)

        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(samples)
        loss_dict = criterion(_float_outputs(outputs), targets)
        losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)

        # reduce losses over all GPUs for logging purposes
        loss_dict_reduced = reduce_dict(loss_dict)
        unscaled = {f"{k}_unscaled": v for k, v in loss_dict_reduced.items()}
        scaled = {k: v * weight_dict[k] for k, v in loss_dict_reduced.items() if k in weight_dict}
        loss_value = sum(scaled.values()).item()

        if not math.isfinite(loss_value):
            ids = [int(t["image_id"]) for t in targets if "image_id" in t]
            raise NonFiniteLossError(epoch, it, {k: float(v.detach()) for k, v in loss_dict_reduced.items()}, ids)

        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(losses).backward()
            scaler.unscale_(optimizer)
        else:
            losses.backward()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

        metric_logger.update(loss=loss_value, **scaled, **unscaled)
        metric_logger.update(class_error=loss_dict_reduced.get("class_error", torch.zeros(())))
        metric_logger.update(lr=optimizer.param_groups[0]["lr"])
        if on_step is not None:
            on_step(it)

    metric_logger.synchronize_between_processes()
    print("Averaged stats:", metric_logger)
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()}


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
    (the 12 COCO numbers), ``coco_eval_masks`` with a ``segm`` post-processor, and
    ``PQ_all``/``PQ_th``/``PQ_st`` with a ``panoptic`` one.
    """
    from datasets.coco_eval import CocoEvaluator

    model.eval()
    criterion.eval()
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    header = "Test:"

    iou_types = tuple(k for k in ("segm", "bbox") if k in postprocessors)
    coco_evaluator = CocoEvaluator(base_ds, iou_types, backend=coco_eval_backend)
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
    if panoptic_res is not None:
        stats["PQ_all"] = panoptic_res["All"]
        stats["PQ_th"] = panoptic_res["Things"]
        stats["PQ_st"] = panoptic_res["Stuff"]
    return stats, coco_evaluator
