"""``--cache_mode``: each image file read once into memory (the start-up check reads the cached
bytes), samples identical to reading from disk, each rank holding and drawing only its shard."""

from __future__ import annotations

import builtins
from collections import Counter
from pathlib import Path

import pytest
import torch
from data_faults import copy_coco

from datasets import DataConfig, build_dataset
from datasets.images import ImageCache
from datasets.sampling import ResumableSampler, SeededDataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_each_file_read_once_and_samples_identical(
    tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_coco(synthetic_root, tmp_path / "coco")
    cfg = DataConfig(coco_path=str(root), train_scales=(48, 64), val_size=64, max_size=64, cache_mode=True)
    opened: Counter[str] = Counter()
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):  # noqa: ANN001, ANN202
        if str(file).startswith(str(root / "train2017")):
            opened[Path(file).name] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    cached = build_dataset("train", cfg)  # the start-up check included
    monkeypatch.setattr(builtins, "open", real_open)
    assert sorted(opened) == sorted(p.name for p in (root / "train2017").iterdir()) and set(opened.values()) == {1}
    assert len(cached.image_source.cache) == 12

    for path in (root / "train2017").iterdir():  # nothing is read from disk any more
        path.unlink()
    from_disk = build_dataset(
        "train", DataConfig(**{**cfg.__dict__, "coco_path": str(synthetic_root), "cache_mode": False})
    )
    a, b = SeededDataset(from_disk, seed=3), SeededDataset(cached, seed=3)  # the same augmentation draws
    for idx in range(len(cached)):
        (a_image, a_target), (b_image, b_target) = a[idx], b[idx]
        assert torch.equal(a_image, b_image)
        assert a_target.keys() == b_target.keys() and all(torch.equal(a_target[k], b_target[k]) for k in a_target)


def test_shards(tmp_path: Path, synthetic_root: Path) -> None:
    paths = sorted(str(p) for p in (synthetic_root / "train2017").iterdir())
    cache = ImageCache(paths, rank=1, world_size=3)
    assert [i for i in range(len(paths)) if cache.get(i) is not None] == [1, 4, 7, 10]

    for rank in range(3):
        sampler = ResumableSampler(11, shuffle=True, seed=0, num_replicas=3, rank=rank, shard=True)
        epochs = []
        for epoch in range(4):
            sampler.set_epoch(epoch)
            indices = list(sampler)
            assert len(indices) == len(sampler) == 4  # ceil(11 / 3), padded from the rank's own shard
            assert {i % 3 for i in indices} == {rank} and set(indices) == set(range(rank, 11, 3))
            epochs.append(indices)
        assert len({tuple(e) for e in epochs}) > 1  # reshuffled with the epoch
        sampler.set_epoch(1, start_index=2)
        assert list(sampler) == epochs[1][2:]  # mid-epoch resumption
