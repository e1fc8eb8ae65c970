"""Training-step speed of the CPU fast paths, measured A/B in one process.

Each variant gets its own copy of the same initial model and optimizer and trains on the same
batches (made once by the real data set, transforms and collation); the variants alternate,
step by step (each batch in turn through every variant), ``--repeats`` times over ``--steps``
batches, so a machine shared with other jobs slows them all alike and the ratios stay meaningful.
Reports the median seconds per step, the speed-up over ``official`` (what the official code runs
on a CPU; the median of the per-step ratios) and the data pipeline's time per batch.

Variants:

* ``official``: AdamW and ``clip_grad_norm_`` with PyTorch's CPU defaults (per-tensor loops);
* ``default``: this project's fp32 default, the multi-tensor kernels of ``util.optim``
  (bit-identical weights);
* ``fused``: ``--fused_optimizer`` (rounding differs slightly);
* ``channels_last``: the model in channels-last memory format (convolution rounding differs);
* ``bf16``: ``--amp bf16`` autocast (AMX / AVX512-BF16 where the CPU has them).

Configurations (``--config``): ``demo`` (the ``make demo-detr`` model: ResNet-18 from scratch,
hidden 128, 1+3 layers, 10 queries, 96 px, batch 16; ``--model deformable_detr`` for the
``make demo`` one) and ``official_aug`` (ResNet-18, hidden 128, 2+2 layers, batch 4, the official
augmentation with scales 480-800 and max size 1333; pass real images with ``--coco_path``).
Without ``--coco_path`` the synthetic data set is generated in a temporary folder.

    python benchmarks/bench_train_step.py --config demo --variants official default bf16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
import main as main_module  # noqa: E402
from datasets.sampling import SeededDataset  # noqa: E402
from engine import _float_outputs  # noqa: E402
from models import build_model  # noqa: E402
from util.misc import collate_fn  # noqa: E402
from util.optim import build_optimizer, clip_grad_norm  # noqa: E402

CONFIGS = {
    "demo": [
        "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all", "--hidden_dim", "128",
        "--enc_layers", "1", "--dec_layers", "3", "--dim_feedforward", "512", "--num_queries", "10",
        "--dropout", "0.0", "--lr", "2e-4", "--lr_backbone", "2e-4", "--batch_size", "16",
        "--train_scales", "96", "--val_size", "96", "--max_size", "96",
    ],
    "official_aug": [
        "--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "128", "--enc_layers", "2",
        "--dec_layers", "2", "--batch_size", "4",
    ],
    "tiny": [  # for the test suite: runs in seconds
        "--backbone", "resnet18", "--backbone_weights", "none", "--train_backbone_all", "--hidden_dim", "32",
        "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_queries", "4",
        "--batch_size", "2", "--train_scales", "64", "--val_size", "64", "--max_size", "64",
    ],
}  # fmt: skip
VARIANTS = ("official", "default", "fused", "channels_last", "bf16")


class Variant:
    """One way of running a training step, on its own copy of the model."""

    def __init__(self, name: str, model: torch.nn.Module, criterion: torch.nn.Module, args: Any) -> None:
        self.name, self.criterion = name, criterion
        self.model = copy.deepcopy(model).train()
        if name == "channels_last":
            self.model = self.model.to(memory_format=torch.channels_last)
        groups = main_module._param_groups(self.model, args)
        if name == "official":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                groups, lr=args.lr, weight_decay=args.weight_decay
            )
        else:
            self.optimizer = build_optimizer(groups, args.lr, args.weight_decay, fused=name == "fused")
        self.clip = args.clip_max_norm

    def step(self, samples: Any, targets: list[dict[str, torch.Tensor]]) -> float:
        """One training step (as ``engine.train_one_epoch``); returns its loss."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.name == "bf16"):
            outputs = self.model(samples)
        loss_dict = self.criterion(_float_outputs(outputs), targets)
        weights = self.criterion.weight_dict
        loss = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
        self.optimizer.zero_grad()
        loss.backward()
        if self.name == "official":
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        else:
            clip_grad_norm(self.model.parameters(), self.clip)
        self.optimizer.step()
        return float(loss.detach())


def make_batches(args: Any, count: int) -> tuple[list[Any], float]:
    """``count`` training batches from the real pipeline; returns them and the seconds per batch."""
    dataset = SeededDataset(datasets.build_dataset("train", args), seed=args.seed)
    start = time.perf_counter()
    n = len(dataset)
    batches = [
        collate_fn([dataset[(b * args.batch_size + i) % n] for i in range(args.batch_size)]) for b in range(count)
    ]
    return batches, (time.perf_counter() - start) / count


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the command line, time the variants, print the table; returns seconds per step by variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", choices=sorted(CONFIGS))
    parser.add_argument("--model", default="detr", choices=("detr", "deformable_detr"))
    parser.add_argument("--coco_path", default=None, help="COCO layout folder (default: generated synthetic data)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per repeat (distinct batches)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    a = parser.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        coco_path = a.coco_path
        if coco_path is None:
            from datasets.synthetic import generate_synthetic_coco

            size = 64 if a.config == "tiny" else 96
            generate_synthetic_coco(tmp, num_train=64, num_val=2, image_size=size, verbose=False)
            coco_path = tmp
        flags = [*CONFIGS[a.config], "--model", a.model, "--coco_path", coco_path, "--device", "cpu"]
        args = main_module.resolve_args(main_module.get_args_parser().parse_args(flags))
        args.num_classes = datasets.max_category_id(datasets.build_dataset("train", args)) + 1
        batches, data_seconds = make_batches(args, a.steps)
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    variants = [Variant(name, model, criterion, args) for name in a.variants]
    for v in variants:  # warm-up: allocator, oneDNN primitives
        for _ in range(a.warmup):
            v.step(*batches[0])
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(a.repeats):
        for samples, targets in batches:
            for v in variants:  # alternate step by step: load changes hit every variant alike
                start = time.perf_counter()
                v.step(samples, targets)
                times[v.name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference_name = "official" if "official" in times else variants[0].name
    # speed-up: the median over steps of (reference step time / this variant's step on the same batch)
    speedups = {n: statistics.median(r / x for r, x in zip(times[reference_name], t)) for n, t in times.items()}
    print(
        f"config {a.config}, model {a.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{a.repeats} x {a.steps} steps per variant; data pipeline {data_seconds:.3f} s per batch (1 process)"
    )
    print(f"{'variant':<15}{'s/step':>10}{'speed-up':>10}  (paired per step, against {reference_name})")
    for name, seconds in medians.items():
        print(f"{name:<15}{seconds:>10.3f}{speedups[name]:>9.2f}x")
    return medians


if __name__ == "__main__":
    run()
