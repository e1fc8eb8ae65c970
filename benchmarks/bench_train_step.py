"""Training speed: this project's CPU fast paths A/B in one process, and its main.py loop against the official one.

    python benchmarks/bench_train_step.py --config demo --variants official default bf16
    python benchmarks/bench_train_step.py --config official_aug --official ~/detr --iters 8 --repeats 2

Without ``--official``, the variants (``VARIANTS``) train alternately on the same batches and the
script prints the median seconds per step, the speed-up over ``official`` and the data pipeline's
time per batch (``run``); with ``--official DIR`` it times whole epochs of the official ``main.py``
and of ours (``compare_official``). main.py flags after the script's own are appended to the
configuration's (``CONFIGS``). Not in the official code; figures in docs/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
from benchmarks.common import Alternating, describe_machine  # noqa: E402
from benchmarks.official import CodeBase, cleanup, load_official, official_args, ours  # noqa: E402
from datasets.sampling import SeededDataset  # noqa: E402
from engine import _float_outputs  # noqa: E402
from models import build_model  # noqa: E402
from models.optimize import fold_frozen_batchnorm_for_training  # noqa: E402
from util.config import get_args_parser, resolve  # noqa: E402
from util.host_memory import apply_host_allocator  # noqa: E402
from util.misc import collate_fn  # noqa: E402
from util.optim import build_optimizer, clip_grad_norm, param_groups  # noqa: E402

# --config: "demo" is the ``make demo-detr`` model (ResNet-18 from scratch, hidden 128, 1+3 layers, 10
# queries, 96 px, batch 16; add --model deformable_detr for the ``make demo`` one); "official_aug" is
# ResNet-18, hidden 128, 2+2 layers, batch 4 with the official augmentation (scales 480-800, max size
# 1333; pass real images with --coco_path). Without --coco_path the synthetic data set is generated in
# a temporary folder.
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
        "--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32",
        "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_queries", "4",
        "--batch_size", "2", "--train_scales", "64", "--val_size", "64", "--max_size", "64",
    ],
}  # fmt: skip
# official: AdamW and clip_grad_norm_ with PyTorch's CPU defaults (per-tensor loops);
# default: this project's fp32 default, the multi-tensor kernels of util.optim (bit-identical weights);
# fused: --fused_optimizer (rounding differs slightly);
# channels_last: the model in channels-last memory format (convolution rounding differs);
# fold: --fold_frozen_bn (frozen BatchNorm folded into the convolutions while training; a backbone
#   with learning BatchNorm, as the demo's, has nothing to fold);
# per_image: --backbone_per_image (the backbone on each image at its own size; border features
#   change; needs the frozen BatchNorm backbone: not --config demo);
# bf16: --amp bf16 autocast (AMX / AVX512-BF16 where the CPU has them).
VARIANTS = ("official", "default", "fused", "channels_last", "fold", "per_image", "bf16")
IMAGE_SIZES = {"demo": 96, "official_aug": 640, "tiny": 64}  # side of the generated images
OURS_ONLY = {"--backbone_weights": 1, "--train_backbone_all": 0}  # flags the official parser lacks: value count


class Variant:
    """One way of running a training step, on its own copy of the model."""

    def __init__(self, name: str, model: torch.nn.Module, criterion: torch.nn.Module, args: Any) -> None:
        self.name, self.criterion = name, criterion
        self.model = copy.deepcopy(model).train()
        if name == "channels_last":
            self.model = self.model.to(memory_format=torch.channels_last)
        if name == "fold":
            fold_frozen_batchnorm_for_training(self.model)
        if name == "per_image":
            if args.train_backbone_all:  # as BackboneConfig refuses it
                raise SystemExit("variant per_image needs the frozen BatchNorm backbone (not --train_backbone_all)")
            self.model.backbone[0].per_image = True  # what --backbone_per_image builds
        groups = param_groups(self.model, args)
        if name == "official":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                groups, lr=args.lr, weight_decay=args.weight_decay
            )
        else:
            self.optimizer = build_optimizer(groups, args.lr, args.weight_decay, fused=name == "fused")
        self.clip = args.clip_max_norm

    def step(self, samples: Any, targets: list[dict[str, torch.Tensor]]) -> float:
        """One training step (as ``engine.train_one_epoch``); returns its loss."""
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.name == "bf16"):
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


def split_flags(flags: list[str]) -> tuple[list[str], list[str]]:
    """``(flags both code bases take, flags for ours only)`` (``OURS_ONLY``)."""
    shared, mine, i = [], [], 0
    while i < len(flags):
        n = OURS_ONLY.get(flags[i])
        if n is None:
            shared.append(flags[i])
            i += 1
        else:
            mine += flags[i : i + 1 + n]
            i += 1 + n
    return shared, mine


@contextlib.contextmanager
def record_batches() -> Iterator[list[list[float]]]:
    """While active, every ``DataLoader`` iteration appends a list of the times at which its
    batches were handed out (``time.perf_counter``)."""
    runs: list[list[float]] = []
    original = DataLoader.__iter__

    def timed_iter(self: DataLoader) -> Iterator[Any]:
        stamps: list[float] = []
        runs.append(stamps)
        for batch in original(self):
            stamps.append(time.perf_counter())
            yield batch

    DataLoader.__iter__ = timed_iter  # type: ignore[method-assign]
    try:
        yield runs
    finally:
        DataLoader.__iter__ = original  # type: ignore[method-assign]


def make_coco_layout(out: Path, source: Path, num_train: int) -> Path:
    """``out`` in the COCO 2017 layout both code bases read, from the COCO-layout folder
    ``source``: ``train2017`` and ``val2017`` link to its training images; the training
    annotations repeat its images (new ids) up to ``num_train``; validation has the first image."""
    annotations = json.loads((source / "annotations" / "instances_train2017.json").read_text())
    src_images = annotations["images"]
    if not src_images:
        raise ValueError(f"{source}: no training images")
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        (out / split).symlink_to((source / "train2017").resolve(), target_is_directory=True)
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in annotations["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    train_images, train_anns = [], []
    for i in range(num_train):
        img = src_images[i % len(src_images)]
        train_images.append({**img, "id": i + 1})
        for ann in by_image.get(img["id"], []):
            train_anns.append({**ann, "id": len(train_anns) + 1, "image_id": i + 1})
    first = src_images[0]
    val_anns = [{**a, "id": k + 1, "image_id": 1} for k, a in enumerate(by_image.get(first["id"], []))]
    cats = annotations["categories"]
    (out / "annotations").mkdir()
    for split, content in (
        ("train2017", {"images": train_images, "annotations": train_anns, "categories": cats}),
        ("val2017", {"images": [{**first, "id": 1}], "annotations": val_anns, "categories": cats}),
    ):
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    return out


def run_main(codebase: CodeBase, flags: list[str], log: Path) -> list[float]:
    """Run ``codebase``'s ``main.main`` with ``flags`` (parsed by its own parser); returns the
    training batches' arrival times (the longest DataLoader iteration). Its output goes to ``log``."""
    args = official_args(codebase, flags)
    buffer = io.StringIO()
    try:
        with codebase.active(), record_batches() as runs, contextlib.redirect_stdout(buffer):
            codebase.main_script().main(args)
    finally:
        log.write_text(buffer.getvalue())
    if not runs:
        raise RuntimeError(f"{codebase.name}: no DataLoader was iterated (see {log})")
    return max(runs, key=len)


