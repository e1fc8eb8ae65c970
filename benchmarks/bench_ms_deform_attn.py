"""Benchmark multi-scale deformable attention implementations and a whole Deformable DETR step.

    python benchmarks/bench_ms_deform_attn.py [--batch 2 8] [--dtypes fp32 bf16] [--official DIR] [--model]

By default ``bench_op`` times the op, forward and forward+backward, at COCO shapes for each
implementation of ``MS_DEFORM_ATTN_IMPLS`` (``--official DIR`` adds the official PyTorch core),
with peak memory and the largest difference between them; ``--model`` (``bench_model``) times a
Deformable DETR training step and inference instead. The official repository has no benchmark of
the op; figures in docs/results.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    Alternating,
    describe_machine,
    max_abs_diff,
    peak_memory_mib,
    set_threads,
    time_call,
)
from benchmarks.official import cleanup  # noqa: E402
from models.ops import MS_DEFORM_ATTN_IMPLS, triton_available  # noqa: E402

COCO_LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` synchronised runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_call(fn, device)[0] for _ in range(repeats)) * 1e3


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


def official_impl(src: str) -> Callable[..., torch.Tensor]:
    """The official ``ms_deform_attn_core_pytorch`` from a Deformable DETR clone, as an op."""
    from benchmarks.official import load_official

    core = load_official(src)["models.ops.functions.ms_deform_attn_func"].ms_deform_attn_core_pytorch

    def official(value, shapes, start, loc, attn):  # type: ignore[no-untyped-def]
        return core(value, [(int(h), int(w)) for h, w in shapes.tolist()], loc, attn)

    return official


def bench_op(
    args: argparse.Namespace, device: torch.device, extra: dict[str, Callable[..., torch.Tensor]] | None = None
) -> list[dict[str, Any]]:
    """Time ``ms_deform_attn`` forward (no grad) and forward+backward at COCO shapes (``COCO_LEVELS``:
    the 4 levels of an 800x1333 image; 8 heads of 32 channels; 4 points) for the decoder (300
    queries) and the encoder (one query per token, ~22k), for each implementation that runs on the
    device, alternately (``--repeats`` rounds). Prints median milliseconds, the speed-up over the
    first implementation (``pytorch``), the peak memory of each call (``benchmarks.common``) and the
    largest difference from the first implementation's output. GPU: ``--batch`` and ``--dtypes``
    (``pytorch`` and ``triton``); CPU: batch 1, fp32, the PyTorch path only (the Triton kernels need
    a GPU). ``--level_scale 8`` divides the level sizes by 8 for a quick run. ``--official DIR`` (a
    Deformable DETR clone) adds the official ``ms_deform_attn_core_pytorch``, the reference this
    project's PyTorch path started from, as ``official``; ``extra`` adds more (name -> op). Returns
    the rows (``error`` set where an implementation failed: out of memory, a dtype it lacks)."""
    on_cuda = device.type == "cuda"
    impls = {name: MS_DEFORM_ATTN_IMPLS[name] for name in args.impls}
    if on_cuda:
        batches, dtypes = args.batch, args.dtypes
        if "triton" in impls and not triton_available():
            print("triton is not installed: timing pytorch only")
            impls.pop("triton")
    else:
        batches, dtypes = [1], ["fp32"]
        impls = {k: v for k, v in impls.items() if k == "pytorch"}
        print("CPU: batch 1, fp32, the PyTorch path (the Triton kernels need a GPU)")
    if args.official:
        impls["official"] = official_impl(args.official)
    impls.update(extra or {})
    rows: list[dict[str, Any]] = []
    scale = args.level_scale
    levels = [(max(1, h // scale), max(1, w // scale)) for h, w in COCO_LEVELS]
    cases = [("decoder", 300), ("encoder", None)]
    s = sum(h * w for h, w in levels)
    print(f"device {device}; levels {levels} ({s} tokens); heads {args.heads} x {args.head_dim}; points {args.points}")
    print(
        f"{'case':8} {'B':>2} {'Q':>6} {'dtype':5} {'impl':8} {'fwd ms':>9} {'x':>6} {'peak MiB':>9} "
        f"{'fwd+bwd ms':>11} {'x':>6} {'peak MiB':>9} {'max|d|':>8}"
    )
    for case, queries in cases:
        for batch in batches:
            for dname in dtypes:
                inputs = make_inputs(batch, levels, queries, args.heads, args.head_dim, args.points,
                                     DTYPES[dname], device)  # fmt: skip
                value, shapes, start, loc, attn = inputs
                q = loc.shape[1]
                leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
                grad = torch.randn(batch, q, args.heads * args.head_dim, device=device, dtype=value.dtype)
                fwd, fwd_bwd, outputs = {}, {}, {}
                for name, fn in impls.items():

                    def forward(fn=fn, inputs=inputs) -> torch.Tensor:
                        with torch.no_grad():
                            return fn(*inputs)

                    def forward_backward(fn=fn, leaves=leaves, shapes=shapes, start=start, grad=grad) -> None:
                        v, lo, a = leaves
                        torch.autograd.grad(fn(v, shapes, start, lo, a), leaves, grad)

                    fwd[name], fwd_bwd[name] = forward, forward_backward
                timings = {"f": Alternating(), "fb": Alternating()}
                failed = set()
                row = {"case": case, "batch": batch, "queries": q, "dtype": dname}
                for name in impls:  # warm-up (and Triton compilation)
                    try:
                        for _ in range(max(args.warmup, 1)):
                            outputs[name] = fwd[name]()
                            fwd_bwd[name]()
                    except RuntimeError as e:  # out of memory (a RuntimeError too), a dtype it lacks
                        failed.add(name)
                        error = "out of memory" if isinstance(e, torch.cuda.OutOfMemoryError) else str(e)
                        rows.append({**row, "impl": name, "error": error.splitlines()[0][:200]})
                        print(f"{case:8} {batch:>2} {q:>6} {dname:5} {name:8} failed: {rows[-1]['error']}")
                for _ in range(args.repeats):
                    for name in impls:
                        if name not in failed:
                            timings["f"].add(name, time_call(fwd[name], device))
                            timings["fb"].add(name, time_call(fwd_bwd[name], device))
                ref = next((n for n in impls if n not in failed), None)
                for name in impls:
                    if name in failed or ref is None:
                        continue
                    peak_f, peak_fb = peak_memory_mib(fwd[name], device), peak_memory_mib(fwd_bwd[name], device)
                    t_f, t_fb = timings["f"].median(name) * 1e3, timings["fb"].median(name) * 1e3
                    rows.append({**row, "impl": name, "fwd_ms": t_f, "fwd_x": timings["f"].ratio(name, ref),
                                 "fwd_peak_mib": peak_f, "fwd_bwd_ms": t_fb, "fwd_bwd_x": timings["fb"].ratio(name, ref),
                                 "fwd_bwd_peak_mib": peak_fb, "max_diff": max_abs_diff(outputs[name], outputs[ref])})  # fmt: skip
                    print(
                        f"{case:8} {batch:>2} {q:>6} {dname:5} {name:8} {t_f:9.2f} {timings['f'].ratio(name, ref):6.2f} "
                        f"{peak_f:9.1f} {t_fb:11.2f} {timings['fb'].ratio(name, ref):6.2f} {peak_fb:9.1f} "
                        f"{max_abs_diff(outputs[name], outputs[ref]):8.1e}",
                        flush=True,
                    )
                del inputs, leaves, grad, outputs
                if on_cuda:
                    torch.cuda.empty_cache()
    print(
        f"x = speed-up over the first implementation listed ({next(iter(impls))}); max|d| = largest difference from it"
    )
    return rows


def bench_model(args: argparse.Namespace, device: torch.device) -> None:
    """Time one Deformable DETR training step (forward, loss, backward, optimizer step) and one
    inference forward per implementation (``--attn_impl``). CUDA: ResNet-50, the official
    configuration, 800x1333 images; CPU: a reduced model and image."""
    from models import build_model
    from util.config import get_args_parser, resolve

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
            margs = resolve(margs)
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
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--impls", nargs="+", default=list(MS_DEFORM_ATTN_IMPLS), choices=sorted(MS_DEFORM_ATTN_IMPLS))
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head_dim", type=int, default=32)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="alternating timed rounds")
    p.add_argument("--level_scale", type=int, default=1, help="divide the COCO level sizes by this (quick runs)")
    p.add_argument("--official", default=None, metavar="DIR", help="Deformable DETR clone: time its PyTorch core too")
    p.add_argument("--model", action="store_true", help="time a whole Deformable DETR step instead of the op")
    p.add_argument("--model_batch", type=int, default=2)
    p.add_argument("--model_repeats", type=int, default=5)
    p.add_argument("--model_amp", nargs="+", default=["none", "bf16"], choices=["none", *sorted(DTYPES)])
    p.add_argument("--two_stage", action="store_true", help="--model: box refinement + two-stage variant")
    args = p.parse_args(argv)
    if "pytorch" in args.impls:  # the reference first: ratios are relative to it
        args.impls = ["pytorch", *[i for i in args.impls if i != "pytorch"]]
    device = torch.device(args.device)
    set_threads(args.threads, device)
    print(describe_machine(device))
    try:
        (bench_model if args.model else bench_op)(args, device)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
