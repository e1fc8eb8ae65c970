"""util/host_memory.py: freed memory is reused instead of being page-faulted in again."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Allocates and touches a 64 MB tensor 16 times; prints the page faults of the last eight (the
# first ones settle the heap).
PROBE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from util.host_memory import apply_host_allocator
applied = apply_host_allocator({mode!r})
for _ in range(8):
    torch.ones(16 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(16 * 2**20).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(mode: str) -> tuple[bool, int]:
    code = PROBE.format(root=str(ROOT), mode=mode)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_reuses_freed_memory_without_page_faults():
    from util.host_memory import glibc

    if glibc() is None:
        pytest.skip("not glibc")
    applied, faults_keep = _probe("keep")
    not_applied, faults_system = _probe("system")
    assert applied and not not_applied
    # system: each 64 MB tensor is mapped afresh (16,384 pages of 4 KiB, fewer with huge pages);
    # keep: the heap's blocks are reused (0 faults here; CI's heap once took one more block)
    assert faults_system > 8 * 1000
    assert faults_keep <= faults_system / 4


def test_unknown_mode_is_refused():
    from util.host_memory import apply_host_allocator

    with pytest.raises(ValueError, match="--host_allocator"):
        apply_host_allocator("jemalloc")
