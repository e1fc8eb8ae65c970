"""Host (CPU) memory: keep freed memory in the process for reuse, as CUDA's caching allocator does.

``main.py`` calls ``keep_freed_memory`` (``apply_host_allocator`` is the benchmarks' ``--host_allocator keep|system``); ``keep_freed_memory`` sets
glibc's ``mallopt`` so that large blocks come from the heap and the heap is not trimmed. Numbers are
unchanged (only where memory comes from changes); the process keeps its peak memory; other C
libraries (musl, macOS, Windows) are left alone. The official code has no such setting (the same
effect there: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
_KEEP_UP_TO = 2**31 - 1  # bytes of free memory at the top of the heap kept before trimming (C int)
_applied = False


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (for ``mallopt`` / ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return None
    gnu_get_libc_version.restype = ctypes.c_char_p
    return libc


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no ``mmap`` for large blocks, no heap trimming), for
    this process and the processes it forks afterwards (DataLoader workers). Returns whether it
    applies (glibc only); calling it again does nothing more.

    Why: PyTorch allocates CPU tensors with ``malloc``. glibc serves large blocks (a feature map of
    a detection-sized batch is 50-200 MB) with ``mmap`` and gives them back to the kernel with
    ``munmap`` when they are freed, so every training step maps its activations afresh and the
    kernel zero-fills each 4 KiB page on first touch, a large share of a CPU training step's time
    (measured in docs/results.md, B). With this, freed blocks are reused by the next step."""
    global _applied
    if _applied:
        return True
    libc = glibc()
    if libc is None:
        return False
    _applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _KEEP_UP_TO) == 1
    return _applied


def keeps_freed_memory() -> bool:
    """Whether ``keep_freed_memory`` applies to this process."""
    return _applied


def apply_host_allocator(mode: str) -> bool:
    """The benchmarks' ``--host_allocator``: ``keep`` calls ``keep_freed_memory``; ``system`` leaves the C
    library's defaults. Returns whether freed memory is kept."""
    if mode not in ("keep", "system"):
        raise ValueError(f"--host_allocator: unknown '{mode}', choose keep or system")
    return keep_freed_memory() if mode == "keep" else _applied
