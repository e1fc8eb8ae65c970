"""Shared test set-up: the repository root on ``sys.path``, few CPU threads, every test starting from
the same random state, small fixtures."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

# Without an NVIDIA GPU, the Triton kernels are tested in Triton's CPU interpreter. The variable
# must be set before Triton is first imported, which ``import torchvision`` already does.
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

# 2 threads as on CI; DETR_TEST_THREADS=1 (or more) checks that no tolerance depends on the count.
torch.set_num_threads(int(os.environ.get("DETR_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _same_random_state() -> None:
    """Python's and torch's generators seeded before every test (numpy's global one is used by none of
    the code under test): a test that draws an augmentation or initial weights sees the same draw on
    every run and in any order, so a rare draw cannot fail CI once in a few hundred runs."""
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated COCO-layout data set (12 train / 6 val images of 64 px)."""
    from datasets.synthetic import generate_synthetic_coco

    out = tmp_path_factory.mktemp("synthetic_coco")
    generate_synthetic_coco(out, num_train=12, num_val=6, image_size=64, seed=0, verbose=False)
    return out
