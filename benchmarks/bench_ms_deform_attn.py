"""Benchmark multi-scale deformable attention implementations and a whole Deformable DETR step.

Op mode (default): times ``ms_deform_attn`` forward (no grad) and forward+backward at COCO shapes
(4 levels of an 800x1333 image: (100,167), (50,84), (25,42), (13,21); 8 heads of 32 channels;
4 points) for the decoder (300 queries) and the encoder (one query per token, ~22k), batch 2 and 8,
fp32 and bf16, for each implementation in ``MS_DEFORM_ATTN_IMPLS``; reports milliseconds, the ratio
to ``pytorch`` and the peak CUDA memory. On a CPU it times ``pytorch`` only, at a reduced shape
(levels divided by 8, batch 1), and says so: the Triton kernels need a GPU.

Model mode (``--model``): one Deformable DETR training step (forward, loss, backward, optimizer
step) and one inference forward, per implementation (``--attn_impl``). CUDA: ResNet-50, the
official configuration, 800x1333 images; CPU: a reduced model and image.

Not a port of anything official (the official repository ships no benchmark).

    python benchmarks/bench_ms_deform_attn.py [--batch 2 8] [--dtypes fp32 bf16] [--model]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.ops import MS_DEFORM_ATTN_IMPLS, triton_available  # noqa: E402

COCO_LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def make_inputs(batch: int, levels: list[tuple[int, int]], queries: int | None, heads: int, head_dim: int,
                points: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Random op inputs; ``queries=None`` means one query per token (the encoder)."""
    shapes = torch.tensor(levels, dtype=torch.int64, device=device)
    start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    s = int(shapes.prod(1).sum())
    q = s if queries is None else queries
    nl = len(levels)
    value = torch.randn(batch, s, heads, head_dim, device=device, dtype=dtype)
    loc = (torch.rand(batch, q, heads, nl, points, 2, device=device) * 1.1 - 0.05).to(dtype)
    attn = torch.softmax(torch.randn(batch, q, heads, nl * points, device=device), -1)
    attn = attn.view(batch, q, heads, nl, points).to(dtype)
    return value, shapes, start, loc, attn


