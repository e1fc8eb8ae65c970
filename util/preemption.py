"""Stopping a training run cleanly on a preemption or time-limit signal, at an optimizer-step boundary.

``StopRequest`` records ``SIGUSR1``, ``SIGUSR2`` (submitit's preemption signal), ``SIGTERM`` and
``SIGINT`` (Ctrl-C; a second Ctrl-C stops at once, raising ``KeyboardInterrupt``); the
training loop polls ``should_stop()`` after each optimizer step (all ranks agree), saves a mid-epoch
checkpoint and raises ``Preempted``, whose ``replay_previous_handlers`` then calls the handlers
installed before ours (submitit's requeue; ``run_with_submitit.py`` does so on rank 0). The official
code requeues from the last finished epoch, losing the work done since; a plain run is simply killed.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from util.distributed import is_dist_avail_and_initialized

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, FrameType | None], Any] | int | None


class Preempted(Exception):
    """Training stopped on a signal after ``iteration`` of ``epoch``; the state is in ``checkpoint``
    (``None`` without ``--output_dir``). ``exit_code`` is 128 + the signal number, as for a process
    killed by it, so a wrapper script can tell "interrupted, resume me" from success."""

    def __init__(
        self,
        signum: int,
        epoch: int,
        iteration: int,
        checkpoint: str | None,
        previous: Sequence[tuple[int, Handler]] = (),
    ) -> None:
        self.signum, self.epoch, self.iteration, self.checkpoint = signum, epoch, iteration, checkpoint
        self.previous = list(previous)
        where = f"saved to {checkpoint}" if checkpoint else "NOT saved (no --output_dir)"
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after epoch {epoch} iteration {iteration}; state {where}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def replay_previous_handlers(self) -> None:
        """Call the handlers that were installed before ``StopRequest`` for the signals received
        (e.g. submitit's checkpoint-and-requeue handler, which may exit the process)."""
        for signum, handler in self.previous:
            if callable(handler) and handler is not signal.default_int_handler:  # that one raises KeyboardInterrupt
                handler(signum, None)


class StopRequest:
    """Record stop signals; ``should_stop()`` is the (all-ranks) decision to stop after this step."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: list[int] = []
        self._previous: dict[int, Handler] = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            print("warning: not in the main thread: stop signals are not handled (no mid-epoch checkpoint)")
            return self
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and signum in self.received:  # Ctrl-C twice: the user will not wait
            raise KeyboardInterrupt
        if signum not in self.received:
            self.received.append(signum)
        again = " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
        # stderr, not print: non-master ranks have print silenced (util.distributed.setup_for_distributed)
        sys.stderr.write(
            f"received {signal.Signals(signum).name}: saving a checkpoint and stopping after the current step{again}\n"
        )
        sys.stderr.flush()

    @property
    def signum(self) -> int:
        """The first signal received here (0: none)."""
        return self.received[0] if self.received else 0

    def should_stop(self, device: torch.device | None = None) -> int:
        """The signal number to stop on (0: go on), the same on every rank: the flag is all-reduced
        (max), so a signal seen by any rank stops all of them after the same step."""
        flag = self.signum
        if is_dist_avail_and_initialized():
            on_gpu = dist.get_backend() == "nccl"
            t = torch.tensor([flag], dtype=torch.int64, device=device if on_gpu else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
        return flag

    def previous_handlers(self, signum: int) -> list[tuple[int, Handler]]:
        """(signal, handler installed before ours) for every signal received (``signum`` included,
        for ranks that only learnt of the stop through the all-reduce), the submitit preemption
        signal last since its handler requeues and exits."""
        sigs = list(self.received) or [signum]
        sigs.sort(key=lambda s: s == signal.SIGUSR2)
        return [(s, self._previous.get(s)) for s in sigs]


def ignore_interrupts(worker_id: int = 0) -> None:
    """``worker_init_fn`` of DataLoader workers: Ctrl-C reaches the terminal's whole process group,
    and a worker it killed would break the loader before the main process saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
