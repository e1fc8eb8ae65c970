"""Exponential moving average of a model's weights (``--ema``): ``ModelEma``.

The averaged copy is evaluated beside the raw weights and saved in checkpoints (``model_ema``);
``build_ema`` sizes its warm-up to the run (``warmup_tau``) and says so in the log.
Not in the official DETR or Deformable DETR code; RF-DETR, detrex and YOLO trainers keep one, since
it is often the better model for small data sets and short fine-tuning runs.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

# Ultralytics' warm-up constant: the decay reaches 98% of its value after 4 * tau optimizer steps.
DEFAULT_TAU = 2000.0


def warmup_tau(total_steps: int, tau: float = DEFAULT_TAU) -> float:
    """The warm-up constant for a run of ``total_steps`` optimizer steps: Ultralytics' ``tau`` (2000)
    for runs of ``4 * tau`` steps or more, else a quarter of the run, so that on a short fine-tune the
    ramp also ends with the run (with a fixed 2000-step ramp a 100-step run's average equals its
    weights to 1e-6)."""
    return float(min(tau, max(total_steps, 1) / 4))


class ModelEma:
    """A frozen copy of ``model`` whose weights follow an exponential moving average of its weights.

    After each optimizer step (``update``)::

        decay_t = decay * (1 - exp(-updates / tau))      # ramps up from 0: early weights are not frozen in
        ema = decay_t * ema + (1 - decay_t) * weights    # floating-point parameters and buffers

    Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. The copy lives on the model's
    device and never requires gradients.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997, tau: float = 2000.0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema_decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau)) if self.tau > 0 else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights (same architecture)."""
        self.updates += 1
        d = self.current_decay()
        ema_state = self.module.state_dict()
        floats_ema, floats_new = [], []
        for k, v in model.state_dict().items():
            e = ema_state[k]
            if e.is_floating_point():
                floats_ema.append(e)
                floats_new.append(v.detach())
            else:
                e.copy_(v)
        if floats_ema:
            torch._foreach_lerp_(floats_ema, floats_new, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"], strict=True)
        self.updates = int(state["updates"])


def build_ema(model: nn.Module, args: Any, num_train_images: int, world_size: int = 1) -> ModelEma:
    """``ModelEma`` of ``model`` (``args.ema_decay``) with the warm-up of the run ``args`` describe
    (``epochs`` of ``num_train_images`` in batches of ``batch_size`` per process, an optimizer step
    every ``grad_accum_steps``); prints one log line with the decay and warm-up used."""
    steps_per_epoch = num_train_images // world_size // args.batch_size // args.grad_accum_steps
    total_steps = max(steps_per_epoch, 1) * args.epochs
    tau = warmup_tau(total_steps)
    why = "" if tau == DEFAULT_TAU else f", a quarter of this run's {total_steps} optimizer steps"
    print(f"EMA: decay {args.ema_decay:g}, warm-up tau {tau:g} steps{why}: the decay reaches 98% of its value "
          f"after {4 * tau:g} steps")  # fmt: skip
    return ModelEma(model, decay=args.ema_decay, tau=tau)