def bench_op(args: argparse.Namespace, device: torch.device) -> None:
    on_cuda = device.type == "cuda"
    if on_cuda:
        levels, batches, impls = COCO_LEVELS, args.batch, list(args.impls)
        if "triton" in impls and not triton_available():
            print("triton is not installed: timing pytorch only")
            impls = [i for i in impls if i != "triton"]
        dtypes = args.dtypes
        cases = [("decoder", 300), ("encoder", None)]
    else:
        levels = [(max(1, h // 8), max(1, w // 8)) for h, w in COCO_LEVELS]
        batches, impls, dtypes = [1], ["pytorch"], ["fp32"]
        cases = [("decoder", 100), ("encoder", None)]
        print(
            f"CPU: reduced shape (levels {levels}, batch 1, fp32), pytorch only; the Triton kernels need a GPU. "
            "Run on CUDA for the COCO shapes."
        )
    s = sum(h * w for h, w in levels)
    print(f"device {device}; levels {levels} ({s} tokens); heads {args.heads} x {args.head_dim}; points {args.points}")
    header = f"{'case':8} {'B':>2} {'Q':>6} {'dtype':5} {'impl':8} {'fwd ms':>9} {'x':>6} {'fwd+bwd ms':>11} {'x':>6}"
    print(header + (f" {'peak MiB':>9}" if on_cuda else ""))
    for case, queries in cases:
        for batch in batches:
            for dname in dtypes:
                base: dict[str, float] = {}
                for impl in impls:
                    fn = MS_DEFORM_ATTN_IMPLS[impl]
                    inputs = make_inputs(batch, levels, queries, args.heads, args.head_dim, args.points,
                                         DTYPES[dname], device)  # fmt: skip
                    value, shapes, start, loc, attn = inputs
                    q = loc.shape[1]
                    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
                    grad = torch.randn(batch, q, args.heads * args.head_dim, device=device, dtype=value.dtype)

                    def fwd(fn=fn, inputs=inputs) -> None:
                        with torch.no_grad():
                            fn(*inputs)

                    def fwd_bwd(fn=fn, leaves=leaves, shapes=shapes, start=start, grad=grad) -> None:
                        v, lo, a = leaves
                        out = fn(v, shapes, start, lo, a)
                        torch.autograd.grad(out, leaves, grad)

                    try:
                        if on_cuda:
                            torch.cuda.reset_peak_memory_stats(device)
                        t_f = time_fn(fwd, device, args.warmup, args.repeats)
                        t_fb = time_fn(fwd_bwd, device, args.warmup, args.repeats)
                        peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else 0.0
                    except torch.cuda.OutOfMemoryError:
                        print(f"{case:8} {batch:>2} {q:>6} {dname:5} {impl:8} out of memory")
                        continue
                    base.setdefault("f", t_f)
                    base.setdefault("fb", t_fb)
                    line = (
                        f"{case:8} {batch:>2} {q:>6} {dname:5} {impl:8} {t_f:9.3f} {base['f'] / t_f:6.2f} "
                        f"{t_fb:11.3f} {base['fb'] / t_fb:6.2f}"
                    )
                    print(line + (f" {peak:9.1f}" if on_cuda else ""), flush=True)
                    del inputs, leaves, grad
                    if on_cuda:
                        torch.cuda.empty_cache()
    print("x = speed-up over the first implementation listed (pytorch)")


def bench_model(args: argparse.Namespace, device: torch.device) -> None:
    from main import get_args_parser, resolve_args
    from models import build_model

    on_cuda = device.type == "cuda"
    if on_cuda:
        flags = ["--backbone", "resnet50"]
        h, w, batch = 800, 1333, args.model_batch
    else:
        flags = ["--backbone", "resnet18", "--hidden_dim", "64", "--nheads", "4", "--enc_layers", "2",
                 "--dec_layers", "2", "--dim_feedforward", "128", "--num_queries", "50"]  # fmt: skip
        h, w, batch = 160, 224, 1
        print(f"CPU: reduced model ({' '.join(flags)}) at {h}x{w}, batch 1; run on CUDA for the real configuration")
    impls = list(args.impls) if on_cuda else ["pytorch"]
    if "triton" in impls and not triton_available():
        impls.remove("triton")
    extra = [*flags, "--with_box_refine", "--two_stage"] if args.two_stage else flags
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, h, w, generator=gen).to(device)
    targets = [
        {"labels": torch.tensor([1, 2, 3], device=device), "boxes": torch.tensor(
            [[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.2, 0.3, 0.2]], device=device)}
        for _ in range(batch)
    ]  # fmt: skip
    print(f"{'impl':8} {'amp':5} {'train step ms':>14} {'x':>6} {'inference ms':>13} {'x':>6}" +
          (f" {'peak MiB':>9}" if on_cuda else ""))  # fmt: skip
    for amp in args.model_amp if on_cuda else ["none"]:
        base: dict[str, float] = {}
        for impl in impls:
            margs = get_args_parser().parse_args(
                ["--model", "deformable_detr", "--backbone_weights", "none", "--num_classes", "91",
                 "--attn_impl", impl, *extra]
            )  # fmt: skip
            margs = resolve_args(margs)
            torch.manual_seed(0)
            model, criterion, _ = build_model(margs)
            model.to(device)
            criterion.to(device)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            ctx_dtype = DTYPES.get(amp)

            def autocast(ctx_dtype=ctx_dtype):
                return torch.autocast(device.type, dtype=ctx_dtype, enabled=ctx_dtype is not None)

            def train_step(model=model, criterion=criterion, opt=opt, autocast=autocast) -> None:
                model.train()
                with autocast():
                    out = model(images)
                    losses = criterion(out, targets)
                    loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            def infer(model=model, autocast=autocast) -> None:
                model.eval()
                with torch.no_grad(), autocast():
                    model(images)

            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t_train = time_fn(train_step, device, args.warmup, args.model_repeats)
            t_inf = time_fn(infer, device, args.warmup, args.model_repeats)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else 0.0
            base.setdefault("t", t_train)
            base.setdefault("i", t_inf)
            line = f"{impl:8} {amp:5} {t_train:14.1f} {base['t'] / t_train:6.2f} {t_inf:13.1f} {base['i'] / t_inf:6.2f}"
            print(line + (f" {peak:9.1f}" if on_cuda else ""), flush=True)
            del model, criterion, opt
            if on_cuda:
                torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--impls", nargs="+", default=list(MS_DEFORM_ATTN_IMPLS), choices=sorted(MS_DEFORM_ATTN_IMPLS))
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head_dim", type=int, default=32)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--model", action="store_true", help="time a whole Deformable DETR step instead of the op")
    p.add_argument("--model_batch", type=int, default=2)
    p.add_argument("--model_repeats", type=int, default=5)
    p.add_argument("--model_amp", nargs="+", default=["none", "bf16"], choices=["none", *sorted(DTYPES)])
    p.add_argument("--two_stage", action="store_true", help="--model: box refinement + two-stage variant")
    args = p.parse_args(argv)
    if "pytorch" in args.impls:  # the reference first: ratios are relative to it
        args.impls = ["pytorch", *[i for i in args.impls if i != "pytorch"]]
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"torch {torch.__version__}; " + (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"))
    (bench_model if args.model else bench_op)(args, device)


if __name__ == "__main__":
    main()
