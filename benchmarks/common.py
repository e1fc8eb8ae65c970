"""Shared pieces of the benchmark scripts: synchronised timing with warm-up, peak memory on CPU
and GPU, alternating repetitions with medians, thread settings, and the machine description.

Timing follows Deformable DETR's ``benchmark.py`` (warm-up iterations dropped, each timed call
bracketed by ``torch.cuda.synchronize()`` on a GPU); ``peak_memory_mib`` says how memory is measured.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from util.host_memory import M_MMAP_MAX, M_MMAP_THRESHOLD, glibc, keeps_freed_memory  # noqa: E402

_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX (DEFAULT_MMAP_MAX)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all threads) of one ``fn()``, synchronised on a
    GPU. On a CPU shared with other jobs, the CPU seconds of a one-thread run are the steadier
    measure of the work done; with several threads they also count threads waiting for others."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory (MiB) one ``fn()`` takes above what was in use before it (NaN where it
    cannot be measured: a CPU that is not Linux with glibc).

    On a GPU from the caching allocator's statistics (tensor memory); on a Linux CPU (PyTorch keeps
    no CPU allocator statistics) from the process's peak resident set size, reset before the call
    (``/proc/self/clear_refs``), with glibc told to map every block of 64 KiB or more separately so
    that freed tensors leave the resident set and to return its free blocks first (``mallopt``,
    ``malloc_trim``; the threshold is restored afterwards to keep the timing runs' allocation
    behaviour)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    libc = glibc()
    if libc is None:
        return math.nan
    try:
        # blocks over 64 KiB mapped afresh for the call (also where the process keeps freed memory,
        # which forbids mmap): freed-and-reused heap blocks cannot then hide or double-count growth
        if not (libc.mallopt(M_MMAP_MAX, _GLIBC_MMAP_MAX) and libc.mallopt(M_MMAP_THRESHOLD, 1 << 16)):
            return math.nan
        libc.malloc_trim(0)  # free blocks kept by glibc go back to the system: reuse shows as growth
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM) to the current one
        base = _status_mib("VmRSS:")
        fn()
        return _status_mib("VmHWM:") - base
    except (OSError, KeyError, AttributeError):
        return math.nan
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest dynamic threshold
        if keeps_freed_memory():
            libc.mallopt(M_MMAP_MAX, 0)  # back to main.py's --host_allocator keep


class Alternating:
    """Per-variant timings collected in alternation (variant A, B, C, A, B, C, ...), so that load
    from other jobs on the machine hits every variant alike; medians and ratios at the end."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float | tuple[float, float]) -> None:
        """Wall seconds, or ``(wall, cpu)`` as ``time_call`` returns."""
        wall, cpu = seconds if isinstance(seconds, tuple) else (seconds, None)
        self.times.setdefault(name, []).append(wall)
        if cpu is not None:
            self.cpu.setdefault(name, []).append(cpu)

    def median(self, name: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.times)[name])

    def ratio(self, name: str, reference: str, cpu: bool = False) -> float:
        """How many times faster ``name`` is than ``reference`` (ratio of medians)."""
        return self.median(reference, cpu) / self.median(name, cpu)


def time_alternately(
    fns: dict[str, Callable[[], object]], device: torch.device, warm: int, iters: int, repeats: int
) -> tuple[Alternating, dict[str, object]]:
    """Time every ``fns`` entry alternately: first ``warm`` untimed calls of each (compilation,
    allocator), keeping each one's first output; then ``repeats`` rounds of ``iters`` timed calls
    (``time_call``) of each in turn. Returns the timings and the first outputs (of those warmed)."""
    outputs: dict[str, object] = {}
    for key, fn in fns.items():
        for i in range(warm):
            out = fn()
            if i == 0:
                outputs[key] = out
    timings = Alternating()
    for _ in range(repeats):
        for key, fn in fns.items():
            for _ in range(iters):
                timings.add(key, time_call(fn, device))
    return timings, outputs


def set_threads(threads: int | None, device: torch.device) -> int:
    """On a CPU, ``torch.set_num_threads(threads)`` (default: every core, at most the CPU count)."""
    if device.type == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.get_num_threads()


def describe_machine(device: torch.device) -> str:
    """One line: device, CPU threads, PyTorch and Python versions, load average."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.processor() or platform.machine()
        flags = ""
        if Path("/proc/cpuinfo").is_file():
            info = Path("/proc/cpuinfo").read_text()
            flags = " ".join(f for f in ("avx512_bf16", "amx_bf16") if f in info)
        what = f"CPU {what} ({os.cpu_count()} cores{', ' + flags if flags else ''})"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{what}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
        f"Python {platform.python_version()}; load average {load:.1f}"
    )


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0