def run_one(a: argparse.Namespace) -> None:
    """``--run_one official|ours``: one code base's ``main.py`` run in this fresh process; writes the
    batches' arrival times as JSON to ``--stamps_out``."""
    codebase = load_official(a.official) if a.run_one == "official" else ours()
    try:
        stamps = run_main(codebase, json.loads(a.flags_json), Path(a.stamps_out).with_suffix(".log"))
    finally:
        cleanup()
    Path(a.stamps_out).write_text(json.dumps(stamps))


def _run_in_process(a: argparse.Namespace, name: str, flags: list[str], out: Path, env: dict[str, str]) -> list[float]:
    """``run_one`` for ``name`` in a new Python process (``env`` added to its environment)."""
    cmd = [sys.executable, __file__, "--run_one", name, "--flags_json", json.dumps(flags), "--stamps_out", str(out),
           "--model", a.model]  # fmt: skip
    if a.official:
        cmd += ["--official", a.official]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: main.py failed (exit {proc.returncode}, log {out.with_suffix('.log')}):\n"
                           f"{proc.stderr[-3000:]}")  # fmt: skip
    return json.loads(out.read_text())


def compare_official(a: argparse.Namespace, extra: list[str], coco_path: Path, work: Path) -> dict[str, float]:
    """Whole training epochs of the official ``main.py`` and ours, alternately, each in a fresh
    process (``--official``).

    ``--official DIR`` is a local clone of facebookresearch/detr, loaded as ``benchmarks/official.py``
    describes. Each round runs the official ``main.main(args)`` and then ours, with the
    configuration's flags, on a training set of exactly ``--iters x batch size`` images (one epoch of
    ``--iters`` iterations, then each code base's evaluation of one image, untimed). Each run is a
    fresh Python process (this script again, ``--run_one``), so a process-wide setting of one code
    base (ours keeps freed memory for reuse, ``--host_allocator``) cannot help the other;
    ``--official_env "MALLOC_MMAP_MAX_=0 ..."`` gives the official process environment variables
    (for instance the same allocator setting). Each code base runs its own loop with its own data
    loading (``--num_workers`` processes). While they run, ``DataLoader`` iterators record when each
    batch reaches the training loop; the seconds per iteration are the intervals between consecutive
    batches (step plus waiting for data: what a user waits for), the first ``--warmup`` dropped;
    medians over the rounds and the ratio. Flags only this project knows (``OURS_ONLY``) go to ours
    only, with ``--num_classes 91`` (the official code's COCO head); ``--ours_flags`` adds more."""
    shared, mine = split_flags([*CONFIGS[a.config], *extra])
    batch = get_args_parser().parse_known_args(shared)[0].batch_size
    common = [*shared, "--epochs", "1", "--device", "cpu", "--output_dir", "", "--num_workers", str(a.num_workers)]
    data = make_coco_layout(work / "coco", coco_path, a.iters * batch)
    common += ["--coco_path", str(data)]
    mine += ["--model", a.model, "--num_classes", "91", *shlex.split(a.ours_flags)]
    official_env = dict(item.split("=", 1) for item in shlex.split(a.official_env))
    official = load_official(a.official)  # checked here, before any run: the clone, --model, the flags
    if a.model not in official.kinds:
        raise ValueError(f"--model {a.model}: {a.official} is the official {'/'.join(official.kinds)}")
    official_args(official, common)  # SystemExit naming a flag the official parser lacks
    cleanup()
    print(describe_machine(torch.device("cpu")))
    print(f"main.py {' '.join(common)}\n  ours also: {' '.join(mine)}\n  {a.iters * batch} training images per epoch")
    if official_env:
        print(f"  official environment: {a.official_env}")
    timings = Alternating()
    for r in range(a.repeats):
        for name in ("official", "ours"):
            flags, env = (common + mine, {}) if name == "ours" else (common, official_env)
            stamps = _run_in_process(a, name, flags, work / f"{name}_{r}.json", env)
            if len(stamps) != a.iters:
                raise RuntimeError(f"{name}: {len(stamps)} training batches instead of {a.iters} (see {work})")
            for t0, t1 in zip(stamps[a.warmup :], stamps[a.warmup + 1 :]):
                timings.add(name, t1 - t0)
            recent = timings.times[name][-(a.iters - a.warmup - 1) :]
            print(f"round {r}: {name:8} {statistics.median(recent):.3f} s/iteration", flush=True)
    print(f"\n{'code':8} {'s/iter':>8} {'img/s':>7} {'speed-up':>8}")
    result = {}
    for name in ("official", "ours"):
        result[name] = timings.median(name)
        print(f"{name:8} {result[name]:8.3f} {batch / result[name]:7.2f} {timings.ratio(name, 'official'):7.2f}x")
    result["speedup"] = timings.ratio("ours", "official")
    print("seconds per iteration: median interval between training batches (step + data wait), warm-up dropped")
    return result


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the command line, time the variants (or the two code bases' loops with ``--official``),
    print the table; returns seconds per step (per iteration) by variant (code base).

    Each variant gets its own copy of the same initial model and optimizer and trains on the same
    batches (made once by the real data set, transforms and collation); the variants alternate, step
    by step (each batch in turn through every variant), ``--repeats`` times over ``--steps`` batches,
    so a machine shared with other jobs slows them all alike and the ratios stay meaningful. The
    speed-up over ``official`` is the median of the per-step ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Other flags go to main.py's parser(s), after the configuration's."
    )
    parser.add_argument("--config", default="demo", choices=sorted(CONFIGS))
    parser.add_argument("--model", default="detr", choices=("detr", "deformable_detr"))
    parser.add_argument("--coco_path", default=None, help="COCO layout folder (default: generated synthetic data)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=VARIANTS,
        help="default: all (per_image only with the frozen BatchNorm backbone)",
    )
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per repeat (distinct batches)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5; with --official 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (with --official: intervals)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--official", default=None, metavar="DIR", help="official clone: time both main.py loops")
    parser.add_argument("--iters", type=int, default=8, help="with --official: training iterations per run")
    parser.add_argument("--num_workers", type=int, default=2, help="with --official: data loader processes")
    parser.add_argument("--ours_flags", default="", help="with --official: more main.py flags for ours only")
    parser.add_argument("--keep", default=None, help="with --official: keep the data layout and logs here")
    parser.add_argument("--official_env", default="", help='with --official: "NAME=value ..." for the official runs')
    parser.add_argument(
        "--host_allocator",
        default="keep",
        choices=("keep", "system"),
        help="without --official: main.py's setting for this process, every variant alike (default keep)",
    )
    parser.add_argument("--run_one", choices=("official", "ours"), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--flags_json", help=argparse.SUPPRESS)
    parser.add_argument("--stamps_out", help=argparse.SUPPRESS)
    a, extra = parser.parse_known_args(argv)  # main.py flags (after the configuration's: they win)
    if a.run_one:
        if a.threads:
            torch.set_num_threads(a.threads)
        run_one(a)
        return {}
    a.repeats = a.repeats or (2 if a.official else 5)
    if a.official and a.iters <= a.warmup + 1:
        raise SystemExit(f"error: --iters ({a.iters}) must exceed --warmup + 1 ({a.warmup + 1})")
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        coco_path = Path(a.coco_path) if a.coco_path else Path(tmp) / "synthetic"
        if a.coco_path is None:
            from datasets.synthetic import generate_synthetic_coco

            size = IMAGE_SIZES[a.config]
            generate_synthetic_coco(coco_path, num_train=64, num_val=2, image_size=size, verbose=False)
        if a.official:
            work = Path(a.keep) if a.keep else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            try:
                return compare_official(a, extra, coco_path, work)
            except (FileNotFoundError, ValueError) as e:
                raise SystemExit(f"error: {e}") from e
            finally:
                cleanup()
        apply_host_allocator(a.host_allocator)
        flags = [*CONFIGS[a.config], *extra, "--model", a.model, "--coco_path", str(coco_path), "--device", "cpu"]
        args = resolve(get_args_parser().parse_args(flags))
        args.num_classes = datasets.max_category_id(datasets.build_dataset("train", args)) + 1
        batches, data_seconds = make_batches(args, a.steps)
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    if a.variants is None:
        a.variants = [v for v in VARIANTS if not (v == "per_image" and args.train_backbone_all)]
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
