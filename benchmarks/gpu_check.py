"""The GPU check (issue 19): one command that a GPU-lent session runs first, writing the figures.

    python benchmarks/gpu_check.py --out DIR [--official-detr PATH] [--official-deformable PATH] \
        [--golden DIR] [--cpu-tiny] [--budget-s 480] [--parts NAME ...]

Runs the parts of ``PARTS`` in order, most important first: environment; correctness on CUDA
(golden fixtures, the Triton deformable-attention op, training steps, ``--eval_optimize compile``);
the official CUDA op's build; speed against the official code and transformers (inference,
training, the op alone); bf16 against fp32 training. Each part is timed and guarded: a failure or
timeout is recorded and the next part runs, and ``DIR/gpu_report.md`` and ``DIR/gpu_report.json``
are rewritten after every part, so a run cut short still reports what it did. Each part compares
its figures with the issue's targets (reached / not reached). ``--cpu-tiny`` runs the same parts
on tiny shapes on the CPU (the test suite's check that this script works, not how fast). It reuses
the benchmark scripts' code (``benchmark.Side``, ``bench_ms_deform_attn.bench_op``,
``bench_train_step.Variant``) and ``tests/golden.py``. Not in the official code; figures in
docs/results.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Without an NVIDIA GPU the Triton kernels run in Triton's interpreter, which must be chosen before
# Triton is first imported (``import torchvision`` does), as tests/conftest.py does.
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from benchmarks.common import describe_machine, peak_memory_mib, time_alternately  # noqa: E402
from benchmarks.official import (  # noqa: E402
    MSDA_NAME,
    CodeBase,
    build_official,
    build_ours,
    cleanup,
    copy_weights,
    load_official,
)

TINY = ("--backbone", "resnet18", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1",
        "--dim_feedforward", "64", "--num_queries", "5")  # fmt: skip
TWO_STAGE = ("--with_box_refine", "--two_stage")
# Tolerances of the Triton op against the PyTorch path (computed in fp32 on the same rounded
# inputs): ||triton - pytorch|| / ||pytorch|| for the output and each gradient.
OP_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}
COMPILE_TOLERANCE = 1e-4  # --eval_optimize compile against eager, fp32 (TF32 off): boxes, probabilities
AGREEMENT_GOAL = 0.02  # bf16 against fp32 training: relative gap of the moving-average losses
OFFICIAL_OP_BUILD_S = 60  # the official CUDA extension counts only if it compiles within this


@dataclass(frozen=True)
class Mode:
    """The shapes and repetitions of a run: ``GPU`` (the issue's) or ``CPU_TINY`` (the test suite's)."""

    name: str
    size: tuple[int, int]  # inference input (h, w)
    infer_batches: tuple[int, ...]
    train_batch: int
    train_batches: int  # distinct batches, taken in turn
    train_scales: tuple[int, ...]  # shorter sides of the training images (the official augmentation)
    max_size: int
    warm: int
    train_warm: int
    iters: int  # timed calls per round at batch 1 (fewer for larger batches)
    repeats: int
    op_scale: int  # COCO level sizes divided by this
    op_batch: int
    op_shape: tuple[int, int, int, int]  # heads, channels per head, points, decoder queries
    agree_iters: int
    agree_window: int
    agree_batches: int  # distinct batches, taken in turn
    agree_flags: tuple[str, ...]  # added to the demo recipe
    golden: tuple[str, ...]
    backbone: tuple[str, ...]
    amps: tuple[str, ...]
    compile: bool

    def iters_for(self, batch: int) -> int:
        return max(min(self.iters, 3), self.iters // batch)


GOLDEN_FIXTURES = ("detr_tiny.pt", "detr_panoptic_tiny.pt", "deformable_tiny.pt", "deformable_single_scale_tiny.pt",
                   "deformable_refine_two_stage_tiny.pt")  # fmt: skip
GPU = Mode("gpu", (800, 1333), (1, 8), 4, 3, tuple(range(480, 801, 32)), 1333, warm=3, train_warm=2, iters=10,
           repeats=3, op_scale=1, op_batch=2, op_shape=(8, 32, 4, 300), agree_iters=200, agree_window=20,
           agree_batches=20, agree_flags=(), golden=GOLDEN_FIXTURES, backbone=("--backbone", "resnet50"),
           amps=("none", "bf16", "fp16"), compile=True)  # fmt: skip
CPU_TINY = Mode("cpu-tiny", (64, 80), (1,), 2, 1, (64,), 80, warm=1, train_warm=0, iters=1, repeats=1, op_scale=32,
                op_batch=1, op_shape=(2, 8, 2, 5), agree_iters=3, agree_window=2, agree_batches=2,
                agree_flags=("--batch_size", "2", "--train_scales", "64", "--val_size", "64", "--max_size", "64",
                             "--hidden_dim", "32", "--dim_feedforward", "64", "--dec_layers", "1"),
                golden=("detr_tiny.pt",), backbone=TINY, amps=("none", "bf16"), compile=False)  # fmt: skip


class PartTimeout(Exception):
    """A part ran past its share of the budget."""


class Check:
    """The run: its mode, device, official code bases, models shared between parts, and the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = CPU_TINY if args.cpu_tiny else GPU
        if not args.cpu_tiny and not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device (use --cpu-tiny to run the tiny CPU mode)")
        self.device = torch.device("cpu" if args.cpu_tiny else "cuda")
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.started = time.time()
        self.parts: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {
            "mode": self.mode.name,
            "command": shlex.join([sys.executable, *sys.argv]),
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started)),
            "budget_s": args.budget_s,
            "parts": self.parts,
        }
        self._official: dict[str, CodeBase | None] = {}
        self._sides: dict[str, dict[str, Any]] = {}
        self.op_build: tuple[subprocess.Popen, float, Path] | None = None

    # -- shared pieces ---------------------------------------------------------------------------
    def flags(self, kind: str, two_stage: bool = False) -> list[str]:
        return [*self.mode.backbone, *(TWO_STAGE if two_stage and kind == "deformable_detr" else ())]

    def images(self, sizes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
        """Random normalised images (never zeros) of the given sizes, on the device."""
        gen = torch.Generator().manual_seed(seed)
        return [torch.randn(3, h, w, generator=gen).to(self.device) for h, w in sizes]

    def official(self, kind: str) -> CodeBase | None:
        """The official code base implementing ``kind`` (loaded once), or None without its clone."""
        if kind not in self._official:
            path = self.args.official_detr if kind == "detr" else self.args.official_deformable
            self._official[kind] = load_official(path) if path else None
        return self._official[kind]

    def sides(self, kind: str) -> dict[str, Any]:
        """Ours, the official model (its weights copied into ours) and transformers' (ours
        converted), built once for the speed parts; a side that cannot be built is left out and
        its reason kept under ``"missing"``."""
        if kind in self._sides:
            return self._sides[kind]
        from benchmarks.benchmark import Side

        torch.manual_seed(0)
        ours = Side("ours", None, build_ours(kind, self.flags(kind), self.device), self.device)
        sides: dict[str, Any] = {"ours": ours, "missing": {}}
        code = self.official(kind)
        if code is None:
            sides["missing"]["official"] = f"no --official-{'detr' if kind == 'detr' else 'deformable'} clone given"
        else:
            try:
                built = build_official(code, kind, self.flags(kind), self.device)
                sides["official"] = Side("official", code, built, self.device)
                copy_weights(sides["official"].model, ours.model, f"official {kind} -> ours")
            except (ValueError, RuntimeError) as e:  # the official code refuses these flags: say so, go on
                sides.pop("official", None)
                sides["missing"]["official"] = str(e).splitlines()[0]
        try:
            sides["hf"] = HFSide(ours, self.tmp / f"hf_{kind}")
        except Exception as e:  # transformers missing, or a conversion it refuses: say so, go on
            sides["missing"]["hf"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self._sides[kind] = sides
        return sides

    # -- the report ----------------------------------------------------------------------------------
    def save(self) -> None:
        self.report["elapsed_s"] = round(time.time() - self.started, 1)
        (self.out / "gpu_report.json").write_text(json.dumps(_plain(self.report), indent=1) + "\n")
        (self.out / "gpu_report.md").write_text(render_markdown(self.report))

    def run(self, parts: list[str]) -> None:
        for name, cap, fn in PARTS:
            part: dict[str, Any] = {"name": name, "status": "running", "seconds": 0.0, "rows": [], "targets": [],
                                    "notes": [], "error": None}  # fmt: skip
            self.parts.append(part)
            left = self.args.budget_s - (time.time() - self.started)
            if name not in parts and name != "environment":  # the environment always: what ran where
                part["status"] = "skipped"
                part["notes"].append("not in --parts")
            elif left < 5:
                part["status"] = "skipped"
                part["notes"].append(f"budget spent (--budget-s {self.args.budget_s})")
            else:
                self._run_part(part, fn, min(cap, left) if not self.args.cpu_tiny else left)
            self.save()
            print(
                f"[gpu_check] {name}: {part['status']} ({part['seconds']} s, CPU {part.get('cpu_seconds')} s)",
                flush=True,
            )

    def _run_part(self, part: dict[str, Any], fn: Callable[[Check, dict[str, Any]], None], limit: float) -> None:
        def on_alarm(signum: int, frame: Any) -> None:
            raise PartTimeout(f"ran past its limit of {limit:.0f} s")

        start, start_cpu = time.time(), time.process_time()
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            fn(self, part)
            if part["status"] == "running":
                part["status"] = "ok"
        except PartTimeout as e:
            part["status"], part["error"] = "timeout", str(e)
        except Exception as e:  # recorded; the next part runs
            part["status"], part["error"] = "error", f"{type(e).__name__}: {e}"
            part["traceback"] = traceback.format_exc()[-4000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            part["seconds"] = round(time.time() - start, 1)
            part["cpu_seconds"] = round(time.process_time() - start_cpu, 1)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def _plain(x: Any) -> Any:
    """JSON-safe: NaN and infinities as None, tuples as lists, anything else unknown as text."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if x is None or isinstance(x, str | int | bool):
        return x
    return str(x)


def target(part: dict[str, Any], what: str, value: float, goal: float, op: str = ">=") -> None:
    """Record whether ``value`` reaches ``goal`` (``op`` ``>=`` or ``<=``); NaN: not measured (None)."""
    reached = (value >= goal if op == ">=" else value <= goal) if math.isfinite(value) else None
    part["targets"].append({"what": what, "value": value, "goal": goal, "op": op, "reached": reached})


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4g}"
    return "-" if v is None else str(v).replace("|", "\\|")


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# GPU check", "", f"- device: {report.get('device', '?')}", f"- mode: {report['mode']}",
             f"- command: `{report['command']}`", f"- started (UTC): {report['started_utc']}; "
             f"elapsed {report.get('elapsed_s', 0)} s of a {report['budget_s']} s budget", "",
             "| part | status | seconds | targets reached |", "| --- | --- | --- | --- |"]  # fmt: skip
    for part in report["parts"]:
        reached = sum(t["reached"] is True for t in part["targets"])
        lines.append(f"| {part['name']} | {part['status']} | {part['seconds']} | {reached}/{len(part['targets'])} |")
    for part in report["parts"]:
        lines += ["", f"## {part['name']}: {part['status']} ({part['seconds']} s)", ""]
        if part["error"]:
            lines += [f"Error: `{part['error']}`", ""]
        lines += [f"- {note}" for note in part["notes"]]
        if part["rows"]:
            columns = list(dict.fromkeys(k for row in part["rows"] for k in row))
            lines += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in part["rows"]]
        if part["targets"]:
            lines.append("")
            for t in part["targets"]:
                verdict = {True: "reached", False: "NOT reached", None: "not measured"}[t["reached"]]
                lines.append(f"- {t['what']}: {_fmt(t['value'])} (target {t['op']} {_fmt(t['goal'])}): {verdict}")
    return "\n".join(lines) + "\n"


# -- parts ---------------------------------------------------------------------------------------


def _version(module: str) -> str:
    try:
        return getattr(__import__(module), "__version__", "present")
    except Exception as e:  # absent or broken: say which
        return f"missing ({type(e).__name__})"


def part_environment(check: Check, part: dict[str, Any]) -> None:
    """Versions, the device, the official clones; starts building the official CUDA op (it is
    awaited by ``part_official_op``, so that it compiles while the correctness parts run)."""
    check.report["device"] = describe_machine(check.device)
    items = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "device": check.report["device"]}  # fmt: skip
    if check.device.type == "cuda":
        items["gpu"] = f"{torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})"
        items["gpu memory GiB"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for module in ("torchvision", "triton", "transformers", "timm", "scipy", "pycocotools", "numpy"):
        items[module] = _version(module)
    items["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET", "")
    items["official DETR"] = check.args.official_detr or "not given"
    items["official Deformable DETR"] = check.args.official_deformable or "not given"
    items["golden fixtures"] = str(check.args.golden)
    part["rows"] = [{"item": k, "value": v} for k, v in items.items()]
    if check.device.type == "cuda" and check.args.official_deformable:
        build = check.tmp / "official_op"
        log = check.tmp / "official_op.log"
        cmd = [sys.executable, __file__, "--build-official-op", str(check.args.official_deformable), str(build)]
        with log.open("w") as f:
            check.op_build = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), time.time(), log)
        part["notes"].append("building the official CUDA op in the background (awaited before the speed parts)")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to(v, device) for v in x)
    return x


class _TF32Off:
    """TF32 off for matrix products and convolutions within the block (fp32 means fp32)."""

    def __enter__(self) -> None:
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def part_golden(check: Check, part: dict[str, Any]) -> None:
    """Every golden fixture on the device in fp32 with TF32 off, through ``tests/golden.py``'s
    checks (``check_outputs``, ``check_against_golden``): outputs 1e-5 (masks 2e-5), losses and
    gradients 1e-5 relative (of the gradient's scale), matcher and labels exact, as on the CPU.
    Deformable DETR with ``--attn_impl auto`` (the Triton op on CUDA)."""
    import golden as G
    import pytest

    from models import build_model
    from util.config import resolve
    from util.misc import NestedTensor

    G.GOLDEN_DIR = Path(check.args.golden)
    part["notes"].append("tolerance: tests/golden.py's (outputs 1e-5 abs, losses and gradients 1e-5 rel), TF32 off")
    failures = 0
    for name in check.mode.golden:
        row: dict[str, Any] = {"fixture": name}
        part["rows"].append(row)
        try:
            fixture = G.load_golden(name)
        except pytest.skip.Exception as e:  # absent: recorded, not a failure of the code
            row["result"] = f"skipped: {e.msg}"
            continue
        deformable = fixture["kind"].startswith("deformable")
        extra = {"model": "deformable_detr", "attn_impl": "auto"} if deformable else {}
        gold = {k: v if k == "matcher_indices" else _to(v, check.device) for k, v in fixture.items()}
        with _TF32Off():
            model, criterion, post = build_model(resolve(G.golden_args(fixture["config"], num_classes=20, **extra)))
            G.fill_golden_weights(model)
            model.to(check.device)
            criterion.to(check.device)
            model.zero_grad()
            out = model(NestedTensor(gold["samples_tensors"], gold["samples_mask"]))
            for k in ("pred_logits", "pred_boxes"):
                row[f"max_d_{k[5:]}"] = float((out[k].detach() - gold["outputs"][k]).abs().max())
            try:
                G.check_outputs(gold, out)
                G.check_against_golden(gold, model, criterion, post, out)
                row["result"] = "pass"
            except AssertionError as e:
                failures += 1
                row["result"] = "FAIL: " + " ".join(str(e).split())[:300]
        check.save()
    target(part, "golden fixtures failing on the device", failures, 0, "<=")
    if failures:
        part["status"] = "failed"


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.detach().double()
    return float((a.detach().double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _triton_runs(check: Check) -> str | None:
    """Why the Triton op cannot run here (None when it can: CUDA, or the CPU interpreter)."""
    from models.ops import triton_available

    if not triton_available():
        return "triton is not installed"
    if check.device.type == "cuda":
        return None
    from triton.runtime.interpreter import InterpretedFunction

    import models.ops.ms_deform_attn_triton as mod

    if not isinstance(mod._ms_deform_attn_fwd_kernel, InterpretedFunction):
        return "Triton was imported before TRITON_INTERPRET=1 could be set: its kernels need a GPU here"
    return None


def part_op_correctness(check: Check, part: dict[str, Any]) -> None:
    """The Triton deformable-attention op against the PyTorch path at COCO shapes (the 4 levels of
    an 800x1333 image, 8 heads of 32, 4 points; decoder: 300 queries; encoder: one per token),
    forward and the gradients of value, locations and weights, in fp32, bf16 and fp16; the
    reference is the PyTorch path in fp32 on the same rounded inputs. ``OP_TOLERANCE``."""
    from benchmarks.bench_ms_deform_attn import COCO_LEVELS, DTYPES, make_inputs
    from models.ops import MS_DEFORM_ATTN_IMPLS

    reason = _triton_runs(check)
    if reason:
        part["status"] = "skipped"
        part["notes"].append(reason)
        return
    part["notes"].append(f"relative error ||triton - pytorch fp32|| / ||pytorch fp32||; tolerance {OP_TOLERANCE}")
    levels = [(max(1, h // check.mode.op_scale), max(1, w // check.mode.op_scale)) for h, w in COCO_LEVELS]
    heads, channels, points, queries = check.mode.op_shape
    torch.manual_seed(0)
    failures = 0
    for case, q in (("decoder", queries), ("encoder", None)):
        for dname in ("fp32", "bf16", "fp16"):
            inputs = make_inputs(check.mode.op_batch, levels, q, heads, channels, points, DTYPES[dname], check.device)
            value, shapes, start, loc, attn = inputs
            grad = torch.randn(*loc.shape[:2], heads * channels, device=check.device)
            results = []
            for impl, dtype in (("pytorch", torch.float32), ("triton", DTYPES[dname])):
                leaves = [t.detach().to(dtype).requires_grad_() for t in (value, loc, attn)]
                with _TF32Off():
                    out = MS_DEFORM_ATTN_IMPLS[impl](leaves[0], shapes, start, leaves[1], leaves[2])
                    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
                results.append((out, *grads))
            errors = {k: _rel(a, r) for k, a, r in zip(("out", "d_value", "d_loc", "d_attn"), results[1], results[0])}
            ok = all(e <= OP_TOLERANCE[dname] for e in errors.values())
            failures += not ok
            part["rows"].append({"case": case, "queries": loc.shape[1], "dtype": dname, **errors,
                                 "result": "pass" if ok else "FAIL"})  # fmt: skip
            del inputs, results
    target(part, "Triton op checks failing", failures, 0, "<=")
    if failures:
        part["status"] = "failed"


def part_train_step(check: Check, part: dict[str, Any]) -> None:
    """One training step (forward, set loss, backward, clipping, AdamW; fp16 with a gradient
    scaler) of DETR and of Deformable DETR with box refinement and two-stage, at each amp:
    the loss and every gradient must be finite."""
    from benchmarks.benchmark import Side

    failures = 0
    h, w = check.mode.size
    images = check.images([(h, w)] * 2)
    for kind in ("detr", "deformable_detr"):
        torch.manual_seed(0)
        side = Side("ours", None, build_ours(kind, check.flags(kind, two_stage=True), check.device), check.device)
        for amp in check.mode.amps:
            loss = float(side.train_fn(images, amp)())
            grads_finite = all(torch.isfinite(p.grad).all() for p in side.model.parameters() if p.grad is not None)
            ok = math.isfinite(loss) and grads_finite
            failures += not ok
            part["rows"].append({"model": kind + (" (refine, two-stage)" if kind != "detr" else ""), "amp": amp,
                                 "loss": loss, "finite gradients": grads_finite, "result": "pass" if ok else "FAIL"})  # fmt: skip
        del side
    if "fp16" not in check.mode.amps:
        part["notes"].append("fp16 autocast: GPU only (not run on the CPU)")
    target(part, "training steps with a non-finite loss or gradient", failures, 0, "<=")
    if failures:
        part["status"] = "failed"


def part_compile(check: Check, part: dict[str, Any]) -> None:
    """``--eval_optimize compile`` (``optimize_for_inference(compile=True)``) against eager on the
    same weights and input, fp32 with TF32 off, batch 1: largest differences of boxes and class
    probabilities, within ``COMPILE_TOLERANCE``; and the seconds the first call took."""
    from benchmarks.benchmark import Side, output_diffs

    if not check.mode.compile:
        part["status"] = "skipped"
        part["notes"].append("the CPU mode does not compile (inductor takes minutes on a small CPU)")
        return
    images = check.images([check.mode.size])
    for kind in ("detr", "deformable_detr"):  # not check.sides: the official code waits for its op (official_op)
        torch.manual_seed(0)
        ours = Side("ours", None, build_ours(kind, check.flags(kind), check.device), check.device)
        with _TF32Off():
            eager = ours.inference_fn(images, "none", "none")()
            start = time.time()
            compiled = ours.inference_fn(images, "none", "compile")()
            first_s = time.time() - start
        d_box, d_prob = output_diffs(compiled, eager, sigmoid=kind == "deformable_detr")
        part["rows"].append({"model": kind, "max_d_boxes": d_box, "max_d_probabilities": d_prob,
                             "first call s": first_s})  # fmt: skip
        target(part, f"{kind}: compiled vs eager, max |d|", max(d_box, d_prob), COMPILE_TOLERANCE, "<=")
        check.save()
    if not all(t["reached"] is True for t in part["targets"]):
        part["status"] = "failed"


def build_official_op(src: str, build: str) -> Any:
    """The official Deformable DETR CUDA extension (``models/ops``) of clone ``src``, compiled
    with ``torch.utils.cpp_extension.load`` into ``build`` (for the GPU present) and imported."""
    from torch.utils.cpp_extension import load

    ops = Path(src) / "models" / "ops" / "src"
    sources = [ops / "vision.cpp", *sorted(ops.glob("cpu/*.cpp")), *sorted(ops.glob("cuda/*.cu"))]
    Path(build).mkdir(parents=True, exist_ok=True)
    return load(MSDA_NAME, [str(s) for s in sources], extra_include_paths=[str(ops)], extra_cflags=["-DWITH_CUDA"],
                extra_cuda_cflags=["-DWITH_CUDA", "-DCUDA_HAS_FP16=1", "-D__CUDA_NO_HALF_OPERATORS__",
                                   "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"],
                build_directory=build, verbose=False)  # fmt: skip


def part_official_op(check: Check, part: dict[str, Any]) -> None:
    """Await the official CUDA op's build (started by ``part_environment``), at most
    ``OFFICIAL_OP_BUILD_S`` after it started; once built, the official Deformable DETR code uses it,
    as it does on a GPU (else its pure-PyTorch core stands in: ``benchmarks/official.py``)."""
    if check.op_build is None:
        part["status"] = "skipped"
        part["notes"].append("no GPU or no --official-deformable: the official op stays its PyTorch core")
        return
    proc, started, log = check.op_build
    try:
        proc.wait(timeout=max(0.0, started + OFFICIAL_OP_BUILD_S - time.time()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        part["status"] = "not built"
        part["notes"].append(f"did not compile within {OFFICIAL_OP_BUILD_S} s: the official rows use its PyTorch core")
        return
    built = [line.split()[-2] for line in log.read_text().splitlines() if line.startswith("official op built in")]
    part["rows"].append({"build s": float(built[0]) if built else None, "exit status": proc.returncode})
    if built and float(built[0]) > OFFICIAL_OP_BUILD_S:
        part["status"] = "not built"
        part["notes"].append(f"compiled in {built[0]} s, not within {OFFICIAL_OP_BUILD_S} s: not used")
        return
    if proc.returncode != 0:
        part["status"] = "not built"
        tail = " ".join(log.read_text().split()[-60:])
        part["notes"].append(f"did not compile (the official rows use its PyTorch core): ... {tail}")
        return
    sys.modules[MSDA_NAME] = build_official_op(check.args.official_deformable, str(check.tmp / "official_op"))
    part["notes"].append("compiled: the official Deformable DETR code runs its CUDA op")


class HFSide:
    """transformers' model with our weights (``models.hf_convert.checkpoint_to_hf``), run on the
    same padded batch (``pixel_values``, ``pixel_mask``) as ours."""

    name = "hf"

    def __init__(self, ours: Any, folder: Path) -> None:
        import transformers

        from models.hf_convert import ARCH_FLAGS, checkpoint_to_hf

        arch = {k: getattr(ours.args, k) for k in ARCH_FLAGS}  # the architecture; transformers' own loss settings
        checkpoint_to_hf({"model": {k: v.cpu() for k, v in ours.model.state_dict().items()}, "args": arch}, folder)
        self.model = transformers.AutoModelForObjectDetection.from_pretrained(folder).to(ours.device).eval()
        self.nested, self.device = ours.nested, ours.device

    def inference_fn(self, images: list[torch.Tensor], amp: str) -> Callable[[], dict[str, torch.Tensor]]:
        from models.optimize import AMP_DTYPES

        dtype = AMP_DTYPES[amp]
        samples = self.nested(images)
        pixel_mask = (~samples.mask).long()

        def run() -> dict[str, torch.Tensor]:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype or torch.float32, enabled=bool(dtype)):
                out = self.model(pixel_values=samples.tensors, pixel_mask=pixel_mask)
            return {"pred_logits": out.logits, "pred_boxes": out.pred_boxes}

        return run


def _speed_rows(check: Check, fns: dict[str, Callable[[], Any]], batch: int, base: dict[str, Any],
                warm: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Time ``fns`` (keys ``code/amp``) alternately; one row each with images/s, peak memory and the
    ratios over the official fp32 row and over the same amp's official and transformers rows."""
    timings, firsts = time_alternately(fns, check.device, warm, check.mode.iters_for(batch), check.mode.repeats)
    rows = []
    for key, fn in fns.items():
        code, amp = key.split("/")
        med = timings.median(key)
        row = {**base, "code": code, "amp": amp, "ms": med * 1e3, "images_per_s": batch / med,
               "peak_mib": peak_memory_mib(fn, check.device)}  # fmt: skip
        for name, ref in (("x_official_fp32", "official/none"), ("x_official_same_amp", f"official/{amp}"),
                          ("x_hf_same_amp", f"hf/{amp}")):  # fmt: skip
            row[name] = timings.ratio(key, ref) if ref in timings.times else math.nan
        rows.append(row)
    return rows, firsts


def _note_missing(part: dict[str, Any], sides: dict[str, Any], kind: str) -> None:
    for name, why in sides["missing"].items():
        note = f"{kind}: no {name} rows ({why})"
        if note not in part["notes"]:
            part["notes"].append(note)


def part_inference_speed(check: Check, part: dict[str, Any]) -> None:
    """DETR-R50 and Deformable DETR R50 inference at the mode's size (800x1333) and batches (1, 8),
    fp32 and bf16: the official code, ours (``--eval_optimize fast``; ``compile`` in bf16 at the
    largest batch on the GPU) and transformers, same weights and inputs, alternately. Targets: ours
    (fastest row) over the official fp32 row 4x at batch 1, 5x at batch 8; ours over transformers
    2x at the same amp."""
    from benchmarks.benchmark import output_diffs

    h, w = check.mode.size
    amps = ("none", "bf16")
    for kind in ("detr", "deformable_detr"):
        sides = check.sides(kind)
        _note_missing(part, sides, kind)
        for batch in check.mode.infer_batches:
            images = check.images([(h, w)] * batch, seed=batch)
            fns: dict[str, Callable[[], Any]] = {}
            for amp in amps:
                if "official" in sides:
                    fns[f"official/{amp}"] = sides["official"].inference_fn(images, amp)
                fns[f"ours-fast/{amp}"] = sides["ours"].inference_fn(images, amp, "fast")
                if "hf" in sides:
                    fns[f"hf/{amp}"] = sides["hf"].inference_fn(images, amp)
            if check.mode.compile and batch == max(check.mode.infer_batches):
                fns["ours-compile/bf16"] = sides["ours"].inference_fn(images, "bf16", "compile")
            rows, firsts = _speed_rows(check, fns, batch, {"model": kind, "batch": batch}, max(check.mode.warm, 1))
            ref = firsts.get("official/none", firsts["ours-fast/none"])
            for row in rows:
                out = firsts[f"{row['code']}/{row['amp']}"]
                row["max_d_boxes"], row["max_d_probabilities"] = output_diffs(out, ref, kind == "deformable_detr")
            part["rows"] += rows
            ours = [r for r in rows if r["code"].startswith("ours")]
            best = max(ours, key=lambda r: r["images_per_s"])
            goal = 4.0 if batch == 1 else 5.0
            target(part, f"{kind} inference batch {batch}: ours ({best['code']} {best['amp']}) over official fp32",
                   best["x_official_fp32"], goal)  # fmt: skip
            for amp in amps:
                same = max((r for r in ours if r["amp"] == amp), key=lambda r: r["images_per_s"])
                target(part, f"{kind} inference batch {batch} {amp}: ours over transformers",
                       same["x_hf_same_amp"], 2.0)  # fmt: skip
            check.save()
    part["notes"].append("x_*: that reference's median time / this row's; max_d_*: against the official fp32 output "
                         "(ours fp32 without the official code)")  # fmt: skip


def official_aug_sizes(mode: Mode, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Image sizes as the official training augmentation makes them from COCO's 4:3 pictures:
    the shorter side one of the scales (480-800), the longer 4/3 of it up to the maximum (1333),
    landscape or portrait at random."""
    gen = torch.Generator().manual_seed(seed)
    sizes = []
    for _ in range(count):
        short = mode.train_scales[int(torch.randint(len(mode.train_scales), (1,), generator=gen))]
        size = (short, min(round(short * 4 / 3), mode.max_size))
        sizes.append(size if torch.rand(1, generator=gen) < 0.75 else size[::-1])
    return sizes


def part_training_speed(check: Check, part: dict[str, Any]) -> None:
    """Training images/s at batch 4 on images of the official augmentation's sizes (``train_batches``
    batches in turn, the same for every row), alternately: the official code's default (fp32, AdamW), ours in
    fp32, and our fastest safe path (bf16 autocast, fused AdamW; not compiled: every batch has other
    sizes). Target: the fast path 4x the official code."""
    batch, n = check.mode.train_batch, check.mode.train_batches
    for kind in ("detr", "deformable_detr"):
        sides = check.sides(kind)
        _note_missing(part, sides, kind)
        images = check.images(official_aug_sizes(check.mode, batch * n), seed=7)
        batches = [images[i * batch : (i + 1) * batch] for i in range(n)]
        fns = {"ours/none": sides["ours"].train_fn(batches[0], "none", more=batches[1:]),
               "ours-fast/bf16": sides["ours"].train_fn(batches[0], "bf16", fused=True, more=batches[1:])}  # fmt: skip
        if "official" in sides:
            fns = {"official/none": sides["official"].train_fn(batches[0], "none", more=batches[1:]), **fns}
        rows, _ = _speed_rows(check, fns, batch, {"model": kind, "batch": batch}, check.mode.train_warm)
        part["rows"] += [{k: v for k, v in r.items() if k != "x_hf_same_amp"} for r in rows]
        fast = next(r for r in rows if r["code"] == "ours-fast")
        target(part, f"{kind} training: ours (bf16, fused AdamW) over official fp32", fast["x_official_fp32"], 4.0)
        check.save()
    part["notes"].append(f"image sizes of the batches: {official_aug_sizes(check.mode, batch * n, seed=7)}")


def part_op_speed(check: Check, part: dict[str, Any]) -> None:
    """The deformable-attention op alone (``bench_ms_deform_attn.bench_op``) at COCO shapes: our
    PyTorch path, Triton, the official PyTorch core and the official CUDA op (when it compiled),
    forward and forward+backward, speed and peak memory, fp32 and bf16. Target: Triton 7x the
    PyTorch path in fp32 forward+backward with at most a tenth of its peak memory."""
    from benchmarks.bench_ms_deform_attn import bench_op
    from models.ops import MS_DEFORM_ATTN_IMPLS

    gpu = check.device.type == "cuda"
    if not gpu:
        part["notes"].append("CPU: the PyTorch path (and the official core) only; the Triton kernels need a GPU")
    extra = {}
    code = check.official("deformable_detr") if gpu else None
    if code is not None and code.msda == "compiled":
        function = code["models.ops.functions.ms_deform_attn_func"].MSDeformAttnFunction

        def official_cuda(value, shapes, start, loc, attn):  # type: ignore[no-untyped-def]
            return function.apply(value, shapes, start, loc, attn, 64)

        extra["official-cuda"] = official_cuda
    elif gpu:
        part["notes"].append("no official CUDA op (see official_op)")
    official = check.args.official_deformable
    if official and not (Path(official) / "models/ops/functions/ms_deform_attn_func.py").is_file():
        part["notes"].append(f"{official} has no official PyTorch core (models/ops/functions): not timed")
        official = None
    heads, channels, points, _ = check.mode.op_shape
    args = argparse.Namespace(impls=list(MS_DEFORM_ATTN_IMPLS), batch=[check.mode.op_batch], dtypes=["fp32", "bf16"],
                              heads=heads, head_dim=channels, points=points, warmup=2 if gpu else 1,
                              repeats=10 if gpu else 1,
                              level_scale=check.mode.op_scale, official=official)  # fmt: skip
    rows = bench_op(args, check.device, extra)
    part["rows"] = rows
    for case in ("decoder", "encoder"):
        by = {r["impl"]: r for r in rows if r["case"] == case and r["dtype"] == "fp32" and "error" not in r}
        if "triton" not in by or "pytorch" not in by:
            continue
        target(part, f"{case} fp32 fwd+bwd: Triton over PyTorch", by["triton"]["fwd_bwd_x"], 7.0)
        memory = by["triton"]["fwd_bwd_peak_mib"] / by["pytorch"]["fwd_bwd_peak_mib"]
        target(part, f"{case} fp32 fwd+bwd: Triton's peak memory / PyTorch's", memory, 0.1, "<=")
    part["notes"].append("fwd_x, fwd_bwd_x: speed-up over the PyTorch path; max_diff: largest difference from it")


def part_bf16_agreement(check: Check, part: dict[str, Any]) -> None:
    """The demo recipe (``tools/demo.py``: Deformable DETR, ResNet-18 from scratch, 96 px, batch
    16) trained in fp32 and in bf16 autocast from the same weights on the same batches (generated
    data through the real pipeline, a few batches in turn), step by step alternately
    (``bench_train_step.Variant``); the gap between the two losses' moving averages over
    ``agree_window`` iterations, relative to fp32's. Target: at most 2% after the last iteration."""
    import datasets
    from benchmarks.bench_train_step import Variant, make_batches
    from datasets.synthetic import generate_synthetic_coco
    from models import build_model
    from tools import demo
    from util.config import get_args_parser, resolve

    mode = check.mode
    flags = [*demo.COMMON, *demo.RECIPES["demo"], "--device", check.device.type, "--coco_path", str(check.tmp / "demo"),
             *mode.agree_flags]  # fmt: skip
    args = resolve(get_args_parser().parse_args(flags))
    generate_synthetic_coco(check.tmp / "demo", num_train=args.batch_size * mode.agree_batches, num_val=1,
                            image_size=args.max_size, seed=0, verbose=False)  # fmt: skip
    args.num_classes = datasets.max_category_id(datasets.build_dataset("train", args)) + 1
    batches, _ = make_batches(args, mode.agree_batches)
    batches = [(s.to(check.device), _to(t, check.device)) for s, t in batches]
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    model.to(check.device)
    criterion.to(check.device)
    variants = {"fp32": Variant("default", model, criterion, args), "bf16": Variant("bf16", model, criterion, args)}
    losses: dict[str, list[float]] = {k: [] for k in variants}
    for _, (samples, targets) in zip(range(mode.agree_iters), itertools.cycle(batches)):
        for name, v in variants.items():
            losses[name].append(v.step(samples, targets))
    w = mode.agree_window
    avg = {k: [sum(x[i - w : i]) / w for i in range(w, len(x) + 1)] for k, x in losses.items()}
    gaps = [abs(b - a) / abs(a) for a, b in zip(avg["fp32"], avg["bf16"])]
    step = max(1, mode.agree_iters // 10)
    part["rows"] = [{"iteration": i + w, "fp32 avg loss": a, "bf16 avg loss": b, "relative gap": g}
                    for i, (a, b, g) in enumerate(zip(avg["fp32"], avg["bf16"], gaps)) if (i + w) % step == 0 or
                    i == len(gaps) - 1]  # fmt: skip
    part["curves"] = losses
    part["notes"].append(f"{mode.agree_iters} iterations, batch {args.batch_size}, {mode.agree_batches} batches in "
                         f"turn; moving averages over {w} iterations; largest gap anywhere {max(gaps):.4f}")  # fmt: skip
    target(part, f"bf16 vs fp32 training: relative gap of the {w}-iteration averages at the end", gaps[-1],
           AGREEMENT_GOAL, "<=")  # fmt: skip


# name, the most seconds it may take on the GPU (within --budget-s), the part
PARTS: list[tuple[str, float, Callable[[Check, dict[str, Any]], None]]] = [
    ("environment", 30, part_environment),
    ("golden", 60, part_golden),
    ("op_correctness", 60, part_op_correctness),
    ("train_step", 90, part_train_step),
    ("compile", 150, part_compile),
    ("official_op", 60, part_official_op),
    ("inference_speed", 200, part_inference_speed),
    ("training_speed", 120, part_training_speed),
    ("op_speed", 90, part_op_speed),
    ("bf16_agreement", 90, part_bf16_agreement),
]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_report.md and gpu_report.json")
    p.add_argument("--official-detr", default=None, metavar="PATH", help="clone of facebookresearch/detr")
    p.add_argument("--official-deformable", default=None, metavar="PATH", help="clone of Deformable-DETR")
    p.add_argument("--golden", default=None, metavar="DIR", help="golden fixtures (default: ../shared/golden)")
    p.add_argument("--cpu-tiny", action="store_true", help="tiny shapes on the CPU (the test suite's mode)")
    p.add_argument("--budget-s", type=float, default=480, help="wall-clock seconds for all parts")
    p.add_argument(
        "--parts", nargs="+", default=None, choices=[n for n, _, _ in PARTS], help="default: all (a rerun: some)"
    )
    p.add_argument("--build-official-op", nargs=2, default=None, help=argparse.SUPPRESS)  # SRC BUILD: a child
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_parser().parse_args(argv)
    if args.build_official_op:  # the child process of part_environment
        start = time.time()
        build_official_op(*args.build_official_op)
        print(f"official op built in {time.time() - start:.1f} s")
        return {}
    if args.golden is None:
        from golden import GOLDEN_DIR

        args.golden = GOLDEN_DIR if GOLDEN_DIR.is_dir() else ROOT / "shared" / "golden"
    for flag in ("official_detr", "official_deformable"):
        path = getattr(args, flag)
        if path and not (Path(path) / "main.py").is_file():
            raise SystemExit(f"error: --{flag.replace('_', '-')} {path}: not a clone of the official repository")
    check = Check(args)
    try:
        check.run(args.parts or [name for name, _, _ in PARTS])
    finally:
        if check.op_build is not None and check.op_build[0].poll() is None:
            check.op_build[0].kill()
        cleanup()
    print(f"[gpu_check] report: {check.out / 'gpu_report.md'}")
    return check.report


if __name__ == "__main__":
    main()
