"""The whole state of a training run as one object: ``TrainState``.

The official code saves ``model``, ``optimizer``, ``lr_scheduler``, ``epoch`` and ``args`` at the
end of each epoch and restores them by hand in ``main.py``. Here everything a run needs to continue
exactly lives in one object whose ``state_dict()`` and ``load_state_dict()`` mirror each other, and
every save goes through it: the end-of-epoch checkpoint, the mid-epoch checkpoint written on a stop
signal, the ``checkpoint_nonfinite.pth`` dump and ``--resume``. It holds

* the model (unwrapped from DDP), optimizer, LR scheduler, fp16 ``GradScaler`` and EMA weights;
* where the run is: ``epoch``, ``iterations_done`` in it (``None`` once its training is finished),
  whether its evaluation and log line are written (``evaluated``; a run killed while evaluating
  redoes the evaluation on resume, so no epoch's results are lost), the epoch's training averages
  for that log line, the optimizer-step count and the best validation metric so far;
* every rank's random generators and running loss sums (gathered on save, each rank takes its own
  back on load), so a resumed run continues bit for bit;
* the run's resolved flags (``args``) and the data set's class names (``id2label``), so that a
  checkpoint can be evaluated, fine-tuned or served without repeating its flags.

The saved dict keeps the official keys and meanings (``model``, ``optimizer``, ``lr_scheduler``,
``epoch`` = the last epoch whose training finished, or the epoch in progress with ``iteration`` =
the index of its last finished iteration), so official checkpoints and this project's version-1
checkpoints load as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import util.distributed as dist_utils
from util.checkpoint import CHECKPOINT_VERSION, CheckpointError, get_rng_state, load_model_state, set_rng_state
from util.ema import ModelEma
from util.optim import load_optimizer_state, optimizer_param_names, remap_optimizer_state

# The settings that change which parameters train (and so the optimizer's parameter groups).
PARAMETER_FLAGS = ("freeze_backbone", "freeze_encoder", "lr_backbone", "train_backbone_all", "lr_backbone_names")


@dataclass
class TrainState:
    """Everything a training run needs to continue exactly; see the module docstring."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEma | None = None
    epoch: int = 0
    iterations_done: int | None = 0  # None: the training part of ``epoch`` is finished
    evaluated: bool = False  # with iterations_done None: ``epoch``'s evaluation and log line are written
    train_stats: dict[str, float] | None = None  # the finished epoch's training averages (its log line)
    global_step: int = 0
    best: dict[str, Any] | None = None  # {"metric", "value", "epoch", "weights": "model" | "ema"}
    meters: dict[str, Any] | None = None  # this rank's running sums of the epoch in progress
    args: dict[str, Any] = field(default_factory=dict)
    id2label: dict[int, str] | None = None
    is_thing_map: dict[int, bool] | None = None
    restored_rng: dict[str, Any] | None = None  # this rank's generators, from the loaded checkpoint

    # ------------------------------------------------------------------ position in the run

    def next_position(self) -> tuple[int, int]:
        """``(epoch, iteration)`` where training continues (after any pending evaluation)."""
        if self.iterations_done is None:
            return self.epoch + 1, 0
        return self.epoch, self.iterations_done

    def mark_step(self, epoch: int, iterations_done: int) -> None:
        self.epoch, self.iterations_done, self.evaluated, self.train_stats = epoch, iterations_done, False, None

    def mark_trained(self, epoch: int, train_stats: dict[str, float]) -> None:
        self.epoch, self.iterations_done, self.evaluated, self.train_stats = epoch, None, False, train_stats
        self.meters = None

    def mark_evaluated(self) -> None:
        self.evaluated, self.train_stats = True, None

    # ------------------------------------------------------------------ save / restore

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict. Collective: every rank must call it (RNG states and running sums
        are gathered); only rank 0 needs to write the result."""
        rng_per_rank = dist_utils.all_gather(get_rng_state())
        meters_per_rank = dist_utils.all_gather(self.meters) if self.iterations_done is not None else None
        state: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "iteration": None if self.iterations_done is None else self.iterations_done - 1,
            "evaluated": self.evaluated,
            "global_step": self.global_step,
            "args": dict(self.args),
            "rng": rng_per_rank[dist_utils.get_rank()],
            "rng_per_rank": rng_per_rank,
            "world_size": dist_utils.get_world_size(),
        }
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
            state["optimizer_param_names"] = optimizer_param_names(self.optimizer, self.model)
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["model_ema"] = self.ema.state_dict()
        if meters_per_rank is not None:
            state["meters_per_rank"] = meters_per_rank
        if self.train_stats is not None:
            state["train_stats"] = dict(self.train_stats)
        if self.best is not None:
            state["best"] = dict(self.best)
        if self.id2label is not None:
            state["id2label"] = {int(k): str(v) for k, v in self.id2label.items()}
        if self.is_thing_map is not None:
            state["is_thing_map"] = {int(k): bool(v) for k, v in self.is_thing_map.items()}
        return state

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> list[str]:
        """Restore what ``state_dict`` saved (also official and version-1 checkpoints: what they
        lack keeps its current value). Returns notes for the log (e.g. a changed world size)."""
        notes: list[str] = []
        load_model_state(self.model, state["model"], source)
        if self.optimizer is not None and "optimizer" in state:
            optimizer_state, changes = self._optimizer_state(state, source)
            notes += changes
            load_optimizer_state(self.optimizer, optimizer_state)  # keeps this run's kernel choice
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.optimizer is not None and "optimizer" not in state:
            notes.append(
                f"{source} holds weights only (no optimizer state): the optimizer and learning-rate schedule "
                "start fresh from this run's settings"
            )
        if self.scaler is not None:
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            else:
                notes.append(f"{source} has no fp16 loss-scaler state: the scale restarts from its initial value")
        if self.ema is not None:
            if "model_ema" in state:
                self.ema.load_state_dict(state["model_ema"])
            else:
                self.ema.module.load_state_dict(self.model.state_dict())
                notes.append(f"{source} has no EMA weights: the average starts from the loaded weights")
        self.epoch = int(state.get("epoch", -1))
        iteration = state.get("iteration")
        self.iterations_done = None if iteration is None else int(iteration) + 1
        self.evaluated = bool(state.get("evaluated", True))  # official / version 1: saved after the epoch
        self.train_stats = state.get("train_stats")
        self.global_step = int(state.get("global_step", 0))
        self.best = state.get("best")
        self.id2label = state.get("id2label", self.id2label)
        self.is_thing_map = state.get("is_thing_map", self.is_thing_map)

        world, rank = dist_utils.get_world_size(), dist_utils.get_rank()
        saved_world = int(state.get("world_size", 1))
        per_rank = state.get("rng_per_rank")
        self.restored_rng = per_rank[rank] if per_rank and saved_world == world else state.get("rng")
        self.meters = None
        if self.iterations_done is not None:
            meters = state.get("meters_per_rank") or [None]
            self.meters = meters[rank] if saved_world == world else meters[0]
            if saved_world != world:
                batch = int(state.get("args", {}).get("batch_size", 1) or 1)
                consumed = self.iterations_done * batch * saved_world
                new_batch = int(self.args.get("batch_size", batch) or batch)
                self.iterations_done = consumed // (new_batch * world)
                notes.append(
                    f"{source} was written by {saved_world} process(es), this run has {world}: continuing epoch "
                    f"{self.epoch} after about {consumed} images; the run will not be bit-identical to an "
                    "uninterrupted one"
                )
        return notes

    def _optimizer_state(self, state: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
        """The checkpoint's optimizer state for this run's parameter groups, which differ when
        ``--freeze_backbone``, ``--freeze_encoder`` or ``--lr_backbone 0`` changed on resume: matched
        by parameter name (checkpoints that record the names), else refused naming the flags."""
        saved, saved_names = state["optimizer"], state.get("optimizer_param_names")
        names = optimizer_param_names(self.optimizer, self.model)
        stored = state.get("args") if isinstance(state.get("args"), dict) else {}
        flags = [f"--{k} {self.args[k]}" for k in PARAMETER_FLAGS if k in stored and k in self.args
                 and stored[k] != self.args[k]]  # fmt: skip
        changed = ", ".join(flags) or "the trained parameters"
        if saved_names is None:
            if [len(g["params"]) for g in saved["param_groups"]] != [len(n) for n in names]:
                raise CheckpointError(
                    f"resuming {source} with {changed}: its optimizer state does not record which parameters "
                    f"it belongs to (an older checkpoint). Resume without that change, or start a new schedule "
                    f"from its weights with --finetune {source}"
                )
            return saved, []
        if saved_names == names:
            return saved, []
        try:
            remapped, notes = remap_optimizer_state(saved, saved_names, names)
        except ValueError as e:
            raise CheckpointError(f"resuming {source} with {changed}: {e}") from e
        return remapped, [f"{changed}: {note}" for note in notes]

    def restore_rng(self) -> None:
        """Put back this rank's generators saved in the loaded checkpoint (just before training)."""
        if self.restored_rng is not None:
            set_rng_state(self.restored_rng)
            self.restored_rng = None
