"""Deterministic, resumable data order and augmentation randomness: ``ResumableSampler`` and ``SeededDataset``.

Both are pure functions of ``(seed, epoch, index)``, so a run resumed part way through an epoch sees
the samples and augmentations it would have seen. The official code draws both from the global
random generators, so a resumed run depends on everything that consumed random numbers before.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class SeededDataset(Dataset):
    """Wraps a dataset; item ``i`` of epoch ``e`` is produced under seed ``f(seed, e, i)``.

    Each sample's transforms run under generators seeded from ``(seed, epoch, index)``, so a sample
    is augmented the same way whichever worker loads it and whatever was loaded before it. The
    global CPU generators (Python's ``random`` and torch's) are restored afterwards; CUDA generators
    are left alone."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # expose e.g. ``.coco`` of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        # Only the CPU generators: transforms draw from nothing else. ``torch.manual_seed`` would
        # also (lazily) reseed every CUDA device, and costs a Python stack capture per call.
        py_state = random.getstate()
        torch_state = torch.default_generator.get_state()
        try:
            random.seed(sample_seed)
            torch.default_generator.manual_seed(sample_seed % (2**63))
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            torch.default_generator.set_state(torch_state)


class ResumableSampler(Sampler[int]):
    """Shuffled (or sequential) indices for one rank; ``set_epoch`` picks the permutation and
    ``start_index`` skips the indices this rank already consumed in the current epoch (mid-epoch
    resumption). The permutation comes from a generator seeded with ``seed + epoch``: the same order
    on every rank, each rank taking its strided share, as ``DistributedSampler``.

    ``shard=True`` (``--cache_mode``): rank ``r`` only ever draws the indices ``i`` with ``i %
    num_replicas == r``, the images its ``ImageCache`` holds, shuffled among themselves each epoch
    (Deformable DETR's ``NodeDistributedSampler`` does the same); with one process it is the
    ordinary sampler."""

    def __init__(
        self,
        dataset_len: int,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pad: bool = True,
        shard: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.dataset_len = dataset_len
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_index = 0
        self.pad = pad  # False for evaluation: no image is seen twice, ranks may differ by one
        self.shard = shard and num_replicas > 1
        self.num_samples = math.ceil(dataset_len / num_replicas) if pad else len(range(rank, dataset_len, num_replicas))
        self.total_size = self.num_samples * num_replicas if pad else dataset_len

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        self.epoch = epoch
        self.start_index = start_index

    def _indices(self) -> list[int]:
        if self.shard:
            return self._shard_indices()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            indices = list(range(self.dataset_len))
        if self.pad and self.total_size > len(indices):  # pad so every rank gets the same count
            indices += indices[: self.total_size - len(indices)]
        return indices[self.rank : self.total_size : self.num_replicas]

    def _shard_indices(self) -> list[int]:
        own = list(range(self.rank, self.dataset_len, self.num_replicas)) or [self.rank % max(self.dataset_len, 1)]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            own = [own[k] for k in torch.randperm(len(own), generator=g).tolist()]
        while self.pad and len(own) < self.num_samples:  # pad so every rank gets the same count
            own += own[: self.num_samples - len(own)]
        return own

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index
