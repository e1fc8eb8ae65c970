"""Training-progress logging: smoothed meters, a periodic console logger and TensorBoard.

``SmoothedValue`` and ``MetricLogger`` have the official interface (importable from ``util.misc``
as before); ``TensorboardLogger`` (``--tensorboard``, an optional extra) writes per-step losses and
learning rates and per-epoch metrics. Beyond the official code, ``MetricLogger`` carries an epoch's
running sums through a mid-epoch checkpoint (``state_dict``) and can report the whole run's ETA.
"""

from __future__ import annotations

import datetime
import json
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from util.distributed import is_dist_avail_and_initialized


class SmoothedValue:
    """Track a series of values; report the median/average over a window or the global average."""

    def __init__(self, window_size: int = 20, fmt: str | None = None) -> None:
        self.deque: deque[float] = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Sum ``count`` and ``total`` over ranks (the window itself stays local)."""
        if not is_dist_avail_and_initialized():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64)
        dist.all_reduce(t)
        self.count = int(t[0].item())
        self.total = float(t[1].item())

    @property
    def median(self) -> float:
        return torch.tensor(list(self.deque)).median().item() if self.deque else 0.0

    @property
    def avg(self) -> float:
        return torch.tensor(list(self.deque), dtype=torch.float32).mean().item() if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(
            median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max, value=self.value
        )


class MetricLogger:
    """A dict of ``SmoothedValue`` meters with a ``log_every`` iterator that prints progress."""

    def __init__(self, delimiter: str = "\t") -> None:
        self.meters: defaultdict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if not isinstance(v, (float, int)):
                raise TypeError(f"MetricLogger.update: {k} must be a number, got {type(v).__name__}")
            self.meters[k].update(v)

    def __getattr__(self, attr: str) -> SmoothedValue:
        if attr in self.__dict__.get("meters", {}):
            return self.meters[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The running state of every meter (total, count, window), in insertion order: saved in a
        mid-epoch checkpoint, so that the resumed epoch logs the same averages as an uninterrupted one."""
        return {
            name: {
                "total": m.total,
                "count": m.count,
                "window": list(m.deque),
                "window_size": m.deque.maxlen,
                "fmt": m.fmt,
            }  # fmt: skip
            for name, m in self.meters.items()
        }

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Put back the meters saved by ``state_dict`` (same order, sums and windows)."""
        self.meters.clear()
        for name, s in state.items():
            m = SmoothedValue(window_size=s["window_size"], fmt=s["fmt"])
            m.deque = deque((float(v) for v in s["window"]), maxlen=s["window_size"])
            m.total, m.count = float(s["total"]), int(s["count"])
            self.meters[name] = m

    def log_every(
        self,
        iterable: Iterable[Any],
        print_freq: int,
        header: str = "",
        run_eta: Callable[[float], float] | None = None,
    ) -> Iterator[Any]:
        """Yield from ``iterable``, printing meters, speed and ETA every ``print_freq`` steps.
        ``run_eta(seconds_left_in_this_loop)``, when given, returns the seconds left in the whole
        run, printed as ``run eta``."""
        start = end = time.time()
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        try:
            total: int | None = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
        width = len(str(total)) if total else 1
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            last = total is not None and i == total - 1
            if i % print_freq == 0 or last:
                parts = [header, f"[{i:>{width}}/{total if total is not None else '?'}]"]
                if total is not None:
                    left = iter_time.global_avg * (total - i - 1)
                    parts.append(f"eta: {datetime.timedelta(seconds=int(left))}")
                    if run_eta is not None:
                        parts.append(f"run eta: {datetime.timedelta(seconds=int(run_eta(left)))}")
                parts += [str(self), f"time: {iter_time}", f"data: {data_time}"]
                if torch.cuda.is_available():
                    parts.append(f"max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}MB")
                print(self.delimiter.join(p for p in parts if p), flush=True)
            end = time.time()
        total_time = datetime.timedelta(seconds=int(time.time() - start))
        n = total if total is not None else 1
        print(f"{header} Total time: {total_time} ({(time.time() - start) / max(n, 1):.4f} s / it)", flush=True)


class RunClock:
    """Seconds spent per training epoch and per evaluation so far, for the whole run's ETA that
    ``MetricLogger.log_every`` prints (``run_eta=clock.run_eta``)."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.epoch, self.epoch_start = epochs, 0, time.time()
        self.epoch_seconds, self.epochs_timed, self.eval_seconds = 0.0, 0, 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.epoch_start = epoch, time.time()

    def end_epoch(self, whole: bool) -> None:
        """Count the epoch's time (``whole``: not a resumed part of one)."""
        if whole:
            self.epoch_seconds += time.time() - self.epoch_start
            self.epochs_timed += 1

    def run_eta(self, left: float) -> float:
        """Seconds left in the run, given ``left`` seconds in this epoch's training: this epoch, its
        evaluation, and the epochs after it."""
        per_epoch = (self.epoch_seconds / self.epochs_timed if self.epochs_timed
                     else time.time() - self.epoch_start + left)  # fmt: skip
        return left + self.eval_seconds + (self.epochs - self.epoch - 1) * (per_epoch + self.eval_seconds)


class TensorboardLogger:
    """``--tensorboard``: scalars for TensorBoard under ``<output_dir>/tensorboard`` (rank 0 only).
    Needs the ``tensorboard`` package (an optional extra)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RuntimeError("--tensorboard needs the 'tensorboard' package: pip install tensorboard") from e
        self.writer = SummaryWriter(str(log_dir))

    def log(self, scalars: dict[str, float], step: int, prefix: str = "") -> None:
        for k, v in scalars.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The epochs of a run's ``log.txt`` (one JSON object a line, as officially); [] when absent."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def check_log(path: Path) -> str | None:
    """Check a resumed run's ``log.txt`` before training: a last line cut short by an interrupted
    write (no newline, not JSON) is removed, and a warning returned; any other line that is not a
    JSON object raises ``ValueError`` naming the file and line."""
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            continue
        if i == len(lines) - 1 and not line.endswith("\n"):
            write_text_atomic(path, "".join(lines[:i]))
            return f"{path}: removed its last line, cut short by an interrupted write ({len(line)} characters)"
        raise ValueError(
            f"{path} line {i + 1} is not a JSON object (one per epoch): repair or remove that line, then resume"
        )
    return None


def write_log_line(path: Path, stats: dict[str, Any]) -> None:
    """Append the epoch's line to ``log.txt`` (replacing a line of the same epoch written before a
    crash, so that a redone evaluation is never logged twice)."""
    lines = [e for e in read_log(path) if e.get("epoch") != stats["epoch"]]
    write_text_atomic(path, "".join(json.dumps(e) + "\n" for e in [*lines, stats]))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
