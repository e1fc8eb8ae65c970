"""SeededDataset: each sample's randomness is a function of (seed, epoch, index) alone, and the
caller's random generators are left as they were."""

from __future__ import annotations

import random

import torch

from datasets.sampling import SeededDataset


class Draws(torch.utils.data.Dataset):
    """Item i: a draw from Python's ``random`` and one from torch's CPU generator."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> tuple[float, float]:
        return random.random(), float(torch.rand(()))


def test_samples_depend_on_seed_epoch_index_only_and_global_rng_is_restored():
    ds = SeededDataset(Draws(), seed=3)
    random.seed(11)
    torch.manual_seed(11)
    forward = [ds[i] for i in range(5)]
    expected_py, expected_torch = random.random(), float(torch.rand(()))
    random.seed(11)
    torch.manual_seed(11)
    backward = [ds[i] for i in reversed(range(5))][::-1]
    assert forward == backward  # order-independent
    assert (random.random(), float(torch.rand(()))) == (expected_py, expected_torch)  # caller's streams intact
    assert len(set(forward)) == 5
    ds.set_epoch(1)
    assert all(a != b for a, b in zip(forward, (ds[i] for i in range(5))))
    assert SeededDataset(Draws(), seed=4)[0] != forward[0]
