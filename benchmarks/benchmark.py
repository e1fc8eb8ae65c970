"""Inference FPS, training images/s and peak memory of DETR / Deformable DETR / DINO (ours only), alone or against the official code.

    python benchmarks/benchmark.py --model deformable_detr --with_box_refine --two_stage \
        --batch_size 1 4 8 --amp none bf16 --compare_official ~/Deformable-DETR
    python benchmarks/benchmark.py --model detr --size 800 1066 --amp none bf16 --no_train \
        --compare_official ~/detr --threads 2

Measured the way Deformable DETR's ``benchmark.py`` measures FPS (``run`` says what is timed);
``--compare_official DIR`` runs the official code from a local clone (``benchmarks/official.py``)
with the same weights, alternately. Model flags after the benchmark's own are main.py flags shared
with the official code. Figures in docs/results.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    describe_machine,
    max_abs_diff,
    peak_memory_mib,
    set_threads,
    time_alternately,
)
from benchmarks.official import CodeBase, build_official, build_ours, cleanup, copy_weights, load_official  # noqa: E402
from models import takes_targets  # noqa: E402
from models.optimize import AMP_DTYPES, cast_floating, optimize_for_inference  # noqa: E402

OPTIMIZE_LABELS = {"none": "ours", "fast": "ours-fast", "compile": "ours-compile"}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Other flags go to main.py's parser.")
    p.add_argument("--model", default="detr", choices=["detr", "deformable_detr", "dino"])
    p.add_argument("--batch_size", type=int, nargs="+", default=None, help="default 1 4 8 (CPU: 1)")
    p.add_argument("--amp", nargs="+", default=["none"], choices=sorted(AMP_DTYPES))
    p.add_argument(
        "--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="default 800 1333 (CPU: 320 480)"
    )
    p.add_argument("--num_iters", type=int, default=None, help="timed iterations per round (default 50, CPU 2)")
    p.add_argument("--warm_iters", type=int, default=None, help="dropped first iterations (default 5, CPU 1)")
    p.add_argument("--repeats", type=int, default=None, help="alternating rounds (default 3, CPU 2)")
    p.add_argument("--no_train", action="store_true", help="inference only")
    p.add_argument("--no_inference", action="store_true", help="training only")
    p.add_argument(
        "--eval_optimize", nargs="+", default=["fast"], choices=list(OPTIMIZE_LABELS), help="our inference path(s)"
    )
    p.add_argument("--compare_official", default=None, metavar="DIR", help="local clone of the official repository")
    p.add_argument("--checkpoint", default=None, help="weights for every model (default: random, shared)")
    p.add_argument("--image", default=None, help="an image file as input (resized to --size) instead of noise")
    p.add_argument("--no_memory", action="store_true", help="skip the peak-memory call of each row")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _targets(batch: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.2, 0.3, 0.2]], device=device)
    return [{"labels": torch.tensor([1, 2, 3], device=device), "boxes": boxes.clone()} for _ in range(batch)]


def load_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """``[3, H, W]``: an image file resized to ``size`` (h, w), normalised with ImageNet statistics."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    image = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return TF.normalize(TF.to_tensor(image), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class Side:
    """One code base's model, criterion and batching function, with our inference preparation."""

    def __init__(self, name: str, codebase: CodeBase | None, built: tuple, device: torch.device) -> None:
        self.name, self.codebase, self.device = name, codebase, device
        self.model, self.criterion, self.postprocessors, self.args = built
        if codebase is None:
            from util.misc import nested_tensor_from_tensor_list as nested
        else:
            nested = codebase["util.misc"].nested_tensor_from_tensor_list
        self.nested = nested
        self._prepared: dict[tuple[str, str], Any] = {}

    def context(self):  # type: ignore[no-untyped-def]
        return self.codebase.active() if self.codebase is not None else nullcontext()

    def inference_fn(self, images: list[torch.Tensor], amp: str, optimize: str = "none"):  # type: ignore[no-untyped-def]
        """A call running the model on ``images`` (``[3, H, W]`` each) under ``amp``; for ours,
        through ``optimize_for_inference`` unless ``optimize`` is ``none``."""
        dtype = AMP_DTYPES[amp]
        samples = self.nested(images)
        model = self.model.eval()
        if self.codebase is None and optimize != "none":  # ours, as main.py --eval runs it
            key = (amp, optimize)
            if key not in self._prepared:
                self._prepared[key] = optimize_for_inference(self.model, amp=amp, compile=optimize == "compile")
            model, dtype = self._prepared[key], None  # the prepared model autocasts itself

        def run() -> Any:
            autocast = torch.autocast(self.device.type, dtype or torch.float32, enabled=dtype is not None)
            with self.context(), torch.inference_mode(), autocast:
                return model(samples)

        return run

    def train_fn(self, images: list[torch.Tensor], amp: str, fused: bool = False, more: tuple = ()):  # type: ignore[no-untyped-def]
        """A call making one training step on ``images`` with 3 fixed boxes each and returning its
        loss; with ``more`` (further lists of images), successive calls take each batch in turn.
        ``fused``: AdamW's fused kernel (``--fused_optimizer``)."""
        dtype = AMP_DTYPES[amp]
        batches = [(self.nested(b), _targets(len(b), self.device)) for b in (images, *more)]
        turn = itertools.cycle(batches)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-4, fused=fused or None)
        weights = self.criterion.weight_dict
        scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        denoising = self.codebase is None and takes_targets(self.model)  # DINO trains with its denoising queries

        def step() -> torch.Tensor:
            samples, targets = next(turn)
            with self.context():
                self.model.train()
                self.criterion.train()
                with torch.autocast(self.device.type, dtype or torch.float32, enabled=dtype is not None):
                    outputs = self.model(samples, targets) if denoising else self.model(samples)
                losses = self.criterion(cast_floating(outputs), targets)
                loss = sum(losses[k] * weights[k] for k in losses if k in weights)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 0.1)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            return loss.detach()

        return step

    def eval_loss(self, images: list[torch.Tensor]) -> float:
        """The weighted set loss of the model in eval mode on ``images`` (fp32, no grad)."""
        with self.context(), torch.no_grad():
            self.model.eval()
            self.criterion.eval()
            terms = self.criterion(self.model(self.nested(images)), _targets(len(images), self.device))
            return float(
                sum(terms[k] * self.criterion.weight_dict[k] for k in terms if k in self.criterion.weight_dict)
            )


