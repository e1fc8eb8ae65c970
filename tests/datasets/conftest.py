"""Shared fixtures for the data set tests: a tiny synthetic COCO folder and the real sample's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.synthetic import generate_synthetic_coco

REAL_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tiny_coco"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12 train + 6 val image synthetic data set of 64x64 images (read-only for the tests)."""
    root = tmp_path_factory.mktemp("synthetic_coco")
    generate_synthetic_coco(root, num_train=12, num_val=6, image_size=64, seed=0, verbose=False)
    return root


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The 16-image COCO train2017 sample; skips the test when it is not available."""
    if not (REAL_SAMPLE / "instances_train2017_small.json").is_file():
        pytest.skip(f"real COCO sample not found under {REAL_SAMPLE}")
    return REAL_SAMPLE