def output_diffs(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], sigmoid: bool) -> tuple[float, float]:
    """Largest differences of boxes and of class probabilities (softmax; ``sigmoid`` for
    Deformable DETR's focal-loss logits) between two outputs."""
    prob = torch.sigmoid if sigmoid else (lambda t: t.softmax(-1))
    return (
        max_abs_diff(out["pred_boxes"], ref["pred_boxes"]),
        max_abs_diff(prob(out["pred_logits"].float()), prob(ref["pred_logits"].float())),
    )


def run(args: argparse.Namespace, model_flags: list[str]) -> list[dict[str, Any]]:
    """Time every row and print the table; returns the rows.

    Inference: a fixed input (default 800x1333, the paper's; batches of distinct random images, or
    ``--image`` resized, no padding), ``torch.inference_mode``, warm-up iterations dropped (at least
    one call is made first: its output is the one compared), each call synchronised on a GPU. Our
    model runs through ``models.optimize.optimize_for_inference`` as ``main.py --eval`` does, once
    per ``--eval_optimize`` path (``OPTIMIZE_LABELS``: ``none`` is the training graph, ``fast``
    folds BatchNorm and fuses convolutions in channels-last, ``compile`` is ``torch.compile`` with
    frozen weights). Training: one optimizer step (forward, set loss, backward, gradient clipping
    0.1, AdamW) on the same input with 3 fixed boxes per image. ``--amp bf16`` (or ``fp16`` on a
    GPU) autocasts every code base; all amps of one batch size are timed together.

    With ``--compare_official`` the official model is built with the same flags and its weights are
    copied into ours (so both compute the same function); the table then gives how far our outputs
    and set loss are from its, medians of ``--repeats`` alternating rounds of ``--num_iters``
    iterations of every row, the speed-up over the official code at the same amp and over the
    official fp32 run, and, for inference, each row's largest difference in boxes and class
    probabilities from the fp32 reference (the official code, else ours).

    CPU mode (no GPU, or ``--device cpu``): 320x480 input, batch 1, fewer iterations unless given.
    The official Deformable DETR op has no CPU implementation: its pure-PyTorch fallback stands in.
    """
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    h, w = args.size or ((320, 480) if on_cpu else (800, 1333))
    batches = args.batch_size or ([1] if on_cpu else [1, 4, 8])
    num_iters = args.num_iters or (2 if on_cpu else 50)
    warm_iters = args.warm_iters if args.warm_iters is not None else (1 if on_cpu else 5)
    repeats = args.repeats or (2 if on_cpu else 3)
    amps = [a for a in args.amp if not (a == "fp16" and on_cpu)]
    if not amps:
        raise ValueError("--amp fp16 needs a GPU; on a CPU use --amp bf16")
    threads = set_threads(args.threads, device)
    print(describe_machine(device))
    print(
        f"{args.model} {' '.join(model_flags)} at {h}x{w}; batch {batches}; amp {amps}; "
        f"{repeats} x {num_iters} timed iterations after {warm_iters} warm-up; {threads} threads"
    )

    torch.manual_seed(args.seed)
    ours = Side("ours", None, build_ours(args.model, model_flags, device), device)
    sides = {"ours": ours}
    if args.compare_official:
        code = load_official(args.compare_official)
        print(f"official code: {args.compare_official} (copied to {code.root})")
        sides = {"official": Side("official", code, build_official(code, args.model, model_flags, device), device)}
        sides["ours"] = ours
        copy_weights(sides["official"].model, ours.model, "official -> ours")
        if args.model == "deformable_detr":
            print(f"official deformable attention: {code.msda}")
    if args.checkpoint:
        from util.checkpoint import load_checkpoint, load_model_state, model_state_from_checkpoint

        state = model_state_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
        for side in sides.values():
            load_model_state(side.model, state, args.checkpoint)
    if args.image:
        all_images = [load_image(args.image, (h, w)).to(device)] * max(batches)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        all_images = [torch.randn(3, h, w, generator=gen).to(device) for _ in range(max(batches))]
    sigmoid = args.model in ("deformable_detr", "dino")  # focal-loss logits
    if "official" in sides:
        official = sides["official"]
        ref = official.inference_fn(all_images[:1], "none")()
        d_box, d_prob = output_diffs(ours.inference_fn(all_images[:1], "none")(), ref, sigmoid)
        print(f"ours (training graph) vs official, fp32: max |d boxes| {d_box:.2e}, max |d probabilities| {d_prob:.2e}")
        losses = [side.eval_loss(all_images[:1]) for side in sides.values()]
        print(f"weighted set loss (eval mode): official {losses[0]:.6f}, ours {losses[1]:.6f}")

    modes = ([] if args.no_inference else ["inference"]) + ([] if args.no_train else ["train"])
    rows: list[dict[str, Any]] = []
    compare = "official" in sides
    reference = (
        "official" if compare else OPTIMIZE_LABELS["none" if "none" in args.eval_optimize else args.eval_optimize[0]]
    )
    header = f"{'mode':9} {'batch':>5} {'amp':5} {'code':12} {'ms/iter':>9} {'img/s':>8} {'peak MiB':>9}"
    header += f" {'x same amp':>10} {'x fp32':>7}" if compare else ""
    header += f" {'CPU ms':>9}" if on_cpu else ""
    header += f" {'max|d box|':>10} {'max|d prob|':>11}"
    print("\n" + header)
    for mode in modes:
        for batch in batches:
            images = all_images[:batch]
            fns: dict[tuple[str, str], Any] = {}
            for amp in amps:
                for name, side in sides.items():
                    if mode == "train":
                        fns[name, amp] = side.train_fn(images, amp)
                    elif name == "official":
                        fns[name, amp] = side.inference_fn(images, amp)
                    else:
                        for opt in args.eval_optimize:
                            fns[OPTIMIZE_LABELS[opt], amp] = side.inference_fn(images, amp, opt)
            # warm-up (and compilation) outside the timed rounds; inference keeps a first output
            warm = max(warm_iters, 1 if mode == "inference" else 0)
            timings, firsts = time_alternately({"/".join(k): f for k, f in fns.items()}, device, warm, num_iters,
                                               repeats)  # fmt: skip
            outputs = {tuple(k.split("/")): v for k, v in firsts.items()}
            ref_out = outputs.get((reference, "none"))
            for (name, amp), fn in fns.items():
                key = f"{name}/{amp}"
                med = timings.median(key)
                row = {"mode": mode, "batch": batch, "amp": amp, "code": name, "ms": med * 1e3,
                       "images_per_s": batch / med, "cpu_ms": timings.median(key, cpu=True) * 1e3,
                       "peak_mib": math.nan if args.no_memory else peak_memory_mib(fn, device),
                       "speedup": timings.ratio(key, f"official/{amp}") if compare else math.nan,
                       "speedup_fp32": timings.ratio(key, "official/none") if compare and "none" in amps else math.nan,
                       "d_box": math.nan, "d_prob": math.nan}  # fmt: skip
                if mode == "inference" and ref_out is not None:
                    row["d_box"], row["d_prob"] = output_diffs(outputs[name, amp], ref_out, sigmoid)
                rows.append(row)
                line = f"{mode:9} {batch:>5} {amp:5} {name:12} {row['ms']:9.1f} {row['images_per_s']:8.2f} "
                line += f"{row['peak_mib']:9.1f}"
                line += f" {row['speedup']:9.2f}x {row['speedup_fp32']:6.2f}x" if compare else ""
                line += f" {row['cpu_ms']:9.1f}" if on_cpu else ""
                line += f" {row['d_box']:10.2e} {row['d_prob']:11.2e}" if mode == "inference" else ""
                print(line, flush=True)
    notes = [f"medians; max|d ...|: against {reference}'s fp32 output on the same weights and input"]
    if compare:
        notes.append("x: the official code's median time (same amp, or fp32) / this row's")
    if on_cpu:
        notes.append("CPU ms: CPU time of this process (all threads)")
    print("; ".join(notes))
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args, model_flags = get_parser().parse_known_args(argv)
    try:
        return run(args, model_flags)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    finally:
        cleanup()


if __name__ == "__main__":
    main()
